"""MLOPS-5.1 registry steps: log a trained TorchScript model to the MLflow tracking server, register it and set an
alias; and, on the deployment side, resolve `models:/<name>@<alias>` to the S3 URI of that version's artifacts in
MinIO, which is what the predictor is given.

    python -m workloads.serving.registry register --tracking-uri http://127.0.0.1:PORT --model model.pt \
        --name mnist-cnn [--metrics-json metrics.json] [--alias champion] --out registration.json
    python -m workloads.serving.registry resolve --tracking-uri http://127.0.0.1:PORT --name mnist-cnn \
        --alias champion --artifacts-destination s3://mlflow-artifacts --out resolved.json

`register` times two stages apart: sync_seconds is log_model, the upload of the model's artifacts to MinIO through
the tracking server (HPC shared storage -> object store); registration_seconds is creating the model version and
setting the alias. The TorchScript file travels byte for byte as the model's extra file (`extra_files/model.pt`,
named by the version's tag `model_file`),
so the predictor serves the trained file itself (its sha256 shows it); the pytorch flavour beside it is MLflow's
own load path. `--serialization-format pickle` (the default here) keeps log_model well under a second; MLflow 3's
own default, pt2 (torch.export), needs an input example and takes ~8 s on two cores (shared/notes/ml-stack.md).
The server proxies artifacts (mlflow-artifacts:/), so `register` needs no S3 keys; `resolve` checks the object in
MinIO with the minio client (AWS_ENDPOINT_URL and the keys from the environment).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)

from workloads.metrics_io import sha256_file, write_json_atomic  # noqa: E402

class RegistryError(Exception):
    """Something the user can fix; the message says what."""


def numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def versions_of(client, name: str, sha256: str, run_id: Optional[str] = None) -> list:
    """The registered versions of NAME whose trained file has SHA256 (their tag), oldest first; only RUN_ID's
    when given. Filtered here, not in the search string: tag filters differ between MLflow's stores."""
    found = [v for v in client.search_model_versions(f"name='{name}'")
             if (v.tags or {}).get("model_sha256") == sha256 and (run_id is None or v.run_id == run_id)]
    return sorted(found, key=lambda v: int(v.version))


def drop_duplicates(client, name: str, sha256: str, run_id: str) -> tuple[str, list[int]]:
    """MLflow's client retries every request, POSTs included, when a connection breaks (MLflow killed, or its
    answer lost): a create_model_version that the server committed before dying is sent again once it is back,
    and makes a second version of the same run's model. One run's model is one version: the first is kept, the
    others deleted. Returns the version kept and those deleted."""
    found = versions_of(client, name, sha256, run_id)
    for v in found[1:]:
        client.delete_model_version(name, v.version)
    return found[0].version, [int(v.version) for v in found[1:]]


def register(tracking_uri: str, model_path: Path, name: str, experiment: str, alias: Optional[str],
             serialization_format: str, training_metrics: dict, reuse: bool = False) -> dict:
    """Log, register and (when ALIAS is given) alias the model; a candidate is registered without one: the
    pipeline (workloads/serving/pipeline.py) decides whether it becomes the champion.

    REUSE (MLOPS-5.1's registration, `register` on the command line): a version of NAME already registered for
    this file (its model_sha256 tag) is taken as it is, nothing logged again, so that a rerun after a failure
    (MLflow killed mid-registration) converges on one version; its sync and registration figures are the run's
    own, as first measured. The pipeline registers the same file twice on purpose (reuse off)."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    trained_sha256 = sha256_file(model_path)
    client = MlflowClient()
    if reuse:
        existing = versions_of(client, name, trained_sha256)
        if existing:
            return reuse_version(client, name, existing[0], alias, serialization_format)
    model = torch.jit.load(str(model_path), map_location="cpu")
    mlflow.set_experiment(experiment)
    example = torch.zeros(1, 1, 28, 28).numpy() if serialization_format == "pt2" else None  # torch.export needs one
    with mlflow.start_run(run_name=f"{name}-registration") as run:
        mlflow.log_metrics(numeric(training_metrics))
        mlflow.log_params({"model_sha256": trained_sha256, "source": str(model_path)})
        started = time.perf_counter()
        # Requirements named, not inferred: inference re-imports the model in a subprocess (9 s of the 9.4 s
        # log_model took here without them; 0.3 s with).
        info = mlflow.pytorch.log_model(model, name="model", serialization_format=serialization_format,
                                        input_example=example, extra_files=[str(model_path)],
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        sync_seconds = time.perf_counter() - started
        mlflow.log_metric("sync_seconds", sync_seconds)  # what a reuse of this version reports
    started = time.perf_counter()
    # The version's tags say which file of its artifacts is the trained one, and that file's sha256.
    tags = {"model_sha256": trained_sha256, "model_file": f"extra_files/{model_path.name}"}
    mlflow.register_model(info.model_uri, name, tags=tags)
    version, dropped = drop_duplicates(client, name, trained_sha256, run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    registration_seconds = time.perf_counter() - started
    client.log_metric(run.info.run_id, "registration_seconds", registration_seconds)
    return {"registered_model": name, "version": int(version), "alias": alias, "run_id": run.info.run_id,
            "model_uri": info.model_uri, "artifact_uri": client.get_model_version_download_uri(name, version),
            "model_sha256": trained_sha256, "serialization_format": serialization_format,
            "sync_seconds": round(sync_seconds, 3), "registration_seconds": round(registration_seconds, 3),
            "reused_version": False, "duplicate_versions_deleted": dropped, "mlflow_version": mlflow.__version__}


def reuse_version(client, name: str, version, alias: Optional[str], serialization_format: str) -> dict:
    """The result of `register` for a version registered before (the alias set again)."""
    import mlflow

    started = time.perf_counter()
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    seconds = time.perf_counter() - started
    measured = client.get_run(version.run_id).data.metrics
    return {"registered_model": name, "version": int(version.version), "alias": alias, "run_id": version.run_id,
            "model_uri": version.source, "artifact_uri": client.get_model_version_download_uri(name, version.version),
            "model_sha256": version.tags["model_sha256"], "serialization_format": serialization_format,
            "sync_seconds": round(measured["sync_seconds"], 3) if "sync_seconds" in measured else None,
            "registration_seconds": round(measured.get("registration_seconds", seconds), 3),
            "reused_version": True, "duplicate_versions_deleted": [], "mlflow_version": mlflow.__version__}


def s3_uri(artifact_uri: str, destination: str) -> str:
    """The S3 location of a proxied artifact: the tracking server stores mlflow-artifacts:/<path> at
    <--artifacts-destination>/<path>."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "s3":
        return artifact_uri.rstrip("/")
    if parsed.scheme != "mlflow-artifacts":
        raise RegistryError(f"artifact URI {artifact_uri!r} is neither s3:// nor mlflow-artifacts:/ (the server's "
                            "proxied store): the predictor cannot fetch it from MinIO")
    return f"{destination.rstrip('/')}/{parsed.path.lstrip('/')}".rstrip("/")


