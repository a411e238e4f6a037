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
