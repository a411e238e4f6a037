"""Local processes as Pulumi resources, for the embedded serving stack (MinIO, MLflow, the KServe predictors)
and the one-shot steps around them (publishing a model, registering it, a load test).

- `LocalDaemon`: create starts a long-running process in its own session (it outlives the Pulumi run), waits
  until its health URL answers 200 and records the pid, its start time and the cold start (launch -> ready);
  delete stops the whole process group (TERM, then KILL). If the process died or was replaced since the last
  `pulumi up`, diff asks for a replacement, so an up restarts it and never starts a second one.
- `LocalRun`: create runs a workload module to completion and returns the JSON it wrote; a non-zero exit fails
  `pulumi up` with the workload's own `error:` line.

Secrets (MinIO's keys) travel in `secret_env`, which is a secret output: never in argv, state or logs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider
from workloads.runtime import http_ok

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKLOADS_PYTHON = str(REPO_ROOT / ".venv-workloads" / "bin" / "python")


class ServingError(RuntimeError):
    """A serving step failed; the message says which and why, in one line where possible."""


# -- process helpers ---------------------------------------------------------------------------------------
def start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): a pid plus its start time
    names one process, even after the pid is reused. None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError, ProcessLookupError, PermissionError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: Optional[int], started: Optional[int]) -> bool:
    return bool(pid) and start_time(int(pid)) == started


def stop_group(pid: int, started: Optional[int], grace_s: float = 10.0) -> None:
    """TERM the process group that PID leads (the daemon and anything it forked), KILL what is left after grace_s."""
    if not alive(pid, started):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if start_time(pid) is None:
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)  # also reaps forked workers that ignored TERM
    except ProcessLookupError:
        pass


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def error_line(text: str) -> Optional[str]:
    """The workload's own one-line reason (`error: ...`), if it printed one."""
    found = [line.strip() for line in text.splitlines() if line.strip().startswith("error:")]
    return found[-1].removeprefix("error:").strip() if found else None


