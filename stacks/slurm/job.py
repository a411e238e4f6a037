"""One SLURM batch job as a Pulumi resource: render the script, submit it on the login node, wait for it,
and return what the job did (state, exit code, timing, GRES environment, its metrics JSON).

Submission goes through the cluster connection (ssh to a login node, or a local shell), so the embedded
default drives exactly the path a real site uses. A failed job fails `pulumi up` with its id, state,
exit code and the tail of its log; the job folder stays on shared storage for inspection.
"""
from __future__ import annotations

import json
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider

from stacks.slurm.remote import ClusterError, Connection

TEMPLATE = Path(__file__).with_name("templates") / "sbatch.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


# -- plain functions the provider and tests share ---------------------------------------------------
def render_script(name: str, job_dir: str, command: str, partition: str, gres: Optional[str], ntasks: int,
                  cpus_per_task: int, time_limit_minutes: int) -> str:
    directives = [f"--job-name={name}", f"--partition={partition}", f"--output={job_dir}/slurm-%j.out",
                  f"--time={time_limit_minutes}", f"--ntasks={ntasks}", f"--cpus-per-task={cpus_per_task}"]
    if gres:
        directives.append(f"--gres={gres}")
    return Template(TEMPLATE.read_text()).substitute(
        directives="\n".join(f"#SBATCH {d}" for d in directives), job_dir=shlex.quote(job_dir), command=command)


def parse_scontrol(line: str) -> dict:
    """`scontrol show job -o ID` prints one line of Key=Value pairs (values without spaces except Command)."""
    fields = {}
    for token in line.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def job_status(conn: Connection, job_id: str) -> dict:
    out = conn.run(f"scontrol show job -o {job_id}", check=False, timeout=60)
    if out.returncode == 0 and out.stdout.strip():
        f = parse_scontrol(out.stdout)
        return {"state": f.get("JobState", "UNKNOWN"), "exit_code": f.get("ExitCode", ""),
                "node": f.get("NodeList", ""), "run_time": f.get("RunTime", ""), "reason": f.get("Reason", "")}
    # Purged from the controller (MinJobAge): ask accounting, which a site with slurmdbd has.
    acct = conn.run(f"sacct -X -n -P -j {job_id} -o State,ExitCode,NodeList,Elapsed", check=False, timeout=60)
    if acct.returncode == 0 and acct.stdout.strip():
        state, code, node, elapsed = (acct.stdout.strip().splitlines()[0].split("|") + ["", "", "", ""])[:4]
        return {"state": state.split()[0], "exit_code": code, "node": node, "run_time": elapsed, "reason": ""}
    raise ClusterError(f"SLURM job {job_id} is unknown to scontrol and sacct: {out.stderr.strip()}")


def elapsed_seconds(run_time: str) -> float:
    """SLURM's [D-]HH:MM:SS (or MM:SS) as seconds."""
    days, _, clock = run_time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def submit(conn: Connection, script_path: str) -> tuple[str, float]:
    """sbatch the script; returns the job id and the login node's clock at submission."""
    out = conn.run(f"date +%s.%N && sbatch --parsable {shlex.quote(script_path)}", check=False, timeout=60)
    if out.returncode != 0:
        raise ClusterError(f"sbatch refused {script_path} on {conn.where}: {out.stderr.strip() or out.stdout.strip()}")
    stamp, job_id = out.stdout.split()[:2]
    return job_id.split(";")[0], float(stamp)


