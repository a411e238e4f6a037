"""SLURM itself, measured: login, a burst of small GPU jobs (submission success rate, submit-to-start latency, the
GRES each job got, and whether jobs that ran at the same time got different GPUs), and a GPU request the node cannot
give, which must be refused for that reason.

Why this stays a dynamic provider (stacks/provider.py's ReplacingProvider) and is not a pulumi-command resource like
the workload jobs (stacks/slurm/job.py): the probe measures the login itself (`connect_seconds` is the time of an ssh
login plus `sinfo`, through OpenSSH as a user logs in, with the known_hosts check pulumi-command's ssh client lacks),
and it is one measurement with nothing to keep running and nothing to cancel later: its jobs are cancelled and its
folder removed before `create` returns, whatever happened. A command resource would measure from inside the session
it is timing, and would need the same submit/poll/cancel logic a second time in the stdlib submit script.

GRES isolation, measured rather than assumed. After the burst (its jobs end at once, so they measure the scheduler, not
a queue for GPUs), a wave of one gpu:1 job per GPU of a node (at least two) holds its GPU for `hold_seconds`:
- every probe job records SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES, SLURM_GPUS_ON_NODE, its host and its start and end
  time; jobs whose [start, end] intervals intersect ran concurrently (`gres_overlaps`, `gres_max_concurrent`);
- `gres_distinct_fraction`: of the concurrent pairs, those whose GPUs (host + SLURM_JOB_GPUS, else
  CUDA_VISIBLE_DEVICES) do not intersect; on a node of one GPU, 1 when the wave's jobs ran one after the other
  (`gres_serialized`: GRES held the GPU for one job at a time); None when no two jobs overlapped on a node of
  several GPUs (nothing measured);
- `gres_count_matches_fraction`: of the completed jobs, those that see exactly the requested number of devices;
- `gres_overcommit_refused`: 1 only when sbatch refused a GPU count above the node's with a GRES/node-configuration
  reason AND the same request without --gres passes `sbatch --test-only` (so the refusal is the GPUs', not the
  partition's or the time limit's); `gres_overcommit_reason` says which.
"""
from __future__ import annotations

import re
import shlex
import statistics
import time
from dataclasses import dataclass
from itertools import combinations
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider
from stacks.slurm.jobs import TERMINAL, job_status
from stacks.slurm.remote import ClusterError, Connection


def probe_script(hold_seconds: float) -> str:
    """What each probe job runs: its GRES environment and its start and end on the node's clock."""
    return ('echo "started_at=$(date +%s.%N) host=$(hostname -s) cvd=${CUDA_VISIBLE_DEVICES:-} '
            'job_gpus=${SLURM_JOB_GPUS:-} gpus=${SLURM_GPUS_ON_NODE:-}"; '
            f'sleep {hold_seconds:g}; echo "ended_at=$(date +%s.%N)"')


# -- pure functions on what the jobs and sbatch answered (unit-tested on canned outputs) -----------------------------
def parse_probe_output(text: str) -> dict:
    fields = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)

    def stamp(key: str) -> Optional[float]:
        try:
            return float(fields[key])
        except (KeyError, ValueError):
            return None
    return {"start": stamp("started_at"), "end": stamp("ended_at"), "host": fields.get("host", ""),
            "cuda_visible_devices": fields.get("cvd", ""), "slurm_job_gpus": fields.get("job_gpus", ""),
            "gpus_on_node": fields.get("gpus", "")}


def _devices(value: str) -> set[str]:
    """"0,1" or a range "0-2" (SLURM_JOB_GPUS may use either) as a set of indices."""
    out: set[str] = set()
    for part in filter(None, value.split(",")):
        lo, _, hi = part.partition("-")
        if hi.isdigit() and lo.isdigit():
            out |= {str(i) for i in range(int(lo), int(hi) + 1)}
        else:
            out.add(part)
    return out


def gpus_of(job: dict) -> set[tuple[str, str]]:
    """The GPUs a job got, as (host, index): SLURM_JOB_GPUS (the node's index) when set, else CUDA_VISIBLE_DEVICES
    (which is renumbered from 0 where cgroups fence devices, hence second choice)."""
    return {(job.get("host", ""), d) for d in _devices(job.get("slurm_job_gpus") or job.get("cuda_visible_devices", ""))}


def _job_order(job_id: str) -> tuple:
    """Job ids in submission order ("99" before "100"; array ids like "100_2" too)."""
    return (len(job_id.split("_")[0]), job_id)


def overlaps(jobs: dict[str, dict]) -> list[list[str]]:
    """Pairs of job ids whose [start, end] intersect (both stamps known)."""
    timed = sorted((j for j, r in jobs.items() if r.get("start") is not None and r.get("end") is not None),
                   key=_job_order)
    return [[a, b] for a, b in combinations(timed, 2)
            if jobs[a]["start"] < jobs[b]["end"] and jobs[b]["start"] < jobs[a]["end"]]


