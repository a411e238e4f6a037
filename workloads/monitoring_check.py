"""Measures the platform's monitoring (the monitoring task): that Prometheus scrapes every target, that the expected
series exist with fresh samples, that every rule file loaded, that each dashboard panel's query returns data, that
requests sent to a predictor are counted, and that an injected fault alerts in Alertmanager and resolves:

    python -m workloads.monitoring_check --prometheus URL --alertmanager URL --spec SPEC --out result.json

SPEC (JSON): {"series": [PromQL selector, ...], "rules": N, "dashboards": [path, ...], "interval_s": 2,
"traffic": {"url", "model", "requests"}, "fault": {"pid", "alert", "labels": {...}},
"job_fault": {"alert", "slurm_conf", "partition"}, "timeout_s": 120}.

The fault is a predictor stopped (SIGSTOP to its process group: it stops answering, as a hung server does) and
continued afterwards (SIGCONT), always, so its pid and state stay what Pulumi recorded and the tasks after it see
it serving again. Times are from the signal to the alert being active in Alertmanager's API, and from the continue
to the alert gone from it; the Prometheus states on the way (pending, firing) make the timeline. The second fault
is a SLURM job made to fail (`exit 1`): from its end to SlurmJobFailures active, and to resolved.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from workloads.metrics_io import write_json_atomic


class CheckError(RuntimeError):
    """Monitoring cannot be measured; the message says why."""


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def query(prometheus: str, promql: str) -> list[dict]:
    """An instant query's result vector (or [] on an error the query itself caused)."""
    body = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if body.get("status") != "success":
        raise CheckError(f"query {promql!r}: {body.get('error')}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [{"value": result}]


def has_data(result: list[dict]) -> bool:
    """At least one sample that is a number (histogram_quantile over no traffic gives NaN, which is no data)."""
    for r in result:
        try:
            if not math.isnan(float(r["value"][1])):
                return True
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return False


def wait_scraped(prometheus: str, timeout_s: float) -> list[dict]:
    """The active targets once each has been scraped at least once (health no longer `unknown`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        targets = get_json(f"{prometheus}/api/v1/targets?state=active")["data"]["activeTargets"]
        if targets and all(t["health"] != "unknown" for t in targets) or time.monotonic() > deadline:
            return targets
        time.sleep(0.5)


def send_traffic(url: str, model: str, requests: int) -> int:
    """REQUESTS valid V1 predictions (one blank 28x28 image each); how many were answered 200."""
    body = json.dumps({"instances": [[0.0] * 784]}).encode()
    ok = 0
    for _ in range(requests):
        req = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                ok += resp.status == 200
        except (urllib.error.URLError, OSError):
            pass
    return ok


def counted(prometheus: str, model: str) -> float:
    result = query(prometheus, f'sum(predictor_requests_total{{model_name="{model}", outcome="ok"}})')
    return float(result[0]["value"][1]) if result else 0.0


def dashboard_queries(paths: list[str]) -> list[dict]:
    """Every panel target's PromQL of the Grafana dashboards (JSON), with its dashboard and panel title."""
    found = []
    for path in paths:
        board = json.loads(Path(path).read_text())
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append({"dashboard": board.get("title"), "panel": panel.get("title"),
                                  "expr": target["expr"]})
    return found


def alert_active(alertmanager: str, name: str, labels: dict) -> bool:
    filters = [f'alertname="{name}"', *(f'{k}="{v}"' for k, v in labels.items())]
    url = f"{alertmanager}/api/v2/alerts?" + urllib.parse.urlencode(
        [("filter", f) for f in filters] + [("active", "true"), ("silenced", "false"), ("inhibited", "false")])
    return any(a.get("status", {}).get("state") == "active" for a in get_json(url))


def prometheus_state(prometheus: str, name: str, labels: dict) -> str:
    """inactive, pending or firing: the rule's state for the alert with these labels, as Prometheus sees it."""
    for alert in get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]:
        if alert["labels"].get("alertname") == name and all(alert["labels"].get(k) == v for k, v in labels.items()):
            return alert["state"]
    return "inactive"


def watch(prometheus: str, alertmanager: str, fault: dict, until_active: bool, started: float, zero: float,
          timeout_s: float, timeline: list) -> Optional[float]:
    """Poll until the alert is (or is no longer) active in Alertmanager; seconds since `started`, None on time-out.
    Each poll joins the timeline (seconds since the fault, `zero`)."""
    name, labels = fault["alert"], fault.get("labels") or {}
    while time.monotonic() - started < timeout_s:
        active = alert_active(alertmanager, name, labels)
        timeline.append({"t": round(time.monotonic() - zero, 3), "prometheus": prometheus_state(prometheus, name, labels),
                         "alertmanager": "active" if active else "none"})
        if active == until_active:
            return round(time.monotonic() - started, 3)
        time.sleep(0.25)
    return None


def inject(prometheus: str, alertmanager: str, fault: dict, timeout_s: float) -> dict:
    """Stop the process group, time the alert; continue it, time the resolution. The group is always continued."""
    pid, name, labels = int(fault["pid"]), fault["alert"], fault.get("labels") or {}
    quiet_before = not alert_active(alertmanager, name, labels)
    fire = resolve = None
    stopped = time.monotonic()
    timeline: list = [{"t": 0.0, "event": "fault injected (SIGSTOP)"}]
    os.killpg(pid, signal.SIGSTOP)
    try:
        fire = watch(prometheus, alertmanager, fault, True, stopped, stopped, timeout_s, timeline)
    finally:
        os.killpg(pid, signal.SIGCONT)
        continued = time.monotonic()
        timeline.append({"t": round(continued - stopped, 3), "event": "fault removed (SIGCONT)"})
    if fire is not None:
        resolve = watch(prometheus, alertmanager, fault, False, continued, stopped, timeout_s, timeline)
    return {"alert": name, "labels": labels, "alert_quiet_before": quiet_before, "alert_fire_seconds": fire,
            "alert_resolve_seconds": resolve, "timeline": timeline}


