"""The spec's targets (targets.yaml) and how a task's measured metrics are judged against them.

What a target expects comes from the stack's DECLARED hardware (`platform`, from its config), not from what
the jobs happened to see (`observed`): a site that declares a GPU and whose jobs ran on CPU fails its GPU
targets; only a config that declares the thing absent makes a target not applicable.

    platform = {"gpu": None | "NVIDIA H200", "gpus_per_node": 2, "kubernetes": False}
    observed = {"device": "cuda" | "cpu" | "n/a", "device_name": "...",
                "jobs": {"1gpu": {"device": ..., "device_name": ..., "ranks": [{"device": ...}, ...]}}}
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

TARGETS_FILE = Path(__file__).with_name("targets.yaml")

_OPS = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}
_SYMBOLS = {"lt": "<", "le": "≤", "gt": ">", "ge": "≥"}
OPS = (*_OPS, "between")
SOURCES = ("spec", "goal")
STATUSES = ("pass", "fail", "not_applicable", "missing")
# The config keys that declare what a scope needs; a not-applicable reason always names one of them.
DECLARING_KEYS = ("hpc.gpu", "serving.gpu", "kubernetes", "hpc.container")  # the config keys that declare the hardware
RESULT_KEYS = ("metrics", "hardware", "platform", "targets", "summary")


def scope_ok(scope: Any) -> bool:
    """any | gpu | kubernetes | container | gpu:<class> (a GPU kind, e.g. gpu:h200)."""
    if not isinstance(scope, str):
        return False
    if scope in ("any", "gpu", "kubernetes", "container"):
        return True
    kind, _, cls = scope.partition(":")
    return kind == "gpu" and bool(cls.strip()) and cls == cls.strip()


@dataclass(frozen=True)
class Target:
    id: str
    metric: str
    task: str
    key: str
    op: str
    threshold: Any
    unit: str
    applies_to: str  # the scope: any | gpu | kubernetes | gpu:<class>
    source: str

    @property
    def needs_gpu(self) -> bool:
        return self.applies_to == "gpu" or self.applies_to.startswith("gpu:")

    @property
    def gpu_class(self) -> Optional[str]:
        return (self.applies_to.partition(":")[2] or None) if self.needs_gpu else None

    def holds(self, value: float) -> bool:
        value = float(value)  # True/False are 1/0
        if self.op == "between":
            low, high = self.threshold
            return low <= value <= high
        return _OPS[self.op](value, self.threshold)

    @property
    def wanted(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.op == "between":
            return f"{self.threshold[0]}–{self.threshold[1]}{unit}"
        return f"{_SYMBOLS[self.op]} {self.threshold}{unit}"

    def not_applicable_reason(self, platform: dict) -> Optional[str]:
        """Why the DECLARED platform has nothing for this target to measure (None: it must be judged).
        The reason names the config key that declares the thing absent."""
        if self.applies_to == "any":
            return None
        if self.applies_to == "kubernetes":
            if platform.get("kubernetes"):
                return None
            return ("needs a Kubernetes cluster; the config declares none (`kubernetes` not set). "
                    "Measured where a site sets `kubernetes`")
        if self.applies_to == "container":
            if platform.get("container"):
                return None
            return ("needs container jobs; the config runs none (`hpc.container` runtime: none). "
                    "Measured where a stack sets `hpc.container`")
        gpu, key = platform.get("gpu"), platform.get("gpu_key", "hpc.gpu")
        if not gpu:
            return (f"GPU target; the config declares no real GPU (`{key}`: none). "
                    "GPU figures: docs/benchmarks.md")
        cls = self.gpu_class
        if cls and cls.lower() not in str(gpu).lower():
            return (f"goal measured on {cls.upper()}; the config declares {gpu} (`{key}`), "
                    f"judged only on a {cls.upper()}")
        return None


def _where(path: Path, index: int, row: Any) -> str:
    rid = row.get("id") if isinstance(row, dict) else None
    return f"{path.name} row {index + 1}" + (f" (id {rid})" if rid else "")


def _check_threshold(target: Target) -> Optional[str]:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if target.op == "between":
        t = target.threshold
        if not (isinstance(t, (list, tuple)) and len(t) == 2 and all(map(number, t)) and t[0] <= t[1]):
            return f"op between needs threshold [low, high], got {t!r}"
    elif not number(target.threshold):
        return f"op {target.op} needs a number as threshold, got {target.threshold!r}"
    return None


def load_targets(path: Path = TARGETS_FILE) -> tuple[Target, ...]:
    """The table, validated: every row has exactly the Target fields, a known op, scope and source, a
    threshold that fits the op, and an id used once. A bad row is a ValueError naming it."""
    data = yaml.safe_load(path.read_text()) or {}
    rows = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path.name}: expected a top-level 'targets' list")
    names = [f.name for f in fields(Target)]
    targets, seen = [], {}
    for i, row in enumerate(rows):
        where = _where(path, i, row)
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a mapping, got {row!r}")
        unknown, absent = sorted(set(row) - set(names)), [n for n in names if n not in row]
        if unknown or absent:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) +
                ([f"missing field(s) {', '.join(absent)}"] if absent else [])))
        target = Target(**row)
        for name in ("id", "metric", "task", "key"):
            if not isinstance(getattr(target, name), str) or not getattr(target, name):
                raise ValueError(f"{where}: {name} must be a non-empty string")
        if target.op not in OPS:
            raise ValueError(f"{where}: unknown op {target.op!r} (allowed: {', '.join(OPS)})")
        if not scope_ok(target.applies_to):
            raise ValueError(f"{where}: unknown scope applies_to={target.applies_to!r} "
                             "(allowed: any, gpu, kubernetes, container, gpu:<class>)")
        if target.source not in SOURCES:
            raise ValueError(f"{where}: unknown source {target.source!r} (allowed: {', '.join(SOURCES)})")
        bad = _check_threshold(target)
        if bad:
            raise ValueError(f"{where}: {bad}")
        if target.id in seen:
            raise ValueError(f"{where}: duplicate id {target.id!r} (first at row {seen[target.id] + 1})")
        seen[target.id] = i
        targets.append(target)
    return tuple(targets)


@lru_cache(maxsize=1)
def all_targets() -> tuple[Target, ...]:
    return load_targets(TARGETS_FILE)


def for_task(task: str) -> list[Target]:
    return [t for t in all_targets() if t.task == task]


def check_platform(platform: Any) -> dict:
    """The declared hardware must say whether there is a GPU and a Kubernetes cluster: a judge that guessed
    would turn a site's missing declaration into 'not applicable'."""
    if not isinstance(platform, dict) or "gpu" not in platform or "kubernetes" not in platform:
        raise ValueError(f"platform must declare 'gpu' (None or the GPU model) and 'kubernetes' (bool), "
                         f"got {platform!r}")
    if platform["gpu"] is not None and (not isinstance(platform["gpu"], str) or not platform["gpu"].strip()):
        raise ValueError(f"platform gpu must be None or the GPU model (e.g. 'NVIDIA H200'), got {platform['gpu']!r}")
    return platform