def wait(conn: Connection, job_id: str, timeout_s: float, poll_s: float = 1.0) -> dict:
    """Poll until the job ends (not `sbatch --wait`, which can answer 10 s late); scancel on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(conn, job_id)
        if status["state"] in TERMINAL:
            return status
        if time.monotonic() > deadline:
            conn.run(f"scancel {job_id}", check=False)
            raise ClusterError(f"SLURM job {job_id} still {status['state']} after {timeout_s:.0f} s "
                               f"({status['reason']}); cancelled it")
        time.sleep(poll_s)


def run_job(conn: Connection, props: dict) -> dict:
    """Stage the script, submit, wait, collect. Raises with the log tail if the job did not succeed."""
    job_dir = f"{props['job_root']}/{props['name']}-{uuid.uuid4().hex[:8]}"
    script = render_script(props["name"], job_dir, props["command"], props["partition"], props.get("gres"),
                           int(props["ntasks"]), int(props["cpus_per_task"]), int(props["time_limit_minutes"]))
    conn.write_file(f"{job_dir}/job.sh", script.encode(), mode=0o755)
    job_id, submitted_at = submit(conn, f"{job_dir}/job.sh")
    status = wait(conn, job_id, float(props["timeout_seconds"]), float(props.get("poll_seconds", 1.0)))
    log_path = f"{job_dir}/slurm-{job_id}.out"
    tail = conn.run(f"tail -n 40 {shlex.quote(log_path)} 2>/dev/null", check=False).stdout
    exit_code = status["exit_code"]
    if status["state"] != "COMPLETED" or not exit_code.startswith("0:"):
        raise ClusterError(f"SLURM job {job_id} ({props['name']}) ended {status['state']} with exit code "
                           f"{exit_code} on {status['node'] or 'no node'}. Log {log_path}, last lines:\n{tail}")
    env = json.loads(conn.read_file(f"{job_dir}/job_env.json") or "{}")
    metrics_text = conn.read_file(f"{job_dir}/metrics.json") if props.get("metrics_file", True) else None
    started = float(env.pop("started_at", "nan"))
    return {"job_id": job_id, "state": status["state"], "exit_code": exit_code, "node": status["node"],
            "elapsed_seconds": elapsed_seconds(status["run_time"]) if status["run_time"] else None,
            "submit_to_start_seconds": round(started - submitted_at, 3) if started == started else None,
            "gres_env": env, "metrics": json.loads(metrics_text) if metrics_text else {},
            "job_dir": job_dir, "log_path": log_path, "log_tail": tail}


def cancel_and_remove(conn: Connection, job_id: Optional[str], job_dir: Optional[str]) -> None:
    if job_id:
        conn.run(f"squeue -h -j {job_id} -o %i 2>/dev/null | grep -q . && scancel {job_id}; true", check=False)
    if job_dir:
        conn.run(f"rm -rf {shlex.quote(job_dir)}", check=False)


# -- the Pulumi resource ---------------------------------------------------------------------------
class _SbatchProvider(ReplacingProvider):
    settings_only = ("connection", "timeout_seconds", "poll_seconds")
    def create(self, props: dict) -> CreateResult:
        outs = run_job(Connection.from_props(props["connection"]), props)
        return CreateResult(id_=outs["job_id"], outs={**props, **outs})

    def delete(self, _id: str, props: dict) -> None:
        try:
            cancel_and_remove(Connection.from_props(props["connection"]), props.get("job_id"), props.get("job_dir"))
        except ClusterError:
            pass  # the cluster is gone (destroyed first, or unreachable): nothing of ours can be left there


_OUTPUTS = ("job_id", "state", "exit_code", "node", "elapsed_seconds", "submit_to_start_seconds", "gres_env",
            "metrics", "job_dir", "log_path", "log_tail")


class _SbatchSubmission(Resource, module="mlops", name="SbatchJob"):
    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_SbatchProvider(), name, {**props, **dict.fromkeys(_OUTPUTS)}, opts)


@dataclass
class SbatchJobArgs:
    connection: pulumi.Input[dict]  # Connection fields; private_key a secret
    cluster_id: pulumi.Input[str]  # a new cluster means a new job
    job_root: pulumi.Input[str]  # folder on shared storage for job folders
    command: pulumi.Input[str]  # shell lines run inside the job; $JOB_DIR is the job folder
    partition: str = "debug"
    gres: Optional[str] = None  # e.g. "gpu:1"
    ntasks: int = 1
    cpus_per_task: int = 1
    time_limit_minutes: int = 30
    timeout_seconds: Optional[int] = None  # queue wait + run; default: time limit + 5 minutes
    metrics_file: bool = True
    triggers: list = field(default_factory=list)  # anything whose change should rerun the job


class SbatchJob(pulumi.ComponentResource):
    """Submit one batch job and export its outcome; `metrics` is the job's metrics.json."""

    def __init__(self, name: str, args: SbatchJobArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:SbatchJob", name, None, opts)
        props = {"name": name, "connection": args.connection, "cluster_id": args.cluster_id,
                 "job_root": args.job_root, "command": args.command, "partition": args.partition,
                 "gres": args.gres, "ntasks": args.ntasks, "cpus_per_task": args.cpus_per_task,
                 "time_limit_minutes": args.time_limit_minutes,
                 "timeout_seconds": args.timeout_seconds or args.time_limit_minutes * 60 + 300,
                 "metrics_file": args.metrics_file, "triggers": args.triggers}
        job = _SbatchSubmission(f"{name}-job", props, pulumi.ResourceOptions(parent=self))
        self.job_id: pulumi.Output[str] = job.job_id
        self.state: pulumi.Output[str] = job.state
        self.exit_code: pulumi.Output[str] = job.exit_code
        self.node: pulumi.Output[str] = job.node
        self.elapsed_seconds: pulumi.Output[float] = job.elapsed_seconds
        self.submit_to_start_seconds: pulumi.Output[float] = job.submit_to_start_seconds
        self.gres_env: pulumi.Output[dict] = job.gres_env
        self.metrics: pulumi.Output[dict] = job.metrics
        self.job_dir: pulumi.Output[str] = job.job_dir
        self.log_path: pulumi.Output[str] = job.log_path
        self.register_outputs({"job_id": self.job_id, "state": self.state, "metrics": self.metrics})

    def summary(self) -> pulumi.Output[dict]:
        """What the stack exports about the job itself."""
        return pulumi.Output.all(self.job_id, self.state, self.exit_code, self.node, self.elapsed_seconds,
                                 self.submit_to_start_seconds, self.gres_env, self.log_path).apply(
            lambda v: dict(zip(("job_id", "state", "exit_code", "node", "elapsed_seconds",
                                "submit_to_start_seconds", "gres_env", "log_path"), v)))


def workload_command(python: str, code_dir: str, module: str, args: str, shared_root: str,
                     container_image: Optional[str] = None, tasks: int = 1) -> str:
    """The job's command line for a workload entry point: `python -m workloads.<task> ...`, run from the
    staged code, inside the site's Apptainer image when one is configured, and under `srun` (one process
    a task, which is how multi-GPU jobs find their rank) when the job has several tasks."""
    run = f"{python} -m {module} {args}"
    if container_image:
        run = (f"apptainer exec --nv --bind {shlex.quote(shared_root)} --env PYTHONPATH={shlex.quote(code_dir)} "
               f"{shlex.quote(container_image)} {run}")
    if tasks > 1:
        run = f"srun --ntasks={tasks} --kill-on-bad-exit=1 {run}"
    return f"cd {shlex.quote(code_dir)}\nexport PYTHONPATH={shlex.quote(code_dir)}\n{run}"


@dataclass
class WorkloadContext:
    """Everything a workload job needs to know about where it runs; built once in __main__."""

    connection: pulumi.Input[dict]
    cluster_id: pulumi.Input[str]
    root: pulumi.Output[str]  # this stack's folder on shared storage
    code_dir: pulumi.Output[str]  # staged workloads/ package lives in code_dir/workloads
    python: str
    partition: str
    gpus_per_node: int
    cpus_per_task: int
    container_image: Optional[str] = None
    code_version: str = ""  # hash of the staged code: new code re-runs the jobs

    def job(self, name: str, module: str, args: pulumi.Input[str], gpus: int = 0, cpus: Optional[int] = None,
            tasks: int = 1, time_limit_minutes: int = 30, opts: Optional[pulumi.ResourceOptions] = None) -> SbatchJob:
        command = pulumi.Output.all(self.code_dir, self.root, args).apply(
            lambda v: workload_command(self.python, v[0], module, v[2], v[1], self.container_image, tasks))
        return SbatchJob(name, SbatchJobArgs(
            connection=self.connection, cluster_id=self.cluster_id, job_root=self.root.apply(lambda r: f"{r}/jobs"),
            command=command, partition=self.partition, gres=f"gpu:{gpus}" if gpus and self.gpus_per_node else None,
            ntasks=tasks, cpus_per_task=cpus or 1, time_limit_minutes=time_limit_minutes,
            triggers=[self.code_version]), opts)