def resolve(tracking_uri: str, name: str, alias: str, destination: str) -> dict:
    """models:/<name>@<alias> -> its version, run and the S3 URI of its artifacts; the served file is checked in
    MinIO (it exists, its size)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from workloads.serving.objects import ObjectStoreError, check

    client = MlflowClient(tracking_uri=tracking_uri)
    started = time.perf_counter()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise RegistryError(f"models:/{name}@{alias} does not resolve in {tracking_uri}: {exc.message}") from None
    uri = s3_uri(client.get_model_version_download_uri(name, version.version), destination)
    resolve_seconds = time.perf_counter() - started
    tags = version.tags or {}
    if "model_file" not in tags:
        raise RegistryError(f"models:/{name}/{version.version} has no model_file tag: it was not registered by "
                            "workloads.serving.registry, so which file to serve is unknown")
    try:
        found = check(f"{uri}/{tags['model_file']}")
    except ObjectStoreError as exc:
        raise RegistryError(str(exc)) from None
    return {"model_uri": f"models:/{name}@{alias}", "version": int(version.version), "run_id": version.run_id,
            "storage_uri": uri, "model_file": tags["model_file"], "model_bytes": found["bytes"],
            "registered_sha256": tags.get("model_sha256"),
            "resolve_seconds": round(resolve_seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="log and register a TorchScript model in MLflow, or resolve an alias")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("register")
    pr.add_argument("--tracking-uri", required=True)
    pr.add_argument("--model", required=True, type=Path)
    pr.add_argument("--name", required=True)
    pr.add_argument("--experiment", default="mlops-validation")
    pr.add_argument("--alias", default="champion", help="'' registers without an alias (a candidate)")
    pr.add_argument("--serialization-format", choices=["pickle", "pt2"], default="pickle")
    pr.add_argument("--metrics-json", type=Path, help="the training job's metrics.json, logged with the run")
    pr.add_argument("--out", type=Path)
    pv = sub.add_parser("resolve")
    pv.add_argument("--tracking-uri", required=True)
    pv.add_argument("--name", required=True)
    pv.add_argument("--alias", default="champion")
    pv.add_argument("--artifacts-destination", required=True, help="the server's --artifacts-destination (s3://...)")
    pv.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "register":
            if not args.model.is_file():
                raise RegistryError(f"no model file at {args.model}")
            training = json.loads(args.metrics_json.read_text()) if args.metrics_json else {}
            result = register(args.tracking_uri, args.model, args.name, args.experiment, args.alias,
                              args.serialization_format, training, reuse=True)
        else:
            result = resolve(args.tracking_uri, args.name, args.alias, args.artifacts_destination)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MLflow gone for longer than its client's retries (about 4 min)
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, (MlflowException, OSError)) and "requests" not in type(exc).__module__:
            raise
        print(f"error: MLflow at {args.tracking_uri} failed during {args.command} ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); a rerun resumes it: a model already "
              "registered is taken as it is, never registered twice", file=sys.stderr)
        return 3
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
