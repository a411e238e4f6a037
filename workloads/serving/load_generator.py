"""MLOPS-4.1 / 4.2 load generator: locust, headless, at fixed concurrency levels and request rates, against one
predictor; per stage and overall: P50/P95/P99 of the successful requests, throughput of correct answers, the
failed requests and error rate, and the predictor's uptime during the test.

    python -m workloads.serving.load_generator --url http://127.0.0.1:PORT --model-name mnist --example mnist-v1 \
        --stage users=1 --stage users=8 --stage users=4,rate=50 --seconds 10 --out load.json

(or --path /v1/models/NAME:predict --body body.json for any other request). Before the load, a few malformed
requests (not JSON, wrong shape, wrong keys) are sent; each must be answered 4xx with a message:
`malformed_requests_4xx_fraction` (1.0 when all are) and `malformed_requests_5xx` (how many got a 5xx).

A stage `users=U` is a closed loop (each user sends its next request when the previous answered); `users=U,rate=R`
holds R requests/s in total (R/U per user, locust's constant_throughput). A request succeeds only when the
predictor answered correctly: a 2xx whose JSON body holds `predictions` (V1) or `outputs` (V2) (--expect-key).
Latencies (P50/P95/P99, mean, max) are over the successful requests only; failed requests are their own figures
(`failed_requests`, `error_rate`, `status_counts`), and `throughput_rps` counts correct answers per second
(`attempted_rps` counts every request). Headline figures: the latencies of the first fixed-rate stage (the SLA
load; the last stage when none has a rate), the highest throughput of any stage, and the error rate over all
requests of all stages. A stage never ends the test early: errors are data.

Uptime: the predictor's readiness endpoint is polled every 0.25 s by a separate probe during the whole test, and
`uptime_fraction` = correct outcomes / all outcomes over the probes AND the inference requests (request-based
availability): a predictor that says "ready" but answers every inference with a 500 is down, not up.
`uptime_slices_fraction` is the time-based view: the share of 1-s slices in which every outcome was correct (a slice
with no outcome at all counts as down); `readiness_uptime_fraction` is the probe alone.
"""
from __future__ import annotations

import argparse
import collections
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
from typing import Optional, Sequence

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


def expect_key(path: str) -> str:
    """The key a correct KServe answer holds: V1 :predict -> predictions, V2 /infer -> outputs ('' otherwise)."""
    if path.endswith(":predict"):
        return "predictions"
    if path.endswith("/infer"):
        return "outputs"
    return ""


def percentile(response_times: dict, count: int, fraction: float) -> Optional[float]:
    """Locust's own method (locust.stats.calculate_response_time_percentile) on a response-time histogram
    (ms -> count): the smallest bucket below which at least `fraction` of the requests fall."""
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
    """Totals and percentiles over every entry of locust's --json-file (its final stats; percentiles over all
    requests, failed ones included): kept as locust's own cross-check of the request log's counts."""
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


def read_request_log(path: Path) -> list[dict]:
    """The locustfile's per-request outcomes: {start (epoch s), ms, status, ok, error}."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize_requests(records: Sequence[dict]) -> dict:
    """A stage's figures from its requests: latencies over the successful ones only, failures on their own."""
    ok = [r for r in records if r["ok"]]
    failed = len(records) - len(ok)
    latencies = collections.Counter(round(float(r["ms"]), 3) for r in ok)
    window = None
    if records:
        first = min(r["start"] for r in records)
        last = max(r["start"] + r["ms"] / 1000 for r in records)
        window = last - first if last > first else None
    return {
        "requests": len(records),
        "successful_requests": len(ok),
        "failed_requests": failed,
        "failures": failed,
        "error_rate": round(failed / len(records), 6) if records else None,
        "p50_ms": percentile(latencies, len(ok), 0.50), "p95_ms": percentile(latencies, len(ok), 0.95),
        "p99_ms": percentile(latencies, len(ok), 0.99),
        "mean_ms": round(sum(r["ms"] for r in ok) / len(ok), 3) if ok else None,
        "max_ms": max((r["ms"] for r in ok), default=None),
        "throughput_rps": round(len(ok) / window, 3) if window else (0.0 if records else None),
        "attempted_rps": round(len(records) / window, 3) if window else None,
        "status_counts": {str(k): v for k, v in sorted(collections.Counter(r["status"] for r in records).items())},
    }


