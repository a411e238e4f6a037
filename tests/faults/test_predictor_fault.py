"""A predictor killed under load: the MNIST predictor (KServe, the workloads' environment) at a fixed request
rate from the load generator (locust), SIGKILLed mid-test and started again at once, as the stack's re-run starts
a daemon it finds dead. The load test must count the failed requests (never hide them), uptime must drop below
1, and the restart time (kill -> ready again) is measured. The model file is checked unchanged."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from tests.faults.conftest import record
from tests.integration.conftest import ROOT

PYTHON = str(ROOT / ".venv-workloads" / "bin" / "python")
MAKE_MODEL = ("import sys, torch; from workloads.mnist import Net; torch.manual_seed(0); "
              "torch.jit.script(Net().eval()).save(sys.argv[1])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _predictor(model, port, log) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "workloads.serving.mnist_predictor", "--model-name", "mnist",
                             "--storage-uri", str(model), "--http-port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, timeout: float = 120) -> float:
    started, deadline = time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {timeout} s")


def test_a_predictor_killed_under_load_counts_errors_and_restarts(tmp_path):
    model = tmp_path / "model.pt"
    subprocess.run([PYTHON, "-c", MAKE_MODEL, str(model)], cwd=ROOT, check=True, timeout=300)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    port, log = _free_port(), open(tmp_path / "predictor.log", "w")
    ready = f"http://127.0.0.1:{port}/v2/models/mnist/ready"
    first = _predictor(model, port, log)
    second = None
    try:
        _wait_ready(ready)
        load = subprocess.Popen([PYTHON, "-m", "workloads.serving.load_generator", "--url", f"http://127.0.0.1:{port}",
                                 "--model-name", "mnist", "--example", "mnist-v1", "--stage", "users=2,rate=20",
                                 "--seconds", "20", "--timeout", "5", "--out", str(tmp_path / "load.json")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # locust's start, then a few seconds of steady load
        killed_at = time.monotonic()
        os.killpg(first.pid, signal.SIGKILL)
        detect_s = _until_refused(ready) - killed_at  # what a client (or the readiness probe) sees
        first.wait()
        second = _predictor(model, port, log)
        _wait_ready(ready)
        restart_s = time.monotonic() - killed_at
        _, err = load.communicate(timeout=120)
        assert load.returncode == 0, err[-2000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    figures = json.loads((tmp_path / "load.json").read_text())
    assert figures["failed_requests"] > 0 and figures["error_rate"] > 0, figures  # counted, not hidden
    assert figures["uptime_fraction"] < 1.0 and figures["successful_requests"] > 0
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    record("MNIST predictor killed (SIGKILL) under load (20 req/s), started again at once",
           f"{figures['failed_requests']} of {figures['requests']} requests failed and were counted "
           f"(error rate {figures['error_rate']:.2%}); uptime {figures['uptime_fraction']:.2%} over the 20-s test "
           f"(target > 99.9 %: missed, as it must be); served again {restart_s:.1f} s after the kill",
           detect_s, restart_s, "none (model file sha256 unchanged)",
           failed_requests=figures["failed_requests"], requests=figures["requests"],
           uptime_fraction=figures["uptime_fraction"])


def _until_refused(url: str, timeout: float = 30) -> float:
    """The moment a request to URL first fails (the server is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
        except OSError:
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"{url} still answers {timeout} s after the kill")
