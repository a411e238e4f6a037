"""One SLURM batch job as a Pulumi resource: a pulumi-command `Command` that runs workloads/slurm_submit.py on the
login node (render the script, sbatch it, wait, return the job record, its GRES environment and its metrics.json).

`command:remote:Command` over ssh (the embedded login node and a real site alike), or `command:local:Command` where
the connection is `local` (hpc.embedded.submitVia: local). A failed job fails `pulumi up` with its id, state, exit
code, node and the tail of its log; its folder stays on shared storage for inspection.

What pulumi-command 1.2.1 does, read in its source (provider/pkg/provider/, pulumi-go-provider v1.3.0 `infer`), and
what this module does about it:

- Only `triggers` is replaceOnChanges. Any other changed input (`connection`, `create`, `environment`, `stdin`) is
  an in-place update, which runs `update`, or `create` again when there is no `update`. So `update` is the submit
  script's `show` (it reprints the saved record), and everything that must re-run the job is in `triggers`: the
  cluster id, the code digest, the staged data's digests and the rendered job script (command and #SBATCH
  directives). A new key, ssh time-out or job time-out changes `connection`/`create` only: no job re-runs.
- A failed `create` records no resource (no partial state): its `delete` never runs, so the submit script cancels
  its own job on any failure, signal or lost connection before it exits.
- `delete` runs with the inputs of the last create/update; PULUMI_COMMAND_STDOUT/STDERR are passed as environment
  variables: locally always, over ssh through the session's Setenv, which sshd refuses without `AcceptEnv` (then a
  warning on every update and delete). The job folder is therefore a pure function of the job's inputs
  (`<root>/jobs/<name>-<8 hex of their sha256>`), named in the delete command, with the job id saved in it; the
  previous stdout is passed (and read by `delete`) for local commands only.
- ssh: golang.org/x/crypto, not OpenSSH. `connection.hostKey` pins one host key (ssh.FixedHostKey); without it the
  provider accepts ANY host key (InsecureIgnoreHostKey); it never reads a known_hosts file. So the key for host:port
  is looked up here in the connection's known_hosts file (the embedded login node writes one; a site names its own,
  else ~/.ssh/known_hosts) and passed as hostKey; where none is found the job still runs, with a warning that the
  login node's identity is not verified. `environment` is sent through Setenv too (needs AcceptEnv), so none is
  sent over ssh; the embedded sshd sets SLURM_CONF itself.
- Commands run through the remote user's login shell (`$SHELL -c`), locally through `/bin/sh -c`; the job script
  is given on stdin, not on the command line. stdout and stderr carry no secret (job records, metrics, progress),
  so they are not marked secret; `connection` is (the provider marks it so).
- Nothing runs during preview. Replacement is delete-before-replace, as before (the folder is the inputs' digest).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Optional

import pulumi
from pulumi_command import local, remote

from stacks.slurm.container import ContainerRun

TEMPLATE = Path(__file__).with_name("templates") / "sbatch.sh"
SUBMIT_SCRIPT = "workloads/slurm_submit.py"  # relative to the staged code folder
DIAL_ERROR_LIMIT = 3  # the provider's default is 10 dials (15 s each): an unreachable login node must fail fast
_OUTPUTS = ("job_id", "state", "exit_code", "node", "elapsed_seconds", "submit_to_start_seconds", "gres_env",
            "metrics", "job_dir", "log_path", "log_tail", "container")


# -- plain functions the component and tests share ------------------------------------------------------------------
def render_script(name: str, job_dir: str, command: str, partition: str, gres: Optional[str], ntasks: int,
                  cpus_per_task: int, time_limit_minutes: int) -> str:
    directives = [f"--job-name={name}", f"--partition={partition}", f"--output={job_dir}/slurm-%j.out",
                  f"--time={time_limit_minutes}", f"--ntasks={ntasks}", f"--cpus-per-task={cpus_per_task}"]
    if gres:
        directives.append(f"--gres={gres}")
    return Template(TEMPLATE.read_text()).substitute(
        directives="\n".join(f"#SBATCH {d}" for d in directives), job_dir=shlex.quote(job_dir), command=command)


def job_folder(job_root: str, name: str, identity: list) -> str:
    """`<root>/jobs/<name>-<8 hex>`: the hex is the digest of everything that makes the job what it is, so the delete
    command can name the folder and a re-run of the same job reuses it."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{job_root.rstrip('/')}/{name}-{digest}"


