"""Models on MinIO: publish a file or a directory under s3://BUCKET/PREFIX, or check that an s3:// object exists.

    python -m workloads.serving.objects publish --source PATH --uri s3://models/mnist/<sha> --out metrics.json
    python -m workloads.serving.objects check --uri s3://models/mnist/<sha>/model.pt
    python -m workloads.serving.objects buckets models mlflow-artifacts

The endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. A refused
credential or a missing object ends with one line naming it and exit code 2.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError, MaxRetryError

from workloads.metrics_io import sha256_file, write_json_atomic

CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}
# What a MinIO that restarts answers, or how its loss shows: worth waiting for (publish's retry), never a refused key.
TRANSIENT_CODES = {"XMinioServerNotInitialized", "ServiceUnavailable", "SlowDown", "InternalError",
                   "XMinioStorageFull"}
RETRY_SECONDS = 120.0  # how long publish waits for MinIO to come back before it fails


class ObjectStoreError(Exception):
    """Something the user can fix; the message says what."""


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ObjectStoreError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def client_from_env() -> tuple[Minio, str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    parsed = urlparse(endpoint)
    if not parsed.netloc:
        raise ObjectStoreError(f"AWS_ENDPOINT_URL must be http(s)://host:port (got {endpoint!r})")
    client = Minio(parsed.netloc, access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
                   secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""), secure=parsed.scheme == "https")
    return client, endpoint


def explain(exc: Exception, endpoint: str, uri: str) -> ObjectStoreError:
    if isinstance(exc, S3Error):
        if exc.code in CREDENTIAL_ERRORS:
            return ObjectStoreError(f"MinIO at {endpoint} refused the credentials ({exc.code}): "
                                    "check the serving MinIO access key and secret key")
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            return ObjectStoreError(f"model object {uri} not found in MinIO at {endpoint} ({exc.code})")
        return ObjectStoreError(f"MinIO at {endpoint} answered {exc.code} for {uri}: {exc.message}")
    if isinstance(exc, MaxRetryError):
        return ObjectStoreError(f"cannot reach MinIO at {endpoint}: {exc.reason}")
    return ObjectStoreError(f"MinIO at {endpoint}: {exc}")


def files_of(source: Path) -> list[tuple[Path, str]]:
    """(path, key suffix) of every file to publish: the file itself, or a directory's files, recursively."""
    if source.is_file():
        return [(source, source.name)]
    if source.is_dir():
        return [(p, p.relative_to(source).as_posix()) for p in sorted(source.rglob("*")) if p.is_file()]
    raise ObjectStoreError(f"nothing to publish at {source}")


def transient(exc: Exception) -> bool:
    """MinIO gone or coming back (connection refused or reset, a half-sent request, 503 while it starts)."""
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, (HTTPError, ConnectionError))  # MaxRetryError and ProtocolError are urllib3 HTTPErrors


def reason(exc: Exception) -> str:
    """A transient failure in a few words: the innermost cause's type and message, one line."""
    cause = getattr(exc, "reason", None) or exc
    text = str(cause).split(": ", 1)[-1] if isinstance(cause, Exception) else str(cause)
    return f"{type(cause).__name__}: {text.splitlines()[0][:120] if text else ''}"


def object_sha256(client: Minio, bucket: str, key: str) -> str:
    """The sha256 of the object as MinIO serves it back (streamed)."""
    digest, resp = hashlib.sha256(), client.get_object(bucket, key)
    try:
        for chunk in resp.stream(1 << 20):
            digest.update(chunk)
    finally:
        resp.close()
        resp.release_conn()
    return digest.hexdigest()