def max_concurrent(jobs: dict[str, dict]) -> int:
    events = sorted([(r["start"], 1) for r in jobs.values() if r.get("start") is not None and r.get("end") is not None]
                    + [(r["end"], -1) for r in jobs.values() if r.get("start") is not None and r.get("end") is not None],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def gres_isolation(jobs: dict[str, dict], requested: int, gpus_per_node: int = 2) -> dict:
    """Distinct devices among concurrent jobs, and the visible count against the request (jobs: id -> parsed output;
    only the completed jobs belong here). On a node of one GPU no two gpu:1 jobs may run at once: there, jobs that
    all ran one after the other shared no GPU (fraction 1), and any two that overlapped must show distinct GPUs,
    which one GPU cannot give."""
    pairs = overlaps(jobs)
    timed = [r for r in jobs.values() if r.get("start") is not None and r.get("end") is not None]
    serialized = not pairs and len(timed) >= 2 and gpus_per_node == 1
    distinct = [p for p in pairs if gpus_of(jobs[p[0]]) and gpus_of(jobs[p[1]])
                and not gpus_of(jobs[p[0]]) & gpus_of(jobs[p[1]])]
    counts = [len(_devices(r.get("cuda_visible_devices", ""))) == requested for r in jobs.values()]
    return {
        "gres_overlaps": pairs, "gres_concurrent_pairs": len(pairs), "gres_max_concurrent": max_concurrent(jobs),
        "gres_distinct_fraction": (round(len(distinct) / len(pairs), 4) if pairs else 1.0 if serialized else None)
                                  if requested else None,
        "gres_serialized": serialized,
        "gres_shared_pairs": [p for p in pairs if p not in distinct],
        "gres_count_matches_fraction": round(sum(counts) / len(counts), 4) if counts and requested else None,
        "gres_jobs": [{"job_id": j, "host": r.get("host", ""), "slurm_job_gpus": r.get("slurm_job_gpus", ""),
                       "cuda_visible_devices": r.get("cuda_visible_devices", ""),
                       "gpus_on_node": r.get("gpus_on_node", ""), "start": r.get("start"), "end": r.get("end")}
                      for j, r in sorted(jobs.items(), key=lambda kv: _job_order(kv[0]))],
    }


# What SLURM answers when a GRES request cannot be met by any node (22.05 and later; sbatch, job_submit, select).
GRES_REFUSALS = (
    re.compile(r"Requested node configuration is not available", re.I),
    re.compile(r"Invalid generic resource", re.I),
    re.compile(r"Invalid (gres|GRES) specification", re.I),
    re.compile(r"\bgres\b.*\b(not available|unavailable|invalid|exceed)", re.I),
)


def overcommit_verdict(over_rc: int, over_message: str, control_rc: int, control_message: str) -> dict:
    """Whether the over-request was refused *because of its GPUs*: refused, with a GRES/node-configuration message,
    while the same request without --gres passes `sbatch --test-only`."""
    if over_rc == 0:
        return {"gres_overcommit_refused": 0, "gres_overcommit_reason": "accepted (queued): it was cancelled"}
    matched = next((p.pattern for p in GRES_REFUSALS if p.search(over_message)), None)
    if matched is None:
        return {"gres_overcommit_refused": 0,
                "gres_overcommit_reason": f"refused for another reason: {over_message.strip()[-200:]}"}
    if control_rc != 0:
        return {"gres_overcommit_refused": 0,
                "gres_overcommit_reason": f"the same request without --gres is refused too: "
                                          f"{control_message.strip()[-200:]}"}
    return {"gres_overcommit_refused": 1, "gres_overcommit_reason": f"GRES: {matched}"}


def _percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)


# -- the measurement ----------------------------------------------------------------------------------------------------
def _submit_wave(conn: Connection, out_dir: str, partition: str, gres_flag: str, count: int, hold: float,
                 name: str) -> dict[str, float]:
    """sbatch `count` probe jobs from one remote script; returns job id -> the login node's clock at submission."""
    burst = (f"mkdir -p {shlex.quote(out_dir)} && for i in $(seq {count}); do t=$(date +%s.%N); "
             f"id=$(sbatch --parsable -p {shlex.quote(partition)} {gres_flag} -t 1 -J {name} "
             f"-o {shlex.quote(out_dir)}/probe-%j.out --wrap {shlex.quote(probe_script(hold))} 2>/dev/null); "
             f"echo \"${{id:-none}} $t $?\"; done")  # each line: "job_id submit_clock sbatch_exit"
    words = conn.run(burst, timeout=max(60, count * 5)).stdout.split()
    records = [tuple(words[i:i + 3]) for i in range(0, len(words), 3)]
    return {job_id.split(";")[0]: float(stamp) for job_id, stamp, _ in records if job_id != "none"}


