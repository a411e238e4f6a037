"""Integration fixtures: a real `pulumi up` of the throwaway stack `itest` (the embedded default on other
ports), its outputs for the acceptance tests, and at the end `pulumi destroy` and a check that nothing is
left running. Set STACK_OUTPUTS=path/to/outputs.json to run the acceptance tests on a stack already up
(a site's), without bringing one up here.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ITEST = "itest"
STATE_ROOT = Path("/tmp/mlops-validation")
# Test stacks listen below 32768: above it is Linux's ephemeral range, where any outgoing connection of the machine
# may hold a port for a while (a stack on 36837 once failed its port check so).


def pulumi_env() -> dict:
    """The Makefile's Pulumi environment, so the tests also run under a bare `pytest`."""
    env = dict(os.environ)
    env["PATH"] = f"{ROOT}/.tools/bin:{ROOT}/.venv/bin:{env.get('PATH', '')}"
    env.setdefault("PYTHONPATH", str(ROOT))
    env.setdefault("PULUMI_HOME", f"{ROOT}/.tools/pulumi-home")
    env.setdefault("PULUMI_BACKEND_URL", f"file://{ROOT}/.pulumi-state")
    env.setdefault("PULUMI_CONFIG_PASSPHRASE", "mlops-validation-dev-only")
    env.update(PULUMI_SKIP_UPDATE_CHECK="true", PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true", DO_NOT_TRACK="1")
    return env


def run(argv: list[str], timeout: float = 1800, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=ROOT, env=pulumi_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def stack(action: str, name: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return run(["tools/stack.sh", action, name], timeout=timeout)


def outputs(name: str) -> dict:
    return json.loads((ROOT / "reports" / name / "outputs.json").read_text())


class TempStack:
    """A stack whose Pulumi.<name>.yaml exists only for one test; always destroyed and removed."""

    def __init__(self, name: str, config_yaml: str):
        self.name, self.file = name, ROOT / f"Pulumi.{name}.yaml"
        self.file.write_text(config_yaml)

    def set_secret(self, key: str, value: str) -> None:
        run(["pulumi", "stack", "select", "--create", "--secrets-provider", "passphrase", self.name], check=True)
        proc = subprocess.run(["pulumi", "config", "set", "--secret", "--stack", self.name, key],
                              input=value, cwd=ROOT, env=pulumi_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def close(self) -> None:
        stack("down", self.name, timeout=600)
        run(["pulumi", "stack", "rm", "--yes", "--force", self.name])
        self.file.unlink(missing_ok=True)


def leftovers(state_dirs: list[str], ports: list[int]) -> list[str]:
    """Processes still running from these clusters, and ports still listening."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(d in cmd for d in state_dirs):
            found.append(f"pid {proc.name}: {cmd.strip()}")
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    for port in ports:
        if f"127.0.0.1:{port} " in listening or f":{port} " in listening:
            found.append(f"port {port} still listening")
    return found


def wait_for_no_leftovers(state_dirs: list[str], ports: list[int], seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        found = leftovers(state_dirs, ports)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


ITEST_PORTS = [26817, 26818, 26819]
ITEST_PORTS += list(range(26900, 26905))  # serving: MinIO (+console), MLflow, MNIST, LLM predictors
ITEST_PORTS += list(range(26950, 26954))  # monitoring: Prometheus, Alertmanager, node and SLURM exporters


@pytest.fixture(scope="session")
def itest_stack():
    """`pulumi up` of the itest stack; destroyed at the end, and then nothing of it may be left."""
    if os.environ.get("STACK_OUTPUTS"):
        yield None
        return
    config_file = ROOT / f"Pulumi.{ITEST}.yaml"
    config_text = config_file.read_text()  # Pulumi adds the stack's encryption salt to it; put it back after
    started = time.monotonic()
    up = stack("up", ITEST)
    print(f"\n[itest] pulumi up took {time.monotonic() - started:.1f} s")
    try:
        assert up.returncode == 0, f"pulumi up of {ITEST} failed:\n{up.stdout[-6000:]}\n{up.stderr[-3000:]}"
        yield outputs(ITEST)
    finally:
        down = stack("down", ITEST, timeout=600)
        run(["pulumi", "stack", "rm", "--yes", "--force", ITEST])
        config_file.write_text(config_text)
        assert down.returncode == 0, f"pulumi destroy failed:\n{down.stdout[-4000:]}"
        left = wait_for_no_leftovers([str(STATE_ROOT / ITEST)], ITEST_PORTS)
        assert not left, f"left running after pulumi destroy: {left}"
        assert not (STATE_ROOT / ITEST).exists(), "state folder left behind"
        assert not (STATE_ROOT / f"{ITEST}-serving").exists(), "serving state folder left behind"
        assert not (STATE_ROOT / f"{ITEST}-monitoring").exists(), "monitoring state folder left behind"


@pytest.fixture(scope="session")
def stack_outputs(itest_stack) -> dict:
    path = os.environ.get("STACK_OUTPUTS")
    return json.loads(Path(path).read_text()) if path else itest_stack