def _seen(entry: dict) -> str:
    return f"{entry.get('device') or 'no device reported'} ({entry.get('device_name') or 'unknown device'})"


def not_on_gpu(observed: dict) -> list[str]:
    """Where the task's jobs (and their ranks) did not run on CUDA, one phrase each."""
    found = []
    for label, job in sorted((observed.get("jobs") or {}).items()):
        job = job or {}
        if job.get("device") != "cuda":
            found.append(f"job {label} ran on {_seen(job)}")
        ranks = job.get("ranks") or []
        for rank, seen in (sorted(ranks.items()) if isinstance(ranks, dict) else enumerate(ranks)):
            if (seen or {}).get("device") != "cuda":
                found.append(f"job {label} rank {rank} ran on {_seen(seen or {})}")
    if not found and observed.get("device") != "cuda":
        found.append(f"the task ran on {_seen(observed)}")
    return found


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and not math.isnan(value):
        return float(value)
    return None


def judge(target: Target, metrics: dict, observed: dict, platform: dict) -> dict:
    """One target's verdict: pass, fail, not_applicable (with the reason) or missing (a defect)."""
    check_platform(platform)
    value = metrics.get(target.key)
    row = {"id": target.id, "metric": target.metric, "target": target.wanted, "source": target.source,
           "scope": target.applies_to, "value": value}
    reason = target.not_applicable_reason(platform)
    if reason:
        if target.needs_gpu and not platform.get("gpu") and observed and not not_on_gpu(observed):
            reason += " (its jobs did run on cuda: declare the GPU in `hpc.gpu` to judge it)"
        return {**row, "status": "not_applicable", "reason": reason}
    if target.needs_gpu:
        elsewhere = not_on_gpu(observed or {})
        if elsewhere:
            return {**row, "status": "fail",
                    "reason": f"declared GPU {platform['gpu']} (`hpc.gpu`), but {'; '.join(elsewhere)}"}
    number = _number(value)
    if number is None:
        why = "is NaN" if isinstance(value, float) else "was not produced" if value is None else \
            f"is not a number ({value!r})"
        why_absent = metrics.get("not_measured")  # a stack that knows why a figure is absent says so here
        known = why_absent.get(target.key) if isinstance(why_absent, dict) else None
        return {**row, "status": "missing", "reason": f"metric '{target.key}' {why}" + (f": {known}" if known else "")}
    return {**row, "status": "pass" if target.holds(number) else "fail"}


def evaluate(task: str, metrics: dict, observed: dict, platform: dict) -> list[dict]:
    return [judge(t, metrics, observed, platform) for t in for_task(task)]


def summarize(results: Iterable[dict]) -> dict:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r["status"]] += 1
    return counts


def task_result(task: str, metrics: dict, observed: dict, platform: dict, **records) -> dict:
    """A task's stack output: its metrics, what its jobs saw (`hardware`), the declared `platform`, any
    records (job summaries, staging, ...) and each of its targets' verdicts."""
    clash = sorted(set(records) & set(RESULT_KEYS))
    if clash:
        raise ValueError(f"task_result({task!r}): records may not be named {', '.join(clash)}")
    results = evaluate(task, metrics, observed, platform)
    return {"metrics": metrics, "hardware": observed, "platform": platform, **records, "targets": results,
            "summary": summarize(results)}
