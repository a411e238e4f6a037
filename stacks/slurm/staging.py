"""Stage a local folder (a data set, the workloads' code) onto the cluster's shared storage, as a site
stages data on BeeGFS: copied with rsync, then every file's sha256 checked on the cluster side.

The source's manifest (file -> sha256) is an input: unchanged sources are not copied again.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider

from stacks.slurm.remote import ClusterError, Connection


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path, pattern: str = "**/*") -> dict[str, str]:
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


def manifest_digest(files: dict[str, str]) -> str:
    """One hash for a whole manifest: changes when any file does."""
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:16]


def check_against_sums(folder: Path, sums_file: Path, wanted: list[str]) -> dict[str, str]:
    """The files of a shared/datasets folder, checked against its SHA256SUMS; a clear error where one is off."""
    expected = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.lstrip("*").removeprefix("./")] = digest
    found = {}
    for name in wanted:
        path = sums_file.parent / name
        if not path.is_file():
            raise FileNotFoundError(f"dataset file missing: {path}")
        digest = sha256_file(path)
        if name in expected and expected[name] != digest:
            raise ValueError(f"dataset file corrupt: {path} has sha256 {digest}, SHA256SUMS says {expected[name]}")
        found[str(Path(name).relative_to(folder.relative_to(sums_file.parent)))] = digest
    return found


def preflight(datasets_dir: str, needs: dict[str, list[str]]) -> None:
    """Check every file the enabled tasks will stage (`needs`: folder -> names) before anything starts, so that a
    missing or corrupt dataset ends the run with its path, with no cluster started and nothing to clean up."""
    datasets = Path(datasets_dir)
    for folder, names in needs.items():
        check_against_sums(datasets / folder, datasets / "SHA256SUMS", [f"{folder}/{n}" for n in names])


def stage(conn: Connection, source: str, destination: str, files: dict[str, str]) -> dict:
    started = time.monotonic()
    conn.sync_dir(source, destination)
    seconds = time.monotonic() - started
    listing = " ".join(shlex.quote(name) for name in files)
    out = conn.run(f"cd {shlex.quote(destination)} && sha256sum {listing} && du -sb --apparent-size .", timeout=600)
    lines = out.stdout.strip().splitlines()
    remote = {name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines[:-1])}
    bad = [name for name, digest in files.items() if remote.get(name) != digest]
    if bad:
        raise ClusterError(f"staged copy differs from the source on {conn.where}:{destination}: {', '.join(bad)}")
    size = int(lines[-1].split()[0])
    return {"path": destination, "bytes": size, "seconds": round(seconds, 3),
            "mb_per_s": round(size / 1e6 / seconds, 1) if seconds > 0 else None}


class _StagingProvider(ReplacingProvider):
    settings_only = ("connection",)

    def create(self, props: dict) -> CreateResult:
        outs = stage(Connection.from_props(props["connection"]), props["source"], props["destination"],
                     props["files"])
        return CreateResult(id_=props["destination"], outs={**props, **outs})

    def delete(self, _id: str, props: dict) -> None:
        # A copy that cannot be removed (or a cluster that cannot be reached) fails `pulumi destroy` naming the
        # path: shared storage outlives the cluster, so nothing is assumed gone.
        destination = props["destination"].rstrip("/")
        Connection.from_props(props["connection"]).remove(destination, os.path.dirname(destination))


class _Staged(Resource, module="mlops", name="StagedDirectory"):
    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_StagingProvider(), name, {**props, "path": None, "bytes": None, "seconds": None,
                                                    "mb_per_s": None}, opts)


@dataclass
class StagedDirectoryArgs:
    connection: pulumi.Input[dict]
    cluster_id: pulumi.Input[str]
    source: str  # local folder
    destination: pulumi.Input[str]  # folder on shared storage
    files: dict  # relative name -> sha256, as checked locally


class StagedDirectory(pulumi.ComponentResource):
    def __init__(self, name: str, args: StagedDirectoryArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:StagedDirectory", name, None, opts)
        staged = _Staged(f"{name}-copy", {"connection": args.connection, "cluster_id": args.cluster_id,
                                           "source": args.source, "destination": args.destination,
                                           "files": args.files}, pulumi.ResourceOptions(parent=self))
        self.path: pulumi.Output[str] = staged.path
        self.bytes: pulumi.Output[int] = staged.bytes
        self.seconds: pulumi.Output[float] = staged.seconds
        self.mb_per_s: pulumi.Output[float] = staged.mb_per_s
        self.register_outputs({"path": self.path, "bytes": self.bytes})
