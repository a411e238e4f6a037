"""The load generator (workloads/serving/load_generator.py) against fake predictors: tiny HTTP servers made here,
each in its own process, whose readiness endpoint always says 200 while their inference answers are chosen by the
test. A predictor that answers every inference with a fast 500 must show as down (uptime well below 1, error
rate 1, no latency figures), a 200 without the answer is a failure too, and the malformed-request figures are
measured."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workloads.serving import load_generator

FAKE_PREDICTOR = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE, FAIL_EVERY = sys.argv[1], int(sys.argv[2])
calls = [0]


def answer(path, body):
    if MODE == "fast-500":
        return 500, '{"error": "boom"}'
    if MODE == "no-answer":
        return 200, '{"nothing": "here"}'
    # "mnist": checks its input like the real predictor: 4xx with a message for malformed requests
    try:
        req = json.loads(body)
    except ValueError:
        return 400, '{"error": "not JSON"}'
    if not path.endswith(":predict"):
        return 422, '{"error": "V2 input is wrong"}'
    instances = req.get("instances") if isinstance(req, dict) else None
    if not isinstance(instances, list) or not all(isinstance(i, list) and len(i) == 784 for i in instances):
        return 400, '{"error": "instances must be 784 values"}'
    calls[0] += 1
    if FAIL_EVERY and calls[0] % FAIL_EVERY == 0:
        return 503, '{"error": "overloaded"}'
    return 200, json.dumps({"predictions": [1] * len(instances)})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def _send(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # readiness: always 200, whatever inference answers
        self._send(200, "{}")

    def do_POST(self):
        self._send(*answer(self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def serve():
    """serve(mode, fail_every=0) -> the URL of a fake predictor in its own process (as a real one is, so the load
    generator's readiness probe does not share a GIL with it)."""
    procs = []

    def start(mode: str, fail_every: int = 0) -> str:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_PREDICTOR, mode, str(fail_every)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return f"http://127.0.0.1:{int(proc.stdout.readline())}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def generate(url: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / "load.json"
    assert load_generator.main(["--url", url, "--model-name", "mnist", "--example", "mnist-v1",
                                "--stage", "users=2", "--seconds", "2", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_fast_500s_are_errors_and_downtime(serve, tmp_path):
    url = serve("fast-500")
    m = generate(url, tmp_path)
    assert m["requests"] > 20 and m["failed_requests"] == m["requests"] and m["successful_requests"] == 0
    assert m["error_rate"] == pytest.approx(1.0) and m["failures"] == m["failed_requests"]
    assert m["uptime_fraction"] < 0.5  # the readiness probe said 200 all along: it must not hide the 500s
    # by time: only the slices before the load began (locust starting) had nothing but 200s in them
    assert m["readiness_uptime_fraction"] == 1.0 and m["uptime_slices_fraction"] < 1.0
    assert m["p50_ms"] is None and m["p95_ms"] is None and m["p99_ms"] is None  # no successful request
    assert m["throughput_rps"] == 0.0 and m["status_counts"] == {"500": m["requests"]}
    stage = m["stages"][0]
    assert stage["error_rate"] == 1.0 and stage["failed_requests"] == stage["requests"] == stage["locust_requests"]
    assert stage["locust_failures"] == stage["failed_requests"]
    # and the malformed requests got 500s, not 4xx
    assert m["malformed_requests"] == 5 and m["malformed_requests_5xx"] == 5
    assert m["malformed_requests_4xx_fraction"] == 0.0 and m["malformed_requests_unanswered"] == 0


def test_a_200_without_the_answer_is_a_failure(serve, tmp_path):
    url = serve("no-answer")
    m = generate(url, tmp_path)
    assert m["requests"] > 0 and m["error_rate"] == 1.0 and m["uptime_fraction"] < 0.5
    assert "no 'predictions'" in m["stages"][0]["failure_kinds"][0]["error"]


def test_a_healthy_predictor_and_its_malformed_figures(serve, tmp_path):
    url = serve("mnist")
    m = generate(url, tmp_path)
    assert m["requests"] > 0 and m["failed_requests"] == 0 and m["error_rate"] == 0.0
    assert m["uptime_fraction"] == 1.0 and m["uptime_slices_fraction"] == 1.0
    assert m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"] and m["throughput_rps"] > 0
    assert m["malformed_requests_4xx_fraction"] == 1.0 and m["malformed_requests_5xx"] == 0
    assert m["bad_request_4xx_fraction"] == 1.0 and m["bad_request_5xx"] == 0  # the kept keys agree


def test_some_failures_count_against_latency_and_uptime_only_as_failures(serve, tmp_path):
    url = serve("mnist", fail_every=4)
    m = generate(url, tmp_path)
    assert m["error_rate"] == pytest.approx(0.25, abs=0.05)
    assert m["successful_requests"] + m["failed_requests"] == m["requests"]
    assert 0.5 < m["uptime_fraction"] < 0.95 and m["status_counts"].keys() == {"200", "503"}
    assert m["p50_ms"] is not None  # over the 200s only


def test_summary_figures_from_a_request_log():
    records = [{"start": 100.0, "ms": 10.0, "status": 200, "ok": True},
               {"start": 100.5, "ms": 30.0, "status": 200, "ok": True},
               {"start": 101.0, "ms": 1.0, "status": 500, "ok": False},
               {"start": 101.99, "ms": 10.0, "status": 200, "ok": True}]
    s = load_generator.summarize_requests(records)
    assert (s["requests"], s["successful_requests"], s["failed_requests"]) == (4, 3, 1)
    assert s["error_rate"] == 0.25 and s["p50_ms"] == 10.0 and s["p99_ms"] == 30.0 and s["max_ms"] == 30.0
    assert s["throughput_rps"] == 1.5 and s["attempted_rps"] == 2.0  # over the 2.0 s from first start to last end
    u = load_generator.uptime_figures([(100.2, True), (101.2, True), (102.2, True)], records, 100.0, 103.0)
    assert u["uptime_fraction"] == round(6 / 7, 6)
    assert u["uptime_slices_fraction"] == round(2 / 3, 6)  # the slice [101, 102) held the 500
    assert load_generator.summarize_requests([])["throughput_rps"] is None
    assert load_generator.expect_key("/v2/models/m/infer") == "outputs"
