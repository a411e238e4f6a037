"""Shared-storage check (BeeGFS at a site): write a file, read it back, compare checksums, report MB/s.

    python -m workloads.storage_check write  --dir DIR --size-mb 64 --out-dir JOB_DIR
    python -m workloads.storage_check verify --dir DIR --out-dir JOB_DIR

`write` runs in one job and leaves the file and its sha256; `verify` runs in a second job (on another node
where the site has one) and checks that the first job's file is visible and intact. Standard library only,
so it runs with any Python on the cluster.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from workloads.metrics_io import write_json_atomic


CHUNK = 4 << 20
DATA_FILE = "storage_check.bin"
SUM_FILE = "storage_check.sha256"


def filesystem_type(path: Path) -> dict:
    """The mount that holds `path`, from /proc/self/mounts (longest matching mount point)."""
    best = {"mount_point": "/", "fs_type": "unknown", "device": ""}
    resolved = str(path.resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        device, mount_point, fs_type = line.split()[:3]
        mount_point = mount_point.replace("\\040", " ")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best["mount_point"]):
            best = {"mount_point": mount_point, "fs_type": fs_type, "device": device}
    return best


def _drop_cache(fd: int) -> None:
    # Ask the kernel to forget the pages so the read-back measures the filesystem, not memory.
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write(directory: Path, size_mb: int) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / DATA_FILE
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    total = size_mb << 20
    started = time.perf_counter()
    with target.open("wb") as fh:
        written = 0
        while written < total:
            piece = block[: min(CHUNK, total - written)]
            # vary each block so deduplicating or compressing storage cannot cheat
            piece = written.to_bytes(8, "little") + piece[8:]
            fh.write(piece)
            digest.update(piece)
            written += len(piece)
        fh.flush()
        os.fsync(fh.fileno())
        _drop_cache(fh.fileno())
    write_s = time.perf_counter() - started
    (directory / SUM_FILE).write_text(digest.hexdigest() + "\n")
    read_digest, read_s = _read(target)
    return {"bytes": total, "sha256": digest.hexdigest(), "write_seconds": round(write_s, 4),
            "write_mb_per_s": round(total / 1e6 / write_s, 1), "read_seconds": round(read_s, 4),
            "read_mb_per_s": round(total / 1e6 / read_s, 1), "checksum_ok": read_digest == digest.hexdigest()}


def _read(path: Path) -> tuple[str, float]:
    digest = hashlib.sha256()
    started = time.perf_counter()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest(), time.perf_counter() - started


def verify(directory: Path) -> dict:
    target, sums = directory / DATA_FILE, directory / SUM_FILE
    if not target.exists() or not sums.exists():
        raise SystemExit(f"storage check: {target} or {sums} is not visible from {socket.gethostname()}")
    with target.open("rb") as fh:
        _drop_cache(fh.fileno())
    expected = sums.read_text().strip()
    found, read_s = _read(target)
    size = target.stat().st_size
    return {"bytes": size, "sha256": found, "expected_sha256": expected, "checksum_ok": found == expected,
            "read_seconds": round(read_s, 4), "read_mb_per_s": round(size / 1e6 / read_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["write", "verify"])
    parser.add_argument("--dir", type=Path, required=True, help="folder on the shared filesystem")
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--out-dir", type=Path, required=True, help="where metrics.json goes")
    args = parser.parse_args(argv)
    if args.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    result = write(args.dir, args.size_mb) if args.mode == "write" else verify(args.dir)
    result.update(mode=args.mode, path=str(args.dir / DATA_FILE), hostname=socket.gethostname(),
                  **filesystem_type(args.dir))
    write_json_atomic(args.out_dir / "metrics.json", result)
    print(json.dumps(result))
    return 0 if result["checksum_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
