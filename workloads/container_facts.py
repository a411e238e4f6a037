"""Inside `apptainer exec`: record what the job's own process sees of its container, then run the workload in it.

    python3 -m workloads.container_facts --out $JOB_DIR/container.json workloads.mnist --data-dir ...

The record is the workload process's, not the batch script's: Apptainer's markers (/.singularity.d exists only in
an image's root; $APPTAINER_CONTAINER names the image), the Python that runs, and the torch it imports (version and
folder, read from its metadata without importing it). Then the workload module runs in this same process, as
`python3 -m <module>` would run it. Under `srun` every task runs it; task 0 writes the record.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import runpy
import sys
from typing import Optional

from workloads.metrics_io import write_json_atomic

MARKER = "/.singularity.d"


def _os_release() -> Optional[str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
    return fields.get("PRETTY_NAME", "").strip('"') or None


def facts() -> dict:
    try:
        torch_version: Optional[str] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    spec = importlib.util.find_spec("torch")
    return {
        "image_root_marker": os.path.isdir(MARKER),  # the image's /.singularity.d
        "apptainer_container": os.environ.get("APPTAINER_CONTAINER"),
        "apptainer_name": os.environ.get("APPTAINER_NAME"),
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "torch_version": torch_version,
        "torch_dir": os.path.dirname(spec.origin) if spec and spec.origin else None,
        "os": _os_release(),
    }


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workloads.container_facts", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where the record goes (JSON)")
    parser.add_argument("module", help="the workload module to run afterwards, e.g. workloads.mnist")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    ns = parser.parse_args(argv)
    if os.environ.get("SLURM_PROCID", "0") == "0":
        write_json_atomic(ns.out, facts())
    sys.argv = [ns.module, *ns.args]
    runpy.run_module(ns.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