def start_daemon(props: dict) -> dict:
    """Start props['argv'] and wait for props['ready_url']; returns pid, start time and cold start."""
    name = props["name"]
    for port, key in (props.get("ports") or {}).items():
        if not port_free(int(port)):
            raise ServingError(f"{name}: port {port} on 127.0.0.1 is in use: choose another {key}")
    for d in props.get("make_dirs") or []:
        Path(d).mkdir(parents=True, exist_ok=True)
    for path, text in (props.get("files") or {}).items():  # its config files: a changed one restarts it
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    log = Path(props["log_file"])
    log.parent.mkdir(parents=True, exist_ok=True)
    if props.get("metrics_file"):
        Path(props["metrics_file"]).unlink(missing_ok=True)
    env = {**os.environ, **(props.get("env") or {}), **(props.get("secret_env") or {})}
    launched = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(props["argv"], env=env, cwd=props.get("cwd") or str(REPO_ROOT), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    started = start_time(proc.pid)
    deadline = launched + float(props.get("ready_timeout_s", 120))
    while True:
        if http_ok(props["ready_url"]):
            break
        code = proc.poll()
        if code is not None:
            tail = log_tail(str(log))
            reason = error_line(tail) or f"exited with code {code}"
            raise ServingError(f"{name} did not start: {reason}. Log {log}, last lines:\n{tail}")
        if time.perf_counter() > deadline:
            stop_group(proc.pid, started)
            raise ServingError(f"{name} not ready at {props['ready_url']} within {props.get('ready_timeout_s')} s; "
                               f"stopped it. Log {log}, last lines:\n{log_tail(str(log))}")
        time.sleep(0.05)
    cold_start = time.perf_counter() - launched
    load_metrics = {}
    if props.get("metrics_file") and Path(props["metrics_file"]).exists():
        load_metrics = json.loads(Path(props["metrics_file"]).read_text())
    return {"pid": proc.pid, "process_start": started, "cold_start_seconds": round(cold_start, 3),
            "load_metrics": load_metrics}


class _DaemonProvider(ReplacingProvider):
    def create(self, props: dict) -> CreateResult:
        outs = start_daemon(props)
        return CreateResult(id_=f"{props['name']}-{uuid.uuid4().hex[:8]}", outs={**props, **outs})

    def vanished(self, olds: dict) -> Optional[str]:
        return None if alive(olds.get("pid"), olds.get("process_start")) else "pid"  # died (a crash, a reboot)

    def delete(self, _id: str, props: dict) -> None:
        if props.get("pid"):
            stop_group(int(props["pid"]), props.get("process_start"))
        for d in props.get("remove_on_delete") or []:
            shutil.rmtree(d, ignore_errors=True)


class LocalDaemon(Resource, module="mlops", name="LocalDaemon"):
    """props: name, argv, env, secret_env, ready_url, ready_timeout_s, log_file, ports {port: config key},
    make_dirs, files {path: text} (written before it starts), remove_on_delete, metrics_file (read once ready), and
    anything that should restart it on change."""

    pid: pulumi.Output[int]
    process_start: pulumi.Output[int]
    cold_start_seconds: pulumi.Output[float]
    load_metrics: pulumi.Output[dict]

    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret_env"]))
        outs = dict.fromkeys(("pid", "process_start", "cold_start_seconds", "load_metrics"))
        super().__init__(_DaemonProvider(), name, {"secret_env": {}, **props, **outs}, opts)


# -- one-shot workload runs -------------------------------------------------------------------------------
def run_workload(props: dict) -> dict:
    """python -m MODULE ARGS... --out FILE; returns the JSON it wrote, or raises with its error line."""
    with tempfile.TemporaryDirectory(prefix="serving-run-") as tmp:
        out_file = Path(tmp) / "result.json"
        argv = [props.get("python") or WORKLOADS_PYTHON, "-m", props["module"], *props["args"], "--out", str(out_file)]
        env = {**os.environ, **(props.get("env") or {}), **(props.get("secret_env") or {})}
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=str(REPO_ROOT), capture_output=True, text=True,
                              timeout=float(props.get("timeout_s", 1800)))
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not out_file.exists():
            output = f"{proc.stdout}\n{proc.stderr}"
            reason = error_line(output) or f"exited with code {proc.returncode}"
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise ServingError(f"{props['name']} failed: {reason}" + ("" if error_line(output) else f"\n{tail}"))
        return {"result": json.loads(out_file.read_text()), "run_seconds": round(seconds, 3)}


class _RunProvider(ReplacingProvider):
    def create(self, props: dict) -> CreateResult:
        outs = run_workload(props)
        return CreateResult(id_=f"{props['name']}-{uuid.uuid4().hex[:8]}", outs={**props, **outs})



class LocalRun(Resource, module="mlops", name="LocalRun"):
    """props: name, module, args, env, secret_env, timeout_s, and whatever should re-run it when it changes
    (a model's sha256, a server's id)."""

    result: pulumi.Output[dict]
    run_seconds: pulumi.Output[float]

    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret_env"]))
        super().__init__(_RunProvider(), name, {"secret_env": {}, **props, "result": None, "run_seconds": None}, opts)


# -- the serving state folder: made first, removed last -----------------------------------------------------
class _StateDirProvider(ReplacingProvider):
    def create(self, props: dict) -> CreateResult:
        Path(props["path"]).mkdir(parents=True, exist_ok=True)
        return CreateResult(id_=props["path"], outs=props)

    def vanished(self, olds: dict) -> Optional[str]:
        return None if Path(olds["path"]).is_dir() else "path"

    def delete(self, _id: str, props: dict) -> None:
        shutil.rmtree(props["path"], ignore_errors=True)


class StateDir(Resource, module="mlops", name="StateDir"):
    """A folder that `pulumi destroy` removes with everything in it (logs included); everything else depends on it."""

    def __init__(self, name: str, path: str, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_StateDirProvider(), name, {"path": path}, opts)