def _wait_and_collect(conn: Connection, out_dir: str, accepted: dict[str, float], timeout_s: float
                      ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Wait until the jobs left the queue; their SLURM state and what each printed. Cancels what is left."""
    run = lambda script: conn.run(script, check=False, timeout=60)  # noqa: E731
    results: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while accepted and time.monotonic() < deadline:
            pending = conn.run(f"squeue -h -j {','.join(accepted)} -o %i 2>/dev/null", check=False).stdout.split()
            if not pending:
                break
            time.sleep(0.5)
        for job_id, submitted_at in accepted.items():
            status = job_status(run, job_id, conn.where)
            outputs[job_id] = parse_probe_output(conn.read_file(f"{out_dir}/probe-{job_id}.out") or "")
            start = outputs[job_id]["start"]
            results[job_id] = {"state": status["state"], "exit_code": status["exit_code"],
                               "latency": None if start is None else start - submitted_at,
                               "cuda_visible_devices": outputs[job_id]["cuda_visible_devices"]}
    finally:  # nothing of the probe stays queued, whatever happened above
        unfinished = [j for j in accepted if results.get(j, {}).get("state") not in TERMINAL]
        if unfinished:
            conn.run(f"scancel {' '.join(unfinished)}", check=False)
    return results, outputs


def _ok(results: dict[str, dict]) -> list[str]:
    return sorted((j for j, r in results.items() if r["state"] == "COMPLETED" and r["exit_code"].startswith("0:")),
                  key=_job_order)


def probe(conn: Connection, root: str, partition: str, gpus_per_node: int, jobs: int, timeout_s: float,
          hold_seconds: float = 2.0) -> dict:
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
    # 1. The burst: submission success and submit-to-start latency (jobs that end at once, as before).
    accepted = _submit_wave(conn, out_dir, partition, gres_flag, jobs, 0, "probe")
    results, outputs = _wait_and_collect(conn, out_dir, accepted, timeout_s)
    ok = [results[j] for j in _ok(results)]
    latencies = [r["latency"] for r in ok if r["latency"] is not None]
    with_gpu = [r for r in ok if r["cuda_visible_devices"]]
    # 2. The concurrency wave: one gpu:1 job a GPU of a node (at least two), each holding its GPU for hold_seconds,
    #    so that they run at the same time and their devices can be compared.
    wave: dict[str, dict] = {}
    if gpus_per_node:
        wave_ids = _submit_wave(conn, out_dir, partition, gres_flag, max(2, gpus_per_node), hold_seconds, "probe-gres")
        wave, wave_out = _wait_and_collect(conn, out_dir, wave_ids, timeout_s)
        outputs.update(wave_out)
    isolation = gres_isolation({j: outputs[j] for j in _ok(results) + _ok(wave)}, 1 if gpus_per_node else 0,
                               gpus_per_node)

    # 3. A request beyond the node's GPUs must be refused at submission (not queued forever), for its GPUs.
    request = f"-p {shlex.quote(partition)} -t 1 -o /dev/null --wrap true"
    over = conn.run(f"sbatch --parsable {request} --gres=gpu:{gpus_per_node + 1}", check=False)
    if over.returncode == 0:
        conn.run(f"scancel {over.stdout.strip().split(';')[0]}", check=False)
    control = conn.run(f"sbatch --test-only {request}", check=False)  # the same request, GPUs left out
    verdict = overcommit_verdict(over.returncode, over.stderr + over.stdout, control.returncode,
                                 control.stderr + control.stdout)
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
        **isolation,
        "gres_wave_jobs": len(wave), "gres_wave_completed": len(_ok(wave)), "gres_wave_hold_seconds": hold_seconds,
        **verdict,
        "gres_overcommit_message": (over.stderr.strip() or over.stdout.strip())[-300:],
    }


class _ProbeProvider(ReplacingProvider):
    settings_only = ("connection", "timeout_seconds")

    def create(self, props: dict) -> CreateResult:
        outs = probe(Connection.from_props(props["connection"]), props["root"], props["partition"],
                     int(props["gpus_per_node"]), int(props["jobs"]), float(props["timeout_seconds"]),
                     float(props.get("hold_seconds") or 2.0))
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
    hold_seconds: float = 2.0  # how long each probe job holds its GPU, so that jobs overlap and can be compared


class SlurmProbe(pulumi.ComponentResource):
    def __init__(self, name: str, args: SlurmProbeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:SlurmProbe", name, None, opts)
        probe_ = _Probe(f"{name}-burst", {
            "connection": args.connection, "cluster_id": args.cluster_id, "root": args.root,
            "partition": args.partition, "gpus_per_node": args.gpus_per_node, "jobs": args.jobs,
            "timeout_seconds": args.timeout_seconds, "hold_seconds": args.hold_seconds},
            pulumi.ResourceOptions(parent=self))
        self.metrics: pulumi.Output[dict] = probe_.metrics
        self.register_outputs({"metrics": self.metrics})
