"""The fault suite's stack and its record. Each fault is injected for real into a small embedded stack (one
storage task: two short sbatch jobs through the ssh login node), and each test writes what happened, how long it
took to detect and to recover, and what was lost, into reports/faults/results.json, from which
tools/reliability_table.py renders the table of docs/reliability.md.

FAULTS_STACK (default itest-faults) and FAULTS_BASE_PORT / FAULTS_SERVING_PORT (22817 / 22900) name the stack and
its ports, so the suite can run beside other stacks."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.integration.conftest import ROOT, STATE_ROOT, pulumi_env, run, stack, wait_for_no_leftovers

STACK = os.environ.get("FAULTS_STACK", "itest-faults")
BASE_PORT = int(os.environ.get("FAULTS_BASE_PORT", "22817"))
SERVING_PORT = int(os.environ.get("FAULTS_SERVING_PORT", "22900"))
PORTS = [BASE_PORT, BASE_PORT + 1, BASE_PORT + 2]
RESULTS = ROOT / "reports" / "faults" / "results.json"
CONFIG = f"""# Written by tests/faults (removed after the suite): the embedded default, one storage task.
config:
  mlops-validation:tasks: [storage]
  mlops-validation:storage: {{sizeMb: 64}}
  mlops-validation:hpc:
    embedded: {{basePort: {BASE_PORT}, submitVia: ssh}}
  mlops-validation:serving: {{basePort: {SERVING_PORT}}}
"""


class Stack:
    """The fault suite's stack: its config file, its cluster's state folder, and the ways to hurt it."""

    name = STACK
    state_dir = STATE_ROOT / STACK
    config = ROOT / f"Pulumi.{STACK}.yaml"

    def slurm(self, *argv: str) -> str:
        env = {**os.environ, "SLURM_CONF": str(self.state_dir / "etc" / "slurm.conf")}
        proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30)
        return proc.stdout

    def jobs(self) -> dict[str, str]:
        """job id -> state of every job SLURM still has (an empty dict when slurmctld is down)."""
        try:
            out = self.slurm("squeue", "-h", "-o", "%i %T")
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job_state(self, job_id: str) -> str:
        """SLURM's last word on a job (the controller keeps ended jobs MinJobAge = 300 s)."""
        out = self.slurm("scontrol", "show", "job", "-o", job_id)
        found = re.search(r"JobState=(\S+)", out)
        return found.group(1) if found else "unknown to slurmctld"

    def daemon_pid(self, daemon: str) -> int:
        return int((self.state_dir / "run" / f"{daemon}.pid").read_text().split()[0])

    def start_up(self) -> subprocess.Popen:
        """`tools/stack.sh up` as `make up` runs it, in its own process group (as a terminal's foreground job)."""
        log = open(ROOT / "reports" / "faults" / f"up-{time.monotonic_ns()}.log", "w+")
        proc = subprocess.Popen(["tools/stack.sh", "up", STACK], cwd=ROOT, env=pulumi_env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        proc.log.seek(0)
        return proc.log.read()

    def wait_for_running_job(self, proc: subprocess.Popen, timeout: float = 600) -> str:
        """The id of the first job SLURM runs during this `up` (polled every 0.1 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"pulumi up ended ({proc.returncode}) before any job ran:\n" \
                                        f"{self.output(proc)[-3000:]}"
            running = [job for job, state in self.jobs().items() if state == "RUNNING"]
            if running:
                return running[0]
            time.sleep(0.1)
        raise AssertionError(f"no job ran within {timeout} s")

    def pending_operations(self) -> list:
        export = json.loads(run(["pulumi", "stack", "export", "--stack", STACK], check=True).stdout)
        return export.get("deployment", {}).get("pending_operations") or []

    def orphans(self) -> list[str]:
        """Processes of an interrupted `pulumi up` still alive: pulumi, its plugins and providers (all started in
        this worktree), and the submit scripts of this stack's jobs (started by the login node's sshd)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(proc / "cwd")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                continue
            if (cwd == str(ROOT) and "pulumi" in cmd) or (str(self.state_dir) in cmd and "slurm_submit" in cmd):
                found.append(f"pid {proc.name}: {cmd.strip()[:160]}")
        return found


def interrupt(proc: subprocess.Popen, signals: tuple = (signal.SIGINT, signal.SIGKILL), gap_s: float = 3.0) -> None:
    """Ctrl-C to the whole foreground process group, then (a user who gives up waiting) SIGKILL."""
    for i, sig in enumerate(signals):
        if proc.poll() is not None:
            break
        if i:
            time.sleep(gap_s)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
    proc.wait(timeout=120)


def record(fault: str, happened: str, detect_s, recover_s, data_lost: str, **extra) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"faults": []}
    results["faults"] = [r for r in results["faults"] if r["fault"] != fault]
    results["faults"].append({"fault": fault, "happened": happened,
                              "detect_seconds": None if detect_s is None else round(detect_s, 1),
                              "recover_seconds": None if recover_s is None else round(recover_s, 1),
                              "data_lost": data_lost, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              **extra})
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


