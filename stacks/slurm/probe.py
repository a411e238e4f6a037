"""SLURM itself, measured: login, a burst of small GPU jobs (submission success rate, submit-to-start
latency, the GRES environment each job saw) and a GPU request the node cannot give, which must be refused.
"""
from __future__ import annotations

import shlex
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider

from stacks.slurm.remote import ClusterError, Connection
from stacks.slurm.job import TERMINAL, job_status

PROBE_SCRIPT = 'echo "started_at=$(date +%s.%N) cvd=${CUDA_VISIBLE_DEVICES:-} gpus=${SLURM_GPUS_ON_NODE:-}"'


def _percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)


def probe(conn: Connection, root: str, partition: str, gpus_per_node: int, jobs: int, timeout_s: float) -> dict:
    started = time.monotonic()
    info = conn.run(f"sinfo -V && sinfo -h -p {shlex.quote(partition)} -o '%a %D %G'", timeout=60, check=False)
    connect_seconds = round(time.monotonic() - started, 3)
    if info.returncode != 0:
        raise ClusterError(f"SLURM on {conn.where} does not answer: {info.stderr.strip()}")
    lines = info.stdout.strip().splitlines()
    if len(lines) < 2:
        raise ClusterError(f"partition {partition!r} does not exist on {conn.where} "
                           f"(mlops-validation:hpc.partition); sinfo -s lists the partitions")
    version, (avail, nodes, gres) = lines[0], (lines[1].split() + ["", "", ""])[:3]

    out_dir = f"{root}/slurm-probe"
    gres_flag = "--gres=gpu:1" if gpus_per_node else ""
    # One remote script submits the whole burst: each line is "job_id submit_clock sbatch_exit".
    burst = (f"mkdir -p {shlex.quote(out_dir)} && for i in $(seq {jobs}); do t=$(date +%s.%N); "
             f"id=$(sbatch --parsable -p {shlex.quote(partition)} {gres_flag} -t 1 -J probe "
             f"-o {shlex.quote(out_dir)}/probe-%j.out --wrap {shlex.quote(PROBE_SCRIPT)} 2>/dev/null); "
             f"echo \"${{id:-none}} $t $?\"; done")
    submitted = []
    for line in conn.run(burst, timeout=max(60, jobs * 5)).stdout.split():
        submitted.append(line)
    records = [tuple(submitted[i:i + 3]) for i in range(0, len(submitted), 3)]
    accepted = {job_id.split(";")[0]: float(stamp) for job_id, stamp, _ in records if job_id != "none"}

    deadline = time.monotonic() + timeout_s
    while accepted and time.monotonic() < deadline:
        ids = ",".join(accepted)
        pending = conn.run(f"squeue -h -j {ids} -o %i 2>/dev/null", check=False).stdout.split()
        if not pending:
            break
        time.sleep(0.5)
    results = {}
    for job_id, submitted_at in accepted.items():
        status = job_status(conn, job_id)
        text = conn.read_file(f"{out_dir}/probe-{job_id}.out") or ""
        fields = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)
        start = float(fields["started_at"]) if "started_at" in fields else None
        results[job_id] = {"state": status["state"], "exit_code": status["exit_code"],
                           "latency": None if start is None else start - submitted_at,
                           "cuda_visible_devices": fields.get("cvd", "")}
    unfinished = [j for j, r in results.items() if r["state"] not in TERMINAL]
    if unfinished:
        conn.run(f"scancel {' '.join(unfinished)}", check=False)

    ok = [r for r in results.values() if r["state"] == "COMPLETED" and r["exit_code"].startswith("0:")]
    latencies = [r["latency"] for _, r in sorted(results.items(), key=lambda kv: int(kv[0]))
                 if r in ok and r["latency"] is not None]
    with_gpu = [r for r in ok if r["cuda_visible_devices"]]

    # A request beyond the node's GPUs must be refused at submission, not queued forever.
    over = conn.run(f"sbatch --parsable -p {shlex.quote(partition)} --gres=gpu:{gpus_per_node + 1} -t 1 "
                    f"-o /dev/null --wrap true", check=False)
    if over.returncode == 0:
        conn.run(f"scancel {over.stdout.strip().split(';')[0]}", check=False)
    conn.run(f"rm -rf {shlex.quote(out_dir)}", check=False)
    return {
        "slurm_version": version, "partition": partition, "partition_state": avail, "partition_nodes": nodes,
        "partition_gres": gres, "connect_seconds": connect_seconds,
        "jobs_submitted": jobs, "jobs_accepted": len(accepted), "jobs_completed": len(ok),
        "submission_success_rate": round(len(ok) / jobs, 4),
        "submit_to_start_median_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "submit_to_start_p95_seconds": _percentile(latencies, 0.95),
        "submit_to_start_max_seconds": round(max(latencies), 3) if latencies else None,
        "submit_to_start_seconds": [round(x, 3) for x in latencies],
        "gres_requested": gres_flag or "none",
        "gres_env_fraction": round(len(with_gpu) / len(ok), 4) if ok and gpus_per_node else None,
        "gres_devices_seen": sorted({r["cuda_visible_devices"] for r in ok}),
        "gres_overcommit_refused": int(over.returncode != 0),
        "gres_overcommit_message": (over.stderr.strip() or over.stdout.strip())[-300:],
    }


class _ProbeProvider(ReplacingProvider):
    settings_only = ("connection", "timeout_seconds")
    def create(self, props: dict) -> CreateResult:
        outs = probe(Connection.from_props(props["connection"]), props["root"], props["partition"],
                     int(props["gpus_per_node"]), int(props["jobs"]), float(props["timeout_seconds"]))
        return CreateResult(id_=f"probe-{int(time.time())}", outs={**props, "metrics": outs})



class _Probe(Resource, module="mlops", name="SlurmProbe"):
    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_ProbeProvider(), name, {**props, "metrics": None}, opts)


@dataclass
class SlurmProbeArgs:
    connection: pulumi.Input[dict]
    cluster_id: pulumi.Input[str]
    root: pulumi.Input[str]
    partition: str
    gpus_per_node: int
    jobs: int
    timeout_seconds: int = 600


class SlurmProbe(pulumi.ComponentResource):
    def __init__(self, name: str, args: SlurmProbeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:SlurmProbe", name, None, opts)
        probe_ = _Probe(f"{name}-burst", {
            "connection": args.connection, "cluster_id": args.cluster_id, "root": args.root,
            "partition": args.partition, "gpus_per_node": args.gpus_per_node, "jobs": args.jobs,
            "timeout_seconds": args.timeout_seconds}, pulumi.ResourceOptions(parent=self))
        self.metrics: pulumi.Output[dict] = probe_.metrics
        self.register_outputs({"metrics": self.metrics})
