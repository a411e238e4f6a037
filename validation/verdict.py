"""The overall verdict on a stack's outputs (`pulumi stack output --json`, plus `_run` from tools/stack.sh):
one function, used by the report and by the acceptance tests.

Each enabled task's targets are judged again here, from its raw metrics, what its jobs saw (`hardware`) and
the declared `platform`, with the table as it is now (validation/targets.py, the one judge); a verdict the
stack recorded as fail or missing is never turned into a pass by that.

FAIL when `pulumi up` exited non-zero, when the outputs hold no `validation` section, when an enabled task
has no output (or no declared platform), when any target is fail or missing, and when no target passed at
all: an empty outputs file is FAIL, never "PASS — 0 targets met".
"""
from __future__ import annotations

from typing import Any

from validation.targets import STATUSES, check_platform, for_task, judge, summarize

NO_OUTPUT = "enabled, produced no output: its resources failed — see the pulumi log"
BAD = ("fail", "missing")


def _platform(result: dict, info: dict) -> Any:
    for candidate in (result.get("platform"), info.get("platform")):
        try:
            return check_platform(candidate)
        except ValueError:
            continue
    return None


def _task_rows(task: str, result: dict, platform: dict, notes: list[str]) -> list[dict]:
    """The table's targets for this task, judged now; a recorded fail/missing stands."""
    recorded = {r.get("id"): r for r in result.get("targets") or [] if isinstance(r, dict)}
    metrics, observed = result.get("metrics") or {}, result.get("hardware") or {}
    rows = []
    for target in for_task(task):
        row = judge(target, metrics, observed, platform)
        before = recorded.pop(target.id, None)
        if before is not None and before.get("status") != row["status"]:
            if before.get("status") in BAD and row["status"] not in BAD:
                row = {**before, "reason": f"{before.get('reason') or before['status']} (recorded by the stack; "
                                          f"the table now judges {row['status']}: re-run pulumi up)"}
            notes.append(f"{task}:{target.id}: the stack recorded {before.get('status')}, judged {row['status']} now")
        rows.append(row)
    for stale in recorded:
        notes.append(f"{task}:{stale}: recorded by the stack, no longer in validation/targets.yaml")
    return rows


def overall(outputs: dict) -> dict:
    """{"status": "PASS"|"FAIL", "counts": {pass, fail, not_applicable, missing}, "reasons": [why FAIL],
    "notes": [...], "enabled": [...], "not_run": {task: why}, "tasks": {task: {"targets", "summary", "platform",
    "hardware"}}, "platform": the declared hardware (the first task's, else the validation section's)}."""
    outputs = outputs if isinstance(outputs, dict) else {}
    info = outputs.get("validation") if isinstance(outputs.get("validation"), dict) else {}
    run = outputs.get("_run") if isinstance(outputs.get("_run"), dict) else {}
    reasons: list[str] = []
    notes: list[str] = []
    if run.get("exit_code") not in (None, 0):
        reasons.append(f"`pulumi up` exited {run['exit_code']}: see the pulumi log")
    if not info:
        reasons.append("the outputs hold no `validation` section: the stack exported nothing (pulumi up failed "
                       "before its outputs, or this is not a stack's outputs file)")
    enabled = [t for t in info.get("tasks") or [] if isinstance(t, str)]
    if info and not enabled:
        reasons.append("no task is enabled (`tasks`)")
    not_run: dict[str, str] = {}
    tasks: dict[str, dict] = {}
    platform = _platform({}, info)
    for task in enabled:
        result = outputs.get(task)
        if not isinstance(result, dict) or not result:
            not_run[task] = NO_OUTPUT
            continue
        declared = _platform(result, info)
        if declared is None:
            not_run[task] = ("its output declares no `platform` (gpu, kubernetes): made by an older program, "
                             "re-run pulumi up")
            continue
        platform = platform or declared
        rows = _task_rows(task, result, declared, notes)
        tasks[task] = {"targets": rows, "summary": summarize(rows), "platform": declared,
                       "hardware": result.get("hardware") or {}}
    for task, why in not_run.items():
        reasons.append(f"task {task}: {why}")
    counts = dict.fromkeys(STATUSES, 0)
    for task, entry in tasks.items():
        for status, n in entry["summary"].items():
            counts[status] += n
        for row in entry["targets"]:
            if row["status"] in BAD:
                why = row.get("reason") or f"measured {row.get('value')}, wants {row['target']}"
                reasons.append(f"{task}:{row['id']} {row['status']} — {why}")
    if counts["pass"] == 0:
        reasons.append("no target passed: nothing was measured")
    return {"status": "FAIL" if reasons else "PASS", "counts": counts, "reasons": reasons, "notes": notes,
            "enabled": enabled, "not_run": not_run, "tasks": tasks, "platform": platform}