@pytest.fixture(scope="session")
def fault_stack():
    """The stack, its config written for the session; destroyed and removed at the end, nothing left."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    Stack.config.write_text(CONFIG)
    started = time.monotonic()
    try:
        yield Stack()
    finally:
        down = stack("down", STACK, timeout=600)
        run(["pulumi", "stack", "rm", "--yes", "--force", STACK])
        Stack.config.unlink(missing_ok=True)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"faults": []}
        results["suite_seconds"] = round(time.monotonic() - started, 1)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        assert down.returncode == 0, f"pulumi destroy failed:\n{down.stdout[-3000:]}"
        left = wait_for_no_leftovers([str(Stack.state_dir), str(STATE_ROOT / f"{STACK}-serving")], PORTS)
        assert not left, f"left running after pulumi destroy: {left}"


# -- the serving services' faults (test_store_faults.py) ------------------------------------------------------------
class Relay:
    """A TCP relay on a free loopback port in front of a real server: the network between a client and it. It
    forwards bytes as they come; a `hold` rule stops one connection at a chosen point (so that the server is killed
    exactly there, not by luck of timing), and `closed` makes it reset every new connection (what a client of a dead
    server sees) until opened again. It records when each connection came."""

    def __init__(self, upstream_port: int):
        import socket
        import threading

        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[float] = []  # monotonic time of each accepted connection
        self.held = threading.Event()  # a hold rule fired: the connection is stopped there
        self.release = threading.Event()  # set by the test once the server is killed: the held connection is reset
        self.closed = False
        # callable(direction "up"/"down", {"up": bytes, "down": bytes} of the connection so far) -> None, or how
        # many bytes of that direction's stream to forward before holding it
        self.rule = None
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import struct
        import threading

        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(time.monotonic())
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            upstream = None
            if not self.closed:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    upstream = None
            if upstream is None:
                client.close()  # the server is gone: the client's connection is reset
                continue
            state = {"up": b"", "down": b""}
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pipe, args=(src, dst, direction, state, client, upstream),
                                 daemon=True).start()

    def _pipe(self, src, dst, direction, state, client, upstream) -> None:
        import socket

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.rule is not None:
                    state[direction] += data
                    cut = self.rule(direction, state)
                    if cut is not None:  # forward the stream up to byte CUT, then hold until the server is killed
                        self.rule = None
                        sent = len(state[direction]) - len(data)
                        if cut > sent:
                            dst.sendall(state[direction][sent:cut])
                        self.held.set()
                        self.release.wait(120)
                        break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):  # shutdown first: it wakes the other direction's recv (close alone does not)
            for end in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
                try:
                    end()
                except OSError:
                    pass

    def retries_after(self, t: float) -> Optional[float]:
        """When the client first connected again after T (it noticed the fault and retried)."""
        later = [c for c in self.connections if c > t]
        return later[0] if later else None

    def close(self) -> None:
        self._stop = True
        self.release.set()
        self.listener.close()


def declared_serving(state_dir: Path, model: Path) -> dict:
    """The embedded default's serving services as the stack declares them (Pulumi mocks give the generated keys):
    MinIO, MLflow, MLOPS-4.1's model publication and MLOPS-5.1's registration, each a props dict that
    stacks/local/process.py's start_daemon / run_workload (the stack's own functions) run for real, on free
    loopback ports. The mocks and their records are tests/unit/test_mlflow_auth.py's."""
    import hashlib

    import pulumi

    from tests.ports import closed_port
    from tests.unit.test_mlflow_auth import DAEMONS, RUNS, _Mocks, _plain

    class Mocks(_Mocks):
        def new_resource(self, args):
            name, outs = super().new_resource(args)
            if "module" in outs:  # a step's result, as far as the declarations after it read it
                outs["result"] = {"uri": "s3://models/declared-only"}
            return name, outs

    pulumi.runtime.set_mocks(Mocks(), project="mlops-validation", stack="faults-serving", preview=False)
    from stacks.local.minio import MinioServer, MinioServerArgs
    from stacks.local.mlflow import (AliasResolution, MlflowServer, MlflowServerArgs, ModelRegistration,
                                     ModelRegistrationArgs)
    from stacks.local.model_server import Predictor, PredictorArgs

    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    minio_port, mlflow_port = closed_port(), closed_port()

    @pulumi.runtime.test
    def build():
        minio = MinioServer("fm", MinioServerArgs(state_dir=str(state_dir), port=minio_port))
        server = MlflowServer("fs", MlflowServerArgs(state_dir=str(state_dir), port=mlflow_port, minio=minio))
        Predictor("fp", PredictorArgs(kind="mnist", model_name="mnist", minio=minio, state_dir=str(state_dir),
                                      port=closed_port(), source=str(model), source_digest=digest))
        registration = ModelRegistration("fr", ModelRegistrationArgs(server=server, model_path=str(model),
                                                                     model_sha256=digest))
        AliasResolution("fa", server, registration)
        return registration.result

    build()
    return {"minio": _plain(DAEMONS["fm-daemon"]), "buckets": _plain(RUNS["fm-buckets"]),
            "mlflow": _plain(DAEMONS["fs-daemon"]), "publish": _plain(RUNS["fp-publish"]),
            "register": _plain(RUNS["fr-run"]), "resolve": _plain(RUNS["fa-run"]), "sha256": digest, "minio_port": minio_port,
            "mlflow_port": mlflow_port}
