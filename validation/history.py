"""A stack's run history, as ReFrame keeps its sessions: every `make up` appends its outputs to
reports/<stack>/history.jsonl (one JSON line a run: when, which commit, the verdict, every task's metrics and
target verdicts), and the report compares this run with the previous one and the best so far.

    python -m validation.history append reports/dev/outputs.json   # tools/stack.sh, after every `make up`

Which way is better comes from the metric's targets in validation/targets.yaml (lt/le: lower, gt/ge: higher; a
metric without a target has no best and cannot regress). Its `history` block holds the tolerance: a figure
regresses when it is worse than the previous run's by more than that fraction of it. Runs are compared only
with earlier runs of the same profile and declared GPU: a smoke run says nothing about a full one.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, ValidationError

from validation.targets import TARGETS_FILE, all_targets
from validation.verdict import BAD, overall

FILE = "history.jsonl"
DIRECTIONS = {"lt": "lower", "le": "lower", "gt": "higher", "ge": "higher"}  # `between` says no direction


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricRule(_Strict):
    tolerance: Optional[NonNegativeFloat] = None
    better: Optional[Literal["higher", "lower", "none"]] = None  # where the target's op is a bound, not a goal


class Rules(_Strict):
    tolerance: NonNegativeFloat = 0.10
    units: dict[str, NonNegativeFloat] = {}  # by the targets' unit: timings vary more than accuracies
    metrics: dict[str, MetricRule] = {}  # by "<task>.<key>"


@dataclass(frozen=True)
class Rule:
    better: Optional[str]  # "higher" | "lower" | None: no best, no regression
    tolerance: float


def _one(values: set) -> Optional[str]:
    return next(iter(values)) if len(values) == 1 else None


@lru_cache(maxsize=1)
def _targeted() -> dict[tuple[str, str], tuple[Optional[str], Optional[str]]]:
    """(task, key) of every target's metric: (which way is better, its unit); None where its rows disagree."""
    found: dict[tuple[str, str], tuple[set, set]] = {}
    for t in all_targets():
        ways, units = found.setdefault((t.task, t.key), (set(), set()))
        ways.add(DIRECTIONS.get(t.op))
        units.add(t.unit)
    return {k: (_one(ways), _one(units)) for k, (ways, units) in found.items()}


def load_rules(path: Path = TARGETS_FILE) -> Rules:
    """targets.yaml's `history` block, validated: a bad value or a metric no target measures is a ValueError
    naming it."""
    data = yaml.safe_load(path.read_text()) or {}
    try:
        rules = Rules.model_validate(data.get("history") or {})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"{path.name}: history.{'.'.join(map(str, e['loc']))}: {e['msg']} "
                         f"(got {e.get('input')!r})") from None
    known = _targeted()
    units = {unit for _, unit in known.values()}
    for unit in rules.units:
        if unit not in units:
            raise ValueError(f"{path.name}: history.units.{unit}: no target has this unit (they have: "
                             f"{', '.join(sorted(u for u in units if u))})")
    for name in rules.metrics:
        task, _, key = name.partition(".")
        if (task, key) not in known:
            raise ValueError(f"{path.name}: history.metrics.{name}: no target measures it (the name is "
                             "<task>.<key> of a row in `targets`, e.g. mlops_4_1.p95_ms)")
    return rules


@lru_cache(maxsize=1)
def _table_rules() -> Rules:
    return load_rules()


def rule(task: str, key: str, rules: Optional[Rules] = None) -> Rule:
    """Which way is better and the tolerance: the metric's own rule, else its unit's tolerance, else the default."""
    rules = rules or _table_rules()
    better, unit = _targeted().get((task, key), (None, None))
    own = rules.metrics.get(f"{task}.{key}") or MetricRule()
    if own.better:
        better = None if own.better == "none" else own.better
    tolerance = own.tolerance if own.tolerance is not None else rules.units.get(unit, rules.tolerance)
    return Rule(better, tolerance)


# -- the history file ------------------------------------------------------------------------------------------

@dataclass
class History:
    runs: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "line N: why", for lines that are no run


def load(path: Path) -> History:
    """The runs in order; a line that is not a run (a crash cut it short, a hand edit) is skipped and named."""
    history = History()
    if not path.exists():
        return history
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except json.JSONDecodeError as exc:
            history.skipped.append(f"line {line_no}: not JSON ({exc.msg})")
            continue
        if not isinstance(run, dict) or not isinstance(run.get("tasks"), dict) or not run.get("timestamp"):
            history.skipped.append(f"line {line_no}: not a run (no `timestamp` and `tasks`)")
            continue
        history.runs.append(run)
    return history