def fail_a_job(prometheus: str, alertmanager: str, fault: dict, timeout_s: float) -> dict:
    """Submit a SLURM job that exits 1 (sbatch, SLURM_CONF from the spec) and time SlurmJobFailures from its end to
    active in Alertmanager, then to resolved (the rule's window passing: nothing is left to undo)."""
    name = fault["alert"]
    quiet_before = not alert_active(alertmanager, name, {})
    env = {**os.environ, "SLURM_CONF": fault["slurm_conf"]}
    submitted = subprocess.run(["sbatch", "--parsable", f"--partition={fault['partition']}", "--job-name=monitoring-fault",
                                "--output=/dev/null", "--time=1", "--wrap", "exit 1"],
                               env=env, capture_output=True, text=True, timeout=30)
    if submitted.returncode != 0:
        raise CheckError(f"sbatch of the failing job: {submitted.stderr.strip()}")
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"], env=env,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            break
        time.sleep(0.25)
    ended = time.monotonic()
    timeline: list = [{"t": 0.0, "event": f"job {job} ended {state}"}]
    fire = watch(prometheus, alertmanager, fault, True, ended, ended, timeout_s, timeline)
    resolve = watch(prometheus, alertmanager, fault, False, ended, ended, timeout_s, timeline) if fire else None
    return {"job_failure_alert": name, "job_failure_state": state, "job_failure_alert_quiet_before": quiet_before,
            "job_failure_alert_fire_seconds": fire, "job_failure_alert_resolve_seconds": resolve,
            "job_failure_timeline": timeline}


def measure(prometheus: str, alertmanager: str, spec: dict) -> dict:
    interval, timeout_s = float(spec["interval_s"]), float(spec.get("timeout_s", 120))
    fresh_within = 3 * interval + 1  # three scrapes missed is stale

    targets = wait_scraped(prometheus, timeout_s=10 * interval + 10)
    up = [t for t in targets if t["health"] == "up"]
    down = {f"{t['labels'].get('job')}/{t['labels'].get('instance')}": t.get("lastError") for t in targets
            if t["health"] != "up"}

    traffic, requests_counted = spec.get("traffic"), None
    if traffic:
        time.sleep(2 * interval + 0.5)  # a scrape after whatever the predictor answered before (a load test's tail)
        before, sent = counted(prometheus, traffic["model"]), int(traffic["requests"])
        answered = 0
        for part in (sent // 2, sent - sent // 2):  # two scrapes apart: a rate over them has two samples to compare
            answered += send_traffic(traffic["url"], traffic["model"], part)
            time.sleep(2 * interval + 0.5)
        seen = counted(prometheus, traffic["model"]) - before
        requests_counted = {"sent": sent, "answered": answered, "counted": seen}

    series = {}
    for selector in spec["series"]:
        ages = [float(r["value"][1]) for r in query(prometheus, f"time() - timestamp({selector})")]
        series[selector] = {"series": len(ages), "age_seconds": round(max(ages), 3) if ages else None,
                            "fresh": bool(ages) and max(ages) <= fresh_within}

    groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    loaded = sum(len(g["rules"]) for g in groups)
    rule_health = {r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r.get("health") == "err"}

    panels = []
    for panel in dashboard_queries(spec.get("dashboards") or []):
        panels.append({**panel, "data": has_data(query(prometheus, panel["expr"]))})

    fault = inject(prometheus, alertmanager, spec["fault"], timeout_s) if spec.get("fault") else {}
    job_fault = fail_a_job(prometheus, alertmanager, spec["job_fault"], timeout_s) if spec.get("job_fault") else {}

    def fraction(good: int, total: int) -> Optional[float]:
        return round(good / total, 4) if total else None

    return {
        "targets_up_fraction": fraction(len(up), len(targets)), "targets": len(targets), "targets_down": down,
        "series_fresh_fraction": fraction(sum(s["fresh"] for s in series.values()), len(series)),
        "series": series, "fresh_within_seconds": fresh_within,
        "rules_loaded_fraction": fraction(min(loaded, int(spec["rules"])), int(spec["rules"])),
        "rules_loaded": loaded, "rules_expected": int(spec["rules"]), "rules_failing": rule_health,
        "panels_with_data_fraction": fraction(sum(p["data"] for p in panels), len(panels)), "panels": panels,
        "requests_counted_fraction": (fraction(int(requests_counted["counted"]), requests_counted["answered"])
                                      if requests_counted and requests_counted["answered"] else None),
        "requests": requests_counted, **fault, **job_fault,
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus", required=True)
    p.add_argument("--alertmanager", required=True)
    p.add_argument("--spec", required=True, help="what to check (JSON, see above)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        result = measure(args.prometheus.rstrip("/"), args.alertmanager.rstrip("/"), json.loads(args.spec))
    except (CheckError, urllib.error.URLError, OSError) as exc:
        print(f"error: monitoring check: {exc}", file=sys.stderr, flush=True)
        return 2
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