def submit_command(python: str, submit_script: str, mode: str, job_dir: str, name: str = "",
                   timeout_seconds: int = 0, poll_seconds: float = 1.0, metrics_file: bool = True) -> str:
    """The command line pulumi-command runs (no secret in it: the key travels in `connection`)."""
    argv = [python, submit_script, mode, "--job-dir", job_dir]
    if mode == "submit":
        argv += ["--name", name, "--timeout", str(int(timeout_seconds)), "--poll", f"{poll_seconds:g}"]
        if not metrics_file:
            argv.append("--no-metrics")
    return " ".join(shlex.quote(a) for a in argv)


def _host_matches(patterns: str, host: str, port: int) -> bool:
    names = {host if port == 22 else f"[{host}]:{port}"}
    if port == 22:
        names.add(f"[{host}]:22")
    for pattern in patterns.split(","):
        if pattern.startswith("|1|"):  # hashed: |1|base64(salt)|base64(hmac-sha1(salt, name))
            try:
                _, _, salt, digest = pattern.split("|")
                salt_b, digest_b = base64.b64decode(salt), base64.b64decode(digest)
            except ValueError:
                continue
            if any(hmac.compare_digest(hmac.new(salt_b, n.encode(), "sha1").digest(), digest_b) for n in names):
                return True
        elif not pattern.startswith("!") and any(_glob(pattern).fullmatch(n) for n in names):
            return True
    return False