def entry(outputs: dict) -> dict:
    """One run's line: when, which commit, the verdict, every task's metrics and its targets' verdicts."""
    v = overall(outputs)
    info = outputs.get("validation") if isinstance(outputs.get("validation"), dict) else {}
    run = outputs.get("_run") if isinstance(outputs.get("_run"), dict) else {}
    return {"timestamp": run.get("finished_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": run.get("commit"), "dirty": run.get("dirty"), "stack": info.get("stack"),
            "profile": info.get("profile"), "gpu": (v["platform"] or {}).get("gpu"), "verdict": v["status"],
            "counts": v["counts"], "exit_code": run.get("exit_code"), "pulumi_seconds": run.get("pulumi_seconds"),
            "not_run": sorted(v["not_run"]),
            "tasks": {task: {"metrics": outputs[task].get("metrics") or {},
                             "targets": {row["id"]: row["status"] for row in judged["targets"]}}
                      for task, judged in v["tasks"].items()}}


def append(outputs_path: Path) -> str:
    """Add the run of this outputs.json to the history beside it; what was done, in one line. A run already
    there is not added again, nor a successful one whose outputs equal the last run's (a `make up` that changed
    nothing re-measures nothing); a failed run always is."""
    outputs = json.loads(outputs_path.read_text())
    path = outputs_path.with_name(FILE)
    runs = load(path).runs
    new = entry(outputs if isinstance(outputs, dict) else {})
    if runs and runs[-1]["timestamp"] == new["timestamp"]:
        return f"history: run {new['timestamp']} is already in {path}"
    if runs and new["exit_code"] == 0 and runs[-1]["tasks"] == new["tasks"]:
        return (f"history: the outputs equal those of run #{len(runs)} ({runs[-1]['timestamp']}): nothing re-ran, "
                f"not added to {path} (`make revalidate` re-runs every job)")
    torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(new, sort_keys=True) + "\n")
    return f"history: run #{len(runs) + 1} ({new['verdict']}) added to {path}"


# -- comparison ------------------------------------------------------------------------------------------------

def number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def worse_by(rule_: Rule, now: float, before: float) -> float:
    """How much worse `now` is than `before` (negative: better); 0 without a direction."""
    if rule_.better == "lower":
        return now - before
    if rule_.better == "higher":
        return before - now
    return 0.0


def change(now: float, before: float) -> Optional[float]:
    """The relative change; None from 0 to anything else (no fraction of 0)."""
    if before == 0:
        return 0.0 if now == 0 else None
    return (now - before) / abs(before)


@dataclass
class Figure:
    task: str
    key: str
    value: Any
    rule: Rule
    previous: Any = None  # the value as recorded (a bool stays a bool in the report)
    previous_run: Optional[int] = None  # its run number (1-based line of the history)
    best: Any = None
    best_run: Optional[int] = None
    series: list[tuple[int, float]] = field(default_factory=list)  # (run number, value), this run last

    @property
    def change(self) -> Optional[float]:
        now, before = number(self.value), number(self.previous)
        return None if now is None or before is None else change(now, before)

    @property
    def regressed(self) -> bool:
        now, before = number(self.value), number(self.previous)
        if now is None or before is None or self.rule.better is None:
            return False
        return worse_by(self.rule, now, before) > self.rule.tolerance * abs(before)

    @property
    def new_best(self) -> bool:
        now, best = number(self.value), number(self.best)
        return now is not None and best is not None and worse_by(self.rule, now, best) < 0


@dataclass
class Comparison:
    number: int  # this run's number in the history (len(earlier runs) + 1 when it is not recorded)
    earlier: list[tuple[int, dict]]  # the comparable earlier runs, oldest first
    others: int  # earlier runs of another profile or GPU, not compared
    figures: dict[str, list[Figure]]  # by task, every numeric metric of this run
    target_changes: list[str]  # targets that passed in the previous run and do not now

    @property
    def previous(self) -> Optional[tuple[int, dict]]:
        return self.earlier[-1] if self.earlier else None

    @property
    def regressions(self) -> list[Figure]:
        return [f for figures in self.figures.values() for f in figures if f.regressed]


def compare(outputs: dict, runs: list[dict], rules: Optional[Rules] = None) -> Comparison:
    """This run against the earlier runs of the history (those before it when it is recorded there, else all)."""
    current = entry(outputs)
    at = next((i for i, r in enumerate(runs) if r["timestamp"] == current["timestamp"]), len(runs))
    same = lambda r: (r.get("profile"), r.get("gpu")) == (current["profile"], current["gpu"])  # noqa: E731
    earlier = [(i + 1, r) for i, r in enumerate(runs[:at]) if same(r)]
    figures: dict[str, list[Figure]] = {}
    for task, now in current["tasks"].items():
        rows = []
        for key, value in sorted(now["metrics"].items()):
            if number(value) is None:
                continue
            fig = Figure(task, key, value, rule(task, key, rules))
            for run_number, run in earlier:
                raw = ((run["tasks"].get(task) or {}).get("metrics") or {}).get(key)
                before = number(raw)
                if before is None:
                    continue
                fig.previous, fig.previous_run = raw, run_number
                fig.series.append((run_number, before))
                if fig.rule.better and (fig.best is None or worse_by(fig.rule, before, number(fig.best)) < 0):
                    fig.best, fig.best_run = raw, run_number
            fig.series.append((at + 1, number(value)))
            rows.append(fig)
        figures[task] = rows
    changes = []
    if earlier:
        _, last = earlier[-1]
        for task, now in current["tasks"].items():
            before = (last["tasks"].get(task) or {}).get("targets") or {}
            changes += [f"{task}:{target} {before[target]} → {status}" for target, status in now["targets"].items()
                        if before.get(target) == "pass" and status in BAD]
    return Comparison(at + 1, earlier, at - len(earlier), figures, changes)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "append":
        print(__doc__, file=sys.stderr)
        return 2
    print(append(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