def read_failures(failures_csv: Path) -> list[dict]:
    if not failures_csv.exists():
        return []
    with failures_csv.open(newline="") as f:
        return [{"error": r["Error"][:300], "occurrences": int(r["Occurrences"])} for r in csv.DictReader(f)][:5]


class ReadinessProbe(threading.Thread):
    """Polls URL every interval; each probe's outcome (start time, answered 200) is kept for the uptime figures."""

    def __init__(self, url: str, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.interval_s = url, interval_s
        self.ok = self.total = 0
        self.outcomes: list[tuple[float, bool]] = []
        self.failures: list[str] = []  # the first few reasons, for the report
        self.started_at = self.stopped_at = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        self.started_at = time.time()
        while not self._stop_event.is_set():
            t = time.time()
            up = False
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    up = resp.status == 200
            except Exception as exc:  # refused, reset, timeout, 5xx: all count as down
                if len(self.failures) < 5:
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            self.total += 1
            self.ok += up
            self.outcomes.append((t, up))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.stopped_at = time.time()
        return self.ok / self.total if self.total else 0.0


def uptime_figures(probes: Sequence[tuple[float, bool]], requests: Sequence[dict], start: Optional[float],
                   end: Optional[float], slice_s: float = 1.0) -> dict:
    """uptime_fraction: correct outcomes / outcomes, probes and inference requests together.
    uptime_slices_fraction: share of the whole `slice_s` slices of [start, end) whose outcomes were all correct
    (an empty slice is down: nothing answered in it)."""
    outcomes = list(probes) + [(r["start"] + r["ms"] / 1000, bool(r["ok"])) for r in requests]
    fraction = sum(ok for _, ok in outcomes) / len(outcomes) if outcomes else 0.0
    slices_fraction = None
    if start is not None and end is not None and end > start:
        n = max(1, int((end - start) / slice_s))  # whole slices; a last partial one joins the one before
        seen, bad = [False] * n, [False] * n
        for t, ok in outcomes:
            i = min(n - 1, max(0, int((t - start) / slice_s)))
            seen[i] = True
            bad[i] = bad[i] or not ok
        slices_fraction = round(sum(s and not b for s, b in zip(seen, bad)) / n, 6)
    return {"uptime_fraction": round(fraction, 6), "uptime_outcomes": len(outcomes),
            "uptime_slices_fraction": slices_fraction, "uptime_slice_seconds": slice_s}


def locust_command(url: str, path: str, body: Path, stage: Stage, seconds: float, timeout_s: float, prefix: Path,
                   expect: str = "") -> tuple[list[str], dict, Path]:
    """locust's command line and environment for one stage, and the file its request log goes to."""
    request_log = Path(f"{prefix}_requests.jsonl")
    env = {**os.environ, "SERVING_BODY_FILE": str(body), "SERVING_PATH": path,
           "SERVING_RATE_PER_USER": str(stage.rate / stage.users if stage.rate else 0),
           "SERVING_TIMEOUT_S": str(timeout_s), "SERVING_EXPECT_KEY": expect, "SERVING_REQUEST_LOG": str(request_log)}
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
            "-u", str(stage.users), "-r", str(stage.users), "-t", f"{seconds:g}s", "--stop-timeout", "5",
            "--csv", str(prefix), "--json-file", str(prefix), "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
            "--skip-log-setup"]
    return argv, env, request_log