def publish(source: Path, uri: str, retry_seconds: float = RETRY_SECONDS) -> dict:
    """Upload SOURCE under URI (a prefix), creating the bucket when needed, each object read back and checked by
    sha256. Returns what a sync measured.

    MinIO restarting mid-upload (a crash, the stack's re-run starting it again) must not fail the sync, nor leave a
    damaged model: the SDK's own retries last about 6 s, less than a restart, so each file is uploaded again until
    it reads back with the local file's sha256, for up to RETRY_SECONDS; then it fails naming the object. MinIO
    commits an object only once its whole body arrived (a half-sent PUT leaves nothing under the key), and the prefix
    is content-addressed, so a rerun re-uploads the same objects under the same keys."""
    client, endpoint = client_from_env()
    bucket, prefix = split_uri(uri)
    files = files_of(source)
    started = time.perf_counter()
    deadline = time.monotonic() + retry_seconds
    retries, total, digests = 0, 0, {}
    while True:
        try:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            break
        except (S3Error, HTTPError, ConnectionError) as exc:
            if not transient(exc):
                raise explain(exc, endpoint, uri) from None
            if time.monotonic() > deadline:
                raise ObjectStoreError(f"MinIO at {endpoint} unreachable for {retry_seconds:g} s ({reason(exc)}): "
                                       f"nothing published under {uri}; a rerun uploads it") from None
            retries += 1
            print(f"warning: MinIO at {endpoint}: {type(exc).__name__}; retrying", file=sys.stderr, flush=True)
            time.sleep(1.0)
    for path, suffix in files:
        key = f"{prefix.rstrip('/')}/{suffix}" if prefix else suffix
        expected = sha256_file(path)
        while True:
            try:
                client.fput_object(bucket, key, str(path), metadata={"sha256": expected})
                served = object_sha256(client, bucket, key)
                if served == expected:
                    break
                failure = f"read back with sha256 {served[:12]}, not {expected[:12]}"
            except (S3Error, HTTPError, ConnectionError) as exc:
                if not transient(exc):
                    raise explain(exc, endpoint, uri) from None
                failure = reason(exc)
            if time.monotonic() > deadline:
                raise ObjectStoreError(f"MinIO at {endpoint}: s3://{bucket}/{key} not uploaded within "
                                       f"{retry_seconds:g} s ({failure}); a rerun uploads it again")
            retries += 1
            print(f"warning: upload of s3://{bucket}/{key} to {endpoint} failed ({failure}); retrying",
                  file=sys.stderr, flush=True)
            time.sleep(1.0)
        digests[suffix] = expected
        total += path.stat().st_size
    seconds = time.perf_counter() - started
    return {"uri": uri, "files": len(files), "bytes": total, "sync_seconds": round(seconds, 3),
            "mb_per_s": round(total / 1e6 / seconds, 1) if seconds > 0 else None,
            "sha256": sha256_file(source) if source.is_file() else None,
            "verified": "sha256 read back", "retries": retries, "objects_sha256": digests}


def ensure_buckets(names: list[str]) -> dict:
    """Make the buckets that are missing. Being the first authenticated call, it is also the credential check."""
    client, endpoint = client_from_env()
    made = []
    try:
        for name in names:
            if not client.bucket_exists(name):
                client.make_bucket(name)
                made.append(name)
    except (S3Error, MaxRetryError) as exc:
        raise explain(exc, endpoint, f"s3://{name}") from None
    return {"endpoint": endpoint, "buckets": names, "created": made}


def check(uri: str) -> dict:
    """The object (or, for a prefix, at least one object under it) exists; its size."""
    client, endpoint = client_from_env()
    bucket, key = split_uri(uri)
    try:
        stat = client.stat_object(bucket, key)
        return {"uri": uri, "bytes": stat.size}
    except S3Error as exc:
        if exc.code != "NoSuchKey":
            raise explain(exc, endpoint, uri) from None
    except MaxRetryError as exc:
        raise explain(exc, endpoint, uri) from None
    try:
        objects = list(client.list_objects(bucket, prefix=key.rstrip("/") + "/", recursive=True))
    except (S3Error, MaxRetryError) as exc:
        raise explain(exc, endpoint, uri) from None
    if not objects:
        raise ObjectStoreError(f"model object {uri} not found in MinIO at {endpoint} (no object or prefix)")
    return {"uri": uri, "bytes": sum(o.size or 0 for o in objects), "files": len(objects)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="publish a model to MinIO, or check that it is there")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("publish")
    pp.add_argument("--source", required=True, type=Path)
    pp.add_argument("--uri", required=True, help="s3://bucket/prefix")
    pp.add_argument("--retry-seconds", type=float, default=RETRY_SECONDS,
                    help="how long to wait for MinIO to come back (a restart) before failing")
    pp.add_argument("--out", type=Path)
    pc = sub.add_parser("check")
    pc.add_argument("--uri", required=True)
    pc.add_argument("--out", type=Path)
    pb = sub.add_parser("buckets")
    pb.add_argument("names", nargs="+")
    pb.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "publish":
            result = publish(args.source, args.uri, args.retry_seconds)
        elif args.command == "check":
            result = check(args.uri)
        else:
            result = ensure_buckets(args.names)
    except ObjectStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json_atomic(args.out, result)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
