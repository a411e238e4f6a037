"""A Prometheus exporter for SLURM, read from its client commands (squeue, scontrol) at every scrape:

    python -m workloads.slurm_exporter --port 16953 [--host 127.0.0.1]      # SLURM_CONF names the cluster

- `slurm_jobs{state}`: jobs the controller still knows, by state (every state is exported, 0 included);
- `slurm_job_failures_total`: jobs seen ending FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL or DEADLINE
  since the exporter started, each counted once (finished jobs stay in squeue for MinJobAge, 300 s by default);
- `slurm_job_queue_wait_seconds`: submit-to-start of every job seen started, observed once a job (a histogram),
  and `slurm_pending_wait_seconds_max`: how long the oldest pending job has waited;
- `slurm_gres_configured` / `slurm_gres_allocated{node,gres}` (a node's Gres / GresUsed), `slurm_node_up{node,
  state}` (0 when the node is down, drained, failing or not responding), `slurm_node_cpus{node,kind}`;
- `slurm_up`: whether the commands answered (the figures above are absent when they did not).
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Iterable, Optional

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

JOB_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
              "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SUSPENDED")
FAILED_STATES = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
NODE_BAD = {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING", "UNKNOWN", "NO_RESPOND"}
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 1800, float("inf"))
SQUEUE_FORMAT = "%i|%T|%V|%S"


def run(argv: list[str], timeout: float = 10.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def parse_time(text: str) -> Optional[float]:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:  # N/A, Unknown, None
        return None


def parse_jobs(text: str) -> list[dict]:
    """squeue --format=%i|%T|%V|%S lines -> [{id, state, submit, start}] (times as epoch seconds or None)."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs.append({"id": parts[0], "state": parts[1].split()[0].rstrip("+"),
                         "submit": parse_time(parts[2]), "start": parse_time(parts[3])})
    return jobs


def parse_gres(text: str) -> dict[str, int]:
    """gpu:2 / gpu:h200:1(IDX:0),shard:4 -> {"gpu": 1, "shard": 4}: counts by GRES name ((null) is none)."""
    found: dict[str, int] = {}
    for item in re.sub(r"\([^)]*\)", "", text).split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and parts[-1].isdigit():
            found[parts[0]] = found.get(parts[0], 0) + int(parts[-1])
    return found


def parse_nodes(text: str) -> list[dict]:
    """`scontrol show node --oneliner --details` -> [{name, state, up, gres, gres_used, cpus, cpus_alloc}]."""
    nodes = []
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" not in fields:
            continue
        state = fields.get("State", "UNKNOWN")
        flags = set(state.upper().split("+"))
        nodes.append({"name": fields["NodeName"], "state": state.lower(), "up": not flags & NODE_BAD,
                      "gres": parse_gres(fields.get("Gres", "")), "gres_used": parse_gres(fields.get("GresUsed", "")),
                      "cpus": int(fields.get("CPUTot", 0) or 0), "cpus_alloc": int(fields.get("CPUAlloc", 0) or 0)})
    return nodes


class SlurmCollector(Collector):
    """Reads the scheduler at every scrape; keeps, across scrapes, the failed jobs and queue waits already counted."""

    def __init__(self, squeue: str = "squeue", scontrol: str = "scontrol", clock=time.time):
        self.squeue, self.scontrol, self.clock = squeue, scontrol, clock
        self.failed: set[str] = set()
        self.waited: dict[str, float] = {}
        self.lock = threading.Lock()

    def read(self) -> tuple[list[dict], list[dict]]:
        jobs = parse_jobs(run([self.squeue, "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"]))
        nodes = parse_nodes(run([self.scontrol, "show", "node", "--oneliner", "--details"]))
        return jobs, nodes

    def collect(self) -> Iterable:
        up = GaugeMetricFamily("slurm_up", "1 when squeue and scontrol answered")
        try:
            jobs, nodes = self.read()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"slurm_exporter: {exc}", file=sys.stderr, flush=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        with self.lock:
            yield from self._jobs(jobs)
        yield from self._nodes(nodes)

    def _jobs(self, jobs: list[dict]) -> Iterable:
        by_state = GaugeMetricFamily("slurm_jobs", "jobs the controller knows, by state", labels=["state"])
        counts = {s: 0 for s in JOB_STATES}
        now, oldest_pending = self.clock(), 0.0
        for job in jobs:
            counts[job["state"]] = counts.get(job["state"], 0) + 1
            if job["state"] in FAILED_STATES:
                self.failed.add(job["id"])
            if job["start"] is not None and job["submit"] is not None and job["id"] not in self.waited:
                self.waited[job["id"]] = max(0.0, job["start"] - job["submit"])
            if job["state"] == "PENDING" and job["submit"] is not None:
                oldest_pending = max(oldest_pending, now - job["submit"])
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        failures = CounterMetricFamily("slurm_job_failures", "jobs seen ending in a failed state since the "
                                       "exporter started (FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...)")
        failures.add_metric([], len(self.failed))
        yield failures
        waits = list(self.waited.values())
        buckets = [(floatToGoString(b), sum(1 for w in waits if w <= b)) for b in WAIT_BUCKETS]
        hist = HistogramMetricFamily("slurm_job_queue_wait_seconds", "submit to start of each job seen started")
        hist.add_metric([], buckets, sum_value=sum(waits))
        yield hist
        pending = GaugeMetricFamily("slurm_pending_wait_seconds_max", "how long the oldest pending job has waited")
        pending.add_metric([], oldest_pending)
        yield pending

    def _nodes(self, nodes: list[dict]) -> Iterable:
        node_up = GaugeMetricFamily("slurm_node_up", "1 unless the node is down, drained, failing or not responding",
                                    labels=["node", "state"])
        configured = GaugeMetricFamily("slurm_gres_configured", "GRES a node has", labels=["node", "gres"])
        allocated = GaugeMetricFamily("slurm_gres_allocated", "GRES in use by jobs", labels=["node", "gres"])
        cpus = GaugeMetricFamily("slurm_node_cpus", "CPUs of a node", labels=["node", "kind"])
        for n in nodes:
            node_up.add_metric([n["name"], n["state"]], 1 if n["up"] else 0)
            for gres, count in n["gres"].items():
                configured.add_metric([n["name"], gres], count)
                allocated.add_metric([n["name"], gres], n["gres_used"].get(gres, 0))
            cpus.add_metric([n["name"], "total"], n["cpus"])
            cpus.add_metric([n["name"], "allocated"], n["cpus_alloc"])
        yield from (node_up, configured, allocated, cpus)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Prometheus exporter for SLURM (squeue, scontrol)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    REGISTRY.register(SlurmCollector())
    start_http_server(args.port, addr=args.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
