"""The spec's targets (targets.yaml) and how a task's measured metrics are judged against them."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

TARGETS_FILE = Path(__file__).with_name("targets.yaml")

_OPS = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}
_SYMBOLS = {"lt": "<", "le": "≤", "gt": ">", "ge": "≥"}


@dataclass(frozen=True)
class Target:
    id: str
    metric: str
    task: str
    key: str
    op: str
    threshold: Any
    unit: str
    applies_to: str
    source: str

    def holds(self, value: float) -> bool:
        if self.op == "between":
            low, high = self.threshold
            return low <= value <= high
        return _OPS[self.op](value, self.threshold)

    @property
    def wanted(self) -> str:
        if self.op == "between":
            return f"{self.threshold[0]}–{self.threshold[1]} {self.unit}"
        return f"{_SYMBOLS[self.op]} {self.threshold} {self.unit}"

    def not_applicable_reason(self, hardware: dict) -> Optional[str]:
        """Why this target cannot be measured on the hardware the task ran on (None: it can)."""
        if self.applies_to == "gpu" and hardware.get("device") != "cuda":
            return (f"GPU target; this run used {hardware.get('device', 'no GPU')} "
                    f"({hardware.get('device_name', 'unknown device')}). GPU figures: docs/benchmarks.md")
        if self.applies_to == "kubernetes" and not hardware.get("kubernetes"):
            return "needs a Kubernetes cluster with an autoscaler; this stack has none"
        return None


@lru_cache(maxsize=1)
def all_targets() -> tuple[Target, ...]:
    rows = yaml.safe_load(TARGETS_FILE.read_text())["targets"]
    targets = tuple(Target(**row) for row in rows)
    ids = [t.id for t in targets]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate target ids in {TARGETS_FILE}")
    for t in targets:
        if t.op not in (*_OPS, "between"):
            raise ValueError(f"target {t.id}: unknown op {t.op!r}")
    return targets


def for_task(task: str) -> list[Target]:
    return [t for t in all_targets() if t.task == task]


def judge(target: Target, metrics: dict, hardware: dict) -> dict:
    """One target's verdict: pass, fail, not_applicable (with the reason) or missing (a defect)."""
    row = {"id": target.id, "metric": target.metric, "target": target.wanted, "source": target.source}
    reason = target.not_applicable_reason(hardware)
    if reason:
        return {**row, "status": "not_applicable", "value": metrics.get(target.key), "reason": reason}
    value = metrics.get(target.key)
    if not isinstance(value, (int, float)):
        return {**row, "status": "missing", "value": value, "reason": f"metric '{target.key}' was not produced"}
    return {**row, "status": "pass" if target.holds(float(value)) else "fail", "value": value}


def evaluate(task: str, metrics: dict, hardware: dict) -> list[dict]:
    return [judge(t, metrics, hardware) for t in for_task(task)]


def summarize(results: Iterable[dict]) -> dict:
    counts = {"pass": 0, "fail": 0, "not_applicable": 0, "missing": 0}
    for r in results:
        counts[r["status"]] += 1
    return counts


def task_result(task: str, metrics: dict, hardware: dict, **extra) -> dict:
    """A task's stack output: its metrics, where it ran, and each of its targets' verdicts."""
    results = evaluate(task, metrics, hardware)
    return {"metrics": metrics, "hardware": hardware, **extra, "targets": results, "summary": summarize(results)}
