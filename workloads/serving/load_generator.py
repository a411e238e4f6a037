"""MLOPS-4.1 / 4.2 load test: locust, headless, at fixed concurrency levels and request rates, against one
predictor; P50/P95/P99, throughput and error rate per stage, plus the predictor's uptime during the test
(its readiness endpoint polled every 0.25 s by a separate probe).

    python -m workloads.serving.load_test --url http://127.0.0.1:PORT --model-name mnist --example mnist-v1 \
        --stage users=1 --stage users=8 --stage users=4,rate=50 --seconds 10 --out load.json

(or --path /v1/models/NAME:predict --body body.json for any other request). Before the load, a few malformed
requests (not JSON, wrong shape, wrong keys) must each be answered 4xx with a message: `bad_requests`.

A stage `users=U` is a closed loop (each user sends its next request when the previous answered); `users=U,rate=R`
holds R requests/s in total (R/U per user, locust's constant_throughput). Headline figures: the latencies of the
first fixed-rate stage (the SLA load; the last stage when none has a rate), the highest throughput of any stage,
and the error rate over all requests of all stages. A stage never ends the test early: errors are data.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from workloads.metrics_io import write_json_atomic

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
EXAMPLES = ("mnist-v1", "mnist-v2", "llm-v1", "llm-v2")


def digit_image() -> list[float]:
    """A 28x28 image (784 floats in [0, 1]) of a vertical stroke, a plausible '1'; latency does not depend on it."""
    return [1.0 if 12 <= col <= 15 and 4 <= row <= 23 else 0.0 for row in range(28) for col in range(28)]


def example_request(example: str, model_name: str, max_new_tokens: int = 8) -> tuple[str, dict]:
    """(path, body) of one inference request of the given kind."""
    prompt = "What is the capital of France?"
    if example == "mnist-v1":
        return f"/v1/models/{model_name}:predict", {"instances": [digit_image()]}
    if example == "mnist-v2":
        return f"/v2/models/{model_name}/infer", {"inputs": [
            {"name": "image", "shape": [1, 784], "datatype": "FP32", "data": digit_image()}]}
    if example == "llm-v1":
        return f"/v1/models/{model_name}:predict", {"instances": [{"prompt": prompt, "max_new_tokens": max_new_tokens}]}
    if example == "llm-v2":
        return f"/v2/models/{model_name}/infer", {"inputs": [
            {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]},
            {"name": "max_new_tokens", "shape": [1], "datatype": "INT32", "data": [max_new_tokens]}]}
    raise ValueError(f"unknown example {example!r}; one of {EXAMPLES}")


def bad_requests(model_name: str, kind: str) -> list[tuple[str, str, bytes]]:
    """(case, path, body) of malformed requests that must be answered 4xx."""
    v1, v2 = f"/v1/models/{model_name}:predict", f"/v2/models/{model_name}/infer"
    wrong_shape = {"instances": [[0.5, 0.5, 0.5]]} if kind == "mnist" else {"instances": [{"prompt": 42}]}
    return [("not JSON", v1, b"{this is not json"),
            ("no instances", v1, json.dumps({"inputs": "x"}).encode()),
            ("wrong instance shape or type", v1, json.dumps(wrong_shape).encode()),
            ("V2 without inputs", v2, json.dumps({"outputs": []}).encode()),
            ("V2 wrong datatype", v2, json.dumps({"inputs": [
                {"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]}]}).encode())]


def probe_bad_requests(url: str, model_name: str, kind: str) -> list[dict]:
    results = []
    for case, path, body in bad_requests(model_name, kind):
        req = urllib.request.Request(url.rstrip("/") + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            status, text = None, f"{type(exc).__name__}: {exc}"
        results.append({"case": case, "status": status, "message": text[:200]})
    return results


@dataclass(frozen=True)
class Stage:
    users: int
    rate: float = 0.0  # total requests/s; 0 = closed loop

    @property
    def name(self) -> str:
        return f"users={self.users}" + (f",rate={self.rate:g}" if self.rate else "")


def parse_stage(text: str) -> Stage:
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    unknown = set(fields) - {"users", "rate"}
    if unknown or "users" not in fields:
        raise argparse.ArgumentTypeError(f"stage must be users=N[,rate=R] (got {text!r})")
    stage = Stage(int(fields["users"]), float(fields.get("rate", 0)))
    if stage.users < 1 or stage.rate < 0:
        raise argparse.ArgumentTypeError(f"stage needs users >= 1 and rate >= 0 (got {text!r})")
    return stage


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def percentile(response_times: dict, count: int, fraction: float) -> Optional[float]:
    """Locust's own method (locust.stats.calculate_response_time_percentile) on its response-time histogram
    (rounded ms -> count): the smallest bucket below which at least `fraction` of the requests fall."""
    if not count:
        return None
    wanted = int(count * fraction)
    processed = 0
    for bucket in sorted(response_times, key=float, reverse=True):
        processed += response_times[bucket]
        if count - processed <= wanted:
            return float(bucket)
    return None


def read_aggregate(stats_json: Path) -> dict:
    """Totals and percentiles over every entry of locust's --json-file (its final stats)."""
    entries = json.loads(stats_json.read_text())
    requests = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    times: dict = {}
    for e in entries:
        for bucket, n in e["response_times"].items():
            times[bucket] = times.get(bucket, 0) + n
    answered = sum(times.values())
    started = min((e["start_time"] for e in entries), default=0)
    last = max((e["last_request_timestamp"] or 0 for e in entries), default=0)
    total_ms = sum(e["total_response_time"] for e in entries)
    return {"requests": requests, "failures": failures,
            "error_rate": round(failures / requests, 6) if requests else None,
            "p50_ms": percentile(times, answered, 0.50), "p95_ms": percentile(times, answered, 0.95),
            "p99_ms": percentile(times, answered, 0.99),
            "mean_ms": round(total_ms / answered, 3) if answered else None,
            "max_ms": max((e["max_response_time"] or 0 for e in entries), default=None),
            "throughput_rps": round(requests / (last - started), 3) if requests and last > started else None}