def run_stage(url: str, path: str, body: Path, stage: Stage, seconds: float, timeout_s: float, workdir: Path,
              expect: str = "") -> tuple[dict, list[dict]]:
    # A folder of its own: stages of the same name (a soak repeats one) must not share, and so append to, one log.
    prefix = Path(tempfile.mkdtemp(prefix="stage-", dir=workdir)) / stage.name.replace(",", "_").replace("=", "")
    argv, env, request_log = locust_command(url, path, body, stage, seconds, timeout_s, prefix, expect)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited {proc.returncode}: {proc.stderr[-2000:]}")
    records = read_request_log(request_log)
    locust = read_aggregate(Path(f"{prefix}.json"))
    result = {"stage": stage.name, "users": stage.users, "target_rps": stage.rate or None,
              "seconds": round(time.perf_counter() - started, 2), **summarize_requests(records),
              "locust_requests": locust["requests"], "locust_failures": locust["failures"],
              "failure_kinds": read_failures(Path(f"{prefix}_failures.csv"))}
    return result, records


def run(url: str, path: str, body: Path, stages: list[Stage], seconds: float, ready_path: str,
        timeout_s: float = 30.0, bad: Optional[list[dict]] = None, expect: Optional[str] = None) -> dict:
    expect = expect_key(path) if expect is None else expect
    probe = ReadinessProbe(url.rstrip("/") + ready_path)
    probe.start()
    results, records = [], []
    with tempfile.TemporaryDirectory(prefix="load-generator-") as tmp:
        for s in stages:
            result, stage_records = run_stage(url, path, body, s, seconds, timeout_s, Path(tmp), expect)
            results.append(result)
            records += stage_records
    readiness = probe.stop()
    sla = next((r for r in results if r["target_rps"]), results[-1])
    overall = summarize_requests(records)
    throughputs = [r["throughput_rps"] for r in results if r["throughput_rps"] is not None]
    return {"tool": f"locust {importlib.metadata.version('locust')}", "url": url, "path": path, "stage_seconds": seconds,
            "success_means": f"2xx with {expect!r} in its JSON body" if expect else "2xx",
            "stages": results, "sla_stage": sla["stage"],
            "p50_ms": sla["p50_ms"], "p95_ms": sla["p95_ms"], "p99_ms": sla["p99_ms"],
            "latency_over": "successful requests only",
            "throughput_rps": max(throughputs) if throughputs else None,
            "requests": overall["requests"], "successful_requests": overall["successful_requests"],
            "failed_requests": overall["failed_requests"], "failures": overall["failed_requests"],
            "error_rate": overall["error_rate"], "status_counts": overall["status_counts"],
            **uptime_figures(probe.outcomes, records, probe.started_at, probe.stopped_at),
            "readiness_uptime_fraction": round(readiness, 6), "readiness_probes": probe.total,
            "readiness_failures": probe.failures,
            **bad_request_summary(bad),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def bad_request_summary(bad: Optional[list[dict]]) -> dict:
    """The malformed-request check as measured figures. bad_request_5xx (kept) counts unanswered ones as 5xx;
    malformed_requests_5xx counts real 5xx answers and malformed_requests_unanswered the rest."""
    if not bad:
        return {}
    answered_4xx = [b for b in bad if b["status"] is not None and 400 <= b["status"] < 500 and b["message"]]
    fraction = round(len(answered_4xx) / len(bad), 3)
    return {"bad_requests": bad, "bad_request_4xx_fraction": fraction,
            "bad_request_5xx": sum(1 for b in bad if b["status"] is None or b["status"] >= 500),
            "malformed_requests": len(bad), "malformed_requests_4xx": len(answered_4xx),
            "malformed_requests_4xx_fraction": fraction,
            "malformed_requests_5xx": sum(1 for b in bad if b["status"] is not None and b["status"] >= 500),
            "malformed_requests_unanswered": sum(1 for b in bad if b["status"] is None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workloads.serving.load_generator",
                                description="locust load generator for one predictor at fixed concurrency and rates")
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
    p.add_argument("--expect-key", default=None,
                   help="a correct answer is a 2xx whose JSON body holds this key (default: predictions for "
                        ":predict, outputs for /infer; '' accepts any 2xx)")
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
        result = run(args.url, path, body_file, args.stage, args.seconds, args.ready_path, args.timeout, bad,
                     args.expect_key)
    if args.out:
        write_json_atomic(args.out, result)
    print({k: v for k, v in result.items() if k not in ("stages", "bad_requests")}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
