"""Small facts and argument types the workload entry points share (no torch here)."""
from __future__ import annotations

import argparse
import os
import platform
import socket
import urllib.error
import urllib.request


def cpu_model_name() -> str:
    """The CPU's model name, for `device_name` when a job runs on CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def host_facts(started_at: str) -> dict:
    """Where and when a run happened, for every metrics.json."""
    return {
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "python_version": platform.python_version(),
        # Timings on a shared machine mean little without the load they ran under.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "started_at": started_at,
    }


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 within `timeout` (a readiness probe: anything else, or no answer, is False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