def read_failures(failures_csv: Path) -> list[dict]:
    if not failures_csv.exists():
        return []
    with failures_csv.open(newline="") as f:
        return [{"error": r["Error"][:300], "occurrences": int(r["Occurrences"])} for r in csv.DictReader(f)][:5]


class ReadinessProbe(threading.Thread):
    """Polls URL every interval; uptime = answered 200 / probes."""

    def __init__(self, url: str, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.interval_s = url, interval_s
        self.ok = self.total = 0
        self.failures: list[str] = []  # the first few reasons, for the report
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.total += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    self.ok += resp.status == 200
            except Exception as exc:  # refused, reset, timeout, 5xx: all count as down
                if len(self.failures) < 5:
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.ok / self.total if self.total else 0.0


def run_stage(url: str, path: str, body: Path, stage: Stage, seconds: float, timeout_s: float, workdir: Path) -> dict:
    prefix = workdir / stage.name.replace(",", "_").replace("=", "")
    env = {**os.environ, "SERVING_BODY_FILE": str(body), "SERVING_PATH": path,
           "SERVING_RATE_PER_USER": str(stage.rate / stage.users if stage.rate else 0),
           "SERVING_TIMEOUT_S": str(timeout_s)}
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
            "-u", str(stage.users), "-r", str(stage.users), "-t", f"{seconds:g}s", "--stop-timeout", "5",
            "--csv", str(prefix), "--json-file", str(prefix), "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
            "--skip-log-setup"]
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited {proc.returncode}: {proc.stderr[-2000:]}")
    result = {"stage": stage.name, "users": stage.users, "target_rps": stage.rate or None,
              "seconds": round(time.perf_counter() - started, 2), **read_aggregate(Path(f"{prefix}.json")),
              "failure_kinds": read_failures(Path(f"{prefix}_failures.csv"))}
    return result


def run(url: str, path: str, body: Path, stages: list[Stage], seconds: float, ready_path: str,
        timeout_s: float = 30.0, bad: Optional[list[dict]] = None) -> dict:
    probe = ReadinessProbe(url.rstrip("/") + ready_path)
    probe.start()
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        results = [run_stage(url, path, body, s, seconds, timeout_s, Path(tmp)) for s in stages]
    uptime = probe.stop()
    sla = next((r for r in results if r["target_rps"]), results[-1])
    requests = sum(r["requests"] for r in results)
    failures = sum(r["failures"] for r in results)
    throughputs = [r["throughput_rps"] for r in results if r["throughput_rps"] is not None]
    return {"tool": f"locust {importlib.metadata.version('locust')}", "url": url, "path": path, "stage_seconds": seconds,
            "stages": results, "sla_stage": sla["stage"],
            "p50_ms": sla["p50_ms"], "p95_ms": sla["p95_ms"], "p99_ms": sla["p99_ms"],
            "throughput_rps": max(throughputs) if throughputs else None,
            "requests": requests, "failures": failures, "error_rate": round(failures / requests, 6) if requests else None,
            "uptime_fraction": round(uptime, 6), "readiness_probes": probe.total,
            "readiness_failures": probe.failures,
            **bad_request_summary(bad),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def bad_request_summary(bad: Optional[list[dict]]) -> dict:
    if not bad:
        return {}
    answered_4xx = [b for b in bad if b["status"] is not None and 400 <= b["status"] < 500 and b["message"]]
    return {"bad_requests": bad, "bad_request_4xx_fraction": round(len(answered_4xx) / len(bad), 3),
            "bad_request_5xx": sum(1 for b in bad if b["status"] is None or b["status"] >= 500)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="locust load test of one predictor at fixed concurrency and rates")
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--model-name", help="the predictor's model name (with --example)")
    p.add_argument("--example", choices=EXAMPLES, help="a built-in request (and the malformed-request probe)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="for the llm examples")
    p.add_argument("--path", help="inference path, e.g. /v1/models/mnist:predict (without --example)")
    p.add_argument("--body", type=Path, help="JSON request body file (without --example)")
    p.add_argument("--stage", action="append", type=parse_stage, required=True)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each stage")
    p.add_argument("--ready-path", default="/v2/health/ready")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    bad = None
    with tempfile.TemporaryDirectory(prefix="load-body-") as tmp:
        if args.example:
            if not args.model_name:
                p.error("--example needs --model-name")
            path, body = example_request(args.example, args.model_name, args.max_new_tokens)
            body_file = Path(tmp) / "body.json"
            body_file.write_text(json.dumps(body))
            bad = probe_bad_requests(args.url, args.model_name, args.example.split("-")[0])
        elif args.path and args.body:
            path, body_file = args.path, args.body
        else:
            p.error("give --example (with --model-name) or --path and --body")
        result = run(args.url, path, body_file, args.stage, args.seconds, args.ready_path, args.timeout, bad)
    if args.out:
        write_json_atomic(args.out, result)
    print({k: v for k, v in result.items() if k != "stages"}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