def _glob(pattern: str) -> "re.Pattern":
    """An OpenSSH host pattern: only `*` and `?` are special (not the brackets of `[host]:port`)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


_KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def known_host_key(known_hosts: Optional[str], host: str, port: int) -> Optional[str]:
    """The login node's public key ("type base64") from a known_hosts file, ed25519 first; None when not listed.
    The provider pins exactly one key and offers only its algorithm, hence the preference."""
    path = Path(os.path.expanduser(known_hosts or "~/.ssh/known_hosts"))
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[0].startswith("#") or parts[0].startswith("@"):
            continue  # @cert-authority / @revoked lines are not a host's own key
        if _host_matches(parts[0], host, port):
            found.setdefault(parts[1], f"{parts[1]} {parts[2]}")
    for kind in _KEY_PREFERENCE:
        if kind in found:
            return found[kind]
    return next(iter(found.values()), None)


def command_connection(conn: dict) -> dict:
    """pulumi-command's remote connection from this project's Connection fields (stacks/slurm/remote.py)."""
    if conn.get("kind") != "ssh":
        raise ValueError(f"the SLURM job resource was declared for ssh submission, but the connection is "
                         f"{conn.get('kind')!r}: build WorkloadContext with submit_via='local'")
    host, port = conn["host"], int(conn.get("port") or 22)
    host_key = known_host_key(conn.get("known_hosts"), host, port)
    if host_key is None:
        pulumi.log.warn(f"no host key for {host}:{port} in {conn.get('known_hosts') or '~/.ssh/known_hosts'}: the "
                        "SLURM jobs' ssh connection (pulumi-command) will not verify the login node's identity")
    return {"host": host, "port": float(port), "user": conn.get("user") or "root",
            "private_key": conn.get("private_key"), "per_dial_timeout": int(conn.get("connect_timeout") or 10),
            "dial_error_limit": DIAL_ERROR_LIMIT, "host_key": host_key}


# -- the Pulumi component ---------------------------------------------------------------------------------------------
@dataclass
class SbatchJobArgs:
    connection: pulumi.Input[dict]  # Connection fields (stacks/slurm/remote.py); private_key a secret
    cluster_id: pulumi.Input[str]  # a new cluster means a new job
    job_root: pulumi.Input[str]  # folder on shared storage for job folders
    command: pulumi.Input[str]  # shell lines run inside the job; $JOB_DIR is the job folder
    submit_script: pulumi.Input[str] = None  # workloads/slurm_submit.py as staged on the cluster
    partition: str = "debug"
    gres: Optional[str] = None  # e.g. "gpu:1"
    ntasks: int = 1
    cpus_per_task: int = 1
    time_limit_minutes: int = 30
    timeout_seconds: Optional[int] = None  # queue wait + run; default: time limit + 5 minutes
    poll_seconds: float = 1.0
    metrics_file: bool = True
    code_version: pulumi.Input[str] = ""  # digest of the staged code: new code re-runs the job
    data: list = field(default_factory=list)  # digests of the staged data the job reads: new data re-runs it
    triggers: list = field(default_factory=list)  # anything else whose change should rerun the job
    submit_via: str = "ssh"  # "ssh": command:remote:Command; "local": command:local:Command
    login_python: str = "python3"  # the login node's python3 that runs the submit script (stdlib only)


class SbatchJob(pulumi.ComponentResource):
    """Submit one batch job and export its outcome; `metrics` is the job's metrics.json."""

    def __init__(self, name: str, args: SbatchJobArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:SbatchJob", name, None, opts)
        self.job_name = name
        if args.submit_script is None:
            raise ValueError("SbatchJobArgs.submit_script: the staged workloads/slurm_submit.py is needed")
        if args.submit_via not in ("ssh", "local"):
            raise ValueError(f"SbatchJobArgs.submit_via must be 'ssh' or 'local', not {args.submit_via!r}")
        timeout = args.timeout_seconds or args.time_limit_minutes * 60 + 300
        spec = {"partition": args.partition, "gres": args.gres, "ntasks": args.ntasks,
                "cpus_per_task": args.cpus_per_task, "time_limit_minutes": args.time_limit_minutes}

        def plan(v: list) -> dict:
            job_root, command, cluster_id, code_version, data, extra, submit = v
            identity = [cluster_id, code_version, data, extra, name, command, spec]
            job_dir = job_folder(job_root, name, identity)
            script = render_script(name, job_dir, command, args.partition, args.gres, args.ntasks,
                                   args.cpus_per_task, args.time_limit_minutes)
            cmd = lambda mode: submit_command(args.login_python, submit, mode, job_dir, name, timeout,  # noqa: E731
                                              args.poll_seconds, args.metrics_file)
            return {"job_dir": job_dir, "script": script, "create": cmd("submit"), "update": cmd("show"),
                    "delete": cmd("delete"),
                    "triggers": [cluster_id, code_version, *data, *extra, script]}

        p = pulumi.Output.all(args.job_root, args.command, args.cluster_id, args.code_version,
                              pulumi.Output.all(*args.data), pulumi.Output.all(*args.triggers),
                              args.submit_script).apply(plan)
        child = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        common: dict[str, Any] = dict(
            create=p["create"], update=p["update"], delete=p["delete"], stdin=p["script"],
            triggers=p["triggers"])  # logging: progress lines (stderr), not the JSON document, in the console
        conn = pulumi.Output.from_input(args.connection)
        if args.submit_via == "ssh":
            c = conn.apply(command_connection)
            self.command = remote.Command(f"{name}-job", connection=remote.ConnectionArgs(
                host=c["host"], port=c["port"], user=c["user"], private_key=c["private_key"],
                per_dial_timeout=c["per_dial_timeout"], dial_error_limit=c["dial_error_limit"],
                host_key=c["host_key"]), add_previous_output_in_env=False, logging=remote.Logging.STDERR, opts=child,
                **common)
        else:
            env = conn.apply(_local_env)
            self.command = local.Command(f"{name}-job", environment=env, add_previous_output_in_env=True,
                                         logging=local.Logging.STDERR, opts=child, **common)
        doc = self.command.stdout.apply(json.loads)
        self.job_id: pulumi.Output[str] = doc["job_id"]
        self.state: pulumi.Output[str] = doc["state"]
        self.exit_code: pulumi.Output[str] = doc["exit_code"]
        self.node: pulumi.Output[str] = doc["node"]
        self.elapsed_seconds: pulumi.Output[float] = doc["elapsed_seconds"]
        self.submit_to_start_seconds: pulumi.Output[float] = doc["submit_to_start_seconds"]
        self.gres_env: pulumi.Output[dict] = doc["gres_env"]
        self.metrics: pulumi.Output[dict] = doc["metrics"]
        self.job_dir: pulumi.Output[str] = doc["job_dir"]
        self.log_path: pulumi.Output[str] = doc["log_path"]
        self.log_tail: pulumi.Output[str] = doc["log_tail"]
        # hpc.container: the image and Apptainer the job measured, and what its workload saw inside; else None
        self.container: pulumi.Output[Optional[dict]] = doc.apply(lambda d: d.get("container"))
        self.register_outputs({"job_id": self.job_id, "state": self.state, "metrics": self.metrics})

    def summary(self) -> pulumi.Output[dict]:
        """What the stack exports about the job itself."""
        keys = ("job_id", "state", "exit_code", "node", "elapsed_seconds", "submit_to_start_seconds", "gres_env",
                "log_path", "container")
        return pulumi.Output.all(*(getattr(self, k) for k in keys)).apply(
            lambda v: {k: x for k, x in zip(keys, v) if k != "container" or x is not None})


def _local_env(conn: dict) -> dict:
    if conn.get("kind") != "local":
        raise ValueError(f"the SLURM job resource was declared for local submission, but the connection is "
                         f"{conn.get('kind')!r}: build WorkloadContext with submit_via='ssh'")
    return {k: str(v) for k, v in (conn.get("env") or {}).items()}


def workload_command(python: str, code_dir: str, module: str, args: str, shared_root: str,
                     container: Optional[ContainerRun] = None, tasks: int = 1, gpus: int = 0) -> str:
    """The job's command line for a workload entry point: `python -m workloads.<task> ...`, run from the
    staged code, inside the Apptainer image when `hpc.container` is set (checked first, its facts recorded by the
    workload's own process: stacks/slurm/container.py), and under `srun` (one process a task, which is how multi-GPU
    jobs find their rank) when the job has several tasks."""
    run = f"{python} -m {module} {args}"
    checks = ""
    if container:
        inside = " ".join(shlex.quote(a) for a in container.exec_argv(shared_root, code_dir, gpus))
        run = f"{inside} {python} -m workloads.container_facts --out $JOB_DIR/container.json {module} {args}"
        checks = container.lines(shared_root) + "\n"
    if tasks > 1:
        run = f"srun --ntasks={tasks} --kill-on-bad-exit=1 {run}"
    return f"{checks}cd {shlex.quote(code_dir)}\nexport PYTHONPATH={shlex.quote(code_dir)}\n{run}"


@dataclass
class WorkloadContext:
    """Everything a workload job needs to know about where it runs; built once per stack."""

    connection: pulumi.Input[dict]
    cluster_id: pulumi.Input[str]
    root: pulumi.Output[str]  # this stack's folder on shared storage
    code_dir: pulumi.Output[str]  # staged workloads/ package lives in code_dir/workloads
    python: str
    partition: str
    gpus_per_node: int
    cpus_per_task: int
    container: pulumi.Input[Optional[ContainerRun]] = None  # hpc.container: the image and how to exec in it
    code_version: str = ""  # hash of the staged code: new code re-runs the jobs
    submit_via: str = "ssh"  # "local" where the connection is local (hpc.embedded.submitVia: local)
    login_python: str = "python3"
    after: list = field(default_factory=list)  # resources every job waits for (the platform checks)
    made: list = field(default_factory=list)  # every job made so far, in order (shared by its copies)

    def job(self, name: str, module: str, args: pulumi.Input[str], gpus: int = 0, cpus: Optional[int] = None,
            tasks: int = 1, time_limit_minutes: int = 30, data: Optional[list] = None,
            opts: Optional[pulumi.ResourceOptions] = None) -> SbatchJob:
        """One workload job; `data` lists the digests of the staged data it reads (new data re-runs it)."""
        command = pulumi.Output.all(self.code_dir, self.root, args, self.container).apply(
            lambda v: workload_command(self.python, v[0], module, v[2], v[1], v[3], tasks,
                                       gpus if self.gpus_per_node else 0))
        job = SbatchJob(name, SbatchJobArgs(
            connection=self.connection, cluster_id=self.cluster_id, job_root=self.root.apply(lambda r: f"{r}/jobs"),
            command=command, submit_script=pulumi.Output.from_input(self.code_dir).apply(
                lambda d: f"{d.rstrip('/')}/{SUBMIT_SCRIPT}"),
            partition=self.partition, gres=f"gpu:{gpus}" if gpus and self.gpus_per_node else None,
            ntasks=tasks, cpus_per_task=cpus or 1, time_limit_minutes=time_limit_minutes,
            code_version=self.code_version, data=list(data or []), submit_via=self.submit_via,
            login_python=self.login_python),
            pulumi.ResourceOptions.merge(pulumi.ResourceOptions(depends_on=list(self.after)), opts))
        self.made.append(job)
        return job
