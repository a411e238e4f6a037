"""Turn a stack's outputs (`pulumi stack output --json`) into a report a person can read: report.md with
a verdict table per task and plots beside it. The overall verdict is validation/verdict.py's; titles and
plots come from the task registry (stacks/tasks).

    python -m validation.report reports/dev/outputs.json

With the stack's history beside it (history.jsonl, validation/history.py), each figure is shown against the
previous run and the best so far, regressions are flagged and the targets' figures plotted over the runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from validation.history import FILE as HISTORY_FILE, Comparison, Figure, History, load as load_history
from validation.history import compare
from validation.targets import for_task
from validation.verdict import overall

STATUS = {"pass": "✅ pass", "fail": "❌ FAIL", "not_applicable": "➖ not applicable", "missing": "❌ MISSING"}
NOT_ENABLED = "not enabled in this stack's config (`tasks`)"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _targets_table(rows: list[dict]) -> list[str]:
    lines = ["| target | spec says | measured | verdict |", "|---|---|---|---|"]
    for t in rows:
        verdict = STATUS[t["status"]] + (f" — {t['reason']}" if t.get("reason") else "")
        source = "" if t.get("source") == "spec" else " (project goal)"
        lines.append(f"| {_cell(t['metric'])}{source} | {_cell(t['target'])} | {_cell(_fmt(t.get('value')))} | "
                     f"{_cell(verdict)} |")
    return lines


def _declared(platform: Optional[dict]) -> str:
    if not platform:
        return "not declared (no task output carries a `platform`)"
    gpu, key = platform.get("gpu"), platform.get("gpu_key", "hpc.gpu")
    gpus = (f"GPU {gpu} (`{key}`), {platform.get('gpus_per_node', '?')} a node (`hpc.gpusPerNode`)" if gpu else
            f"no real GPU (`{key}`: none; GRES over {platform.get('gpus_per_node', '?')} device nodes that are no "
            "GPUs; GPU targets are not applicable)")
    k8s = ("a Kubernetes cluster" if platform.get("kubernetes") else "no Kubernetes cluster") + " (`kubernetes`)"
    return f"{gpus}; {k8s}"


def _seen(entry: dict) -> str:
    return f"{entry.get('device') or '?'} ({entry.get('device_name') or 'unknown device'})"


def _hardware(observed: dict) -> str:
    jobs = observed.get("jobs") or {}
    if observed.get("device") == "n/a" and not jobs:
        return "Hardware seen: n/a (a check of the platform: its targets hold on any hardware)"
    line = f"Hardware seen: {_seen(observed)}"
    if jobs:
        parts = []
        for label, job in jobs.items():
            job = job or {}
            ranks = job.get("ranks") or []
            rank_list = list(ranks.values()) if isinstance(ranks, dict) else list(ranks)
            extra = f", ranks: {', '.join(_seen(r or {}) for r in rank_list)}" if rank_list else ""
            parts.append(f"job `{label}` {_seen(job)}{extra}")
        line += "; " + "; ".join(parts)
    return line


def _job_lines(result: dict) -> list[str]:
    jobs = [("", result["job"])] if isinstance(result.get("job"), dict) else \
        [(f"`{k}`: ", v) for k, v in (result.get("jobs") or {}).items() if isinstance(v, dict)]
    lines = []
    for label, job in jobs:
        lines += ["", f"{label}SLURM job {job.get('job_id')} on `{job.get('node')}`: {job.get('state')}, exit "
                      f"{job.get('exit_code')}, {job.get('elapsed_seconds')} s; GRES environment "
                      f"`CUDA_VISIBLE_DEVICES={(job.get('gres_env') or {}).get('CUDA_VISIBLE_DEVICES')}`; "
                      f"log `{job.get('log_path')}`"]
    return lines


def _plots(task_cls, metrics: dict, folder: Path) -> list[str]:
    lines = []
    for plot in getattr(task_cls, "plots", ()) if task_cls is not None else ():
        try:
            drawn = plot.draw(metrics, folder / plot.file)
        except Exception as exc:  # a plot must not hide the verdict: say what went wrong, go on
            import matplotlib.pyplot as plt
            plt.close("all")
            lines += ["", f"(plot `{plot.file}` could not be drawn: {type(exc).__name__}: {exc})"]
            continue
        if drawn:
            lines += ["", f"![{plot.file}]({plot.file})"]
    return lines


def _run_name(number: int, run: dict) -> str:
    commit = (run.get("commit") or "no commit")[:10] + (" (modified)" if run.get("dirty") else "")
    return f"run #{number} ({run.get('timestamp')}, {commit}, {run.get('verdict')})"


def _change(fig: Figure) -> str:
    if fig.previous is None:
        return "—"
    change = fig.change
    text = "new from 0" if change is None else "±0" if change == 0 else f"{change:+.1%}"
    if fig.regressed:
        return f"{text} ⚠️ regressed (tolerance {fig.rule.tolerance:.0%})"
    return text


def _previous(fig: Figure, last: Optional[int]) -> str:
    if fig.previous is None:
        return "—"
    return _fmt(fig.previous) + ("" if fig.previous_run == last else f" (run #{fig.previous_run})")


def _against_section(cmp: Comparison, history: History) -> list[str]:
    lines = ["", "## Against earlier runs", ""]
    others = (f" ({cmp.others} earlier run(s) of another profile or GPU are not compared)" if cmp.others else "")
    if not cmp.previous:
        lines.append(f"This is run #{cmp.number} of `{HISTORY_FILE}`: no earlier run of this profile and GPU to "
                     f"compare with{others}.")
    else:
        number, run = cmp.previous
        lines += [f"This is run #{cmp.number} of `{HISTORY_FILE}`, against {len(cmp.earlier)} earlier run(s) of "
                  f"this profile and GPU{others}; the previous: {_run_name(number, run)}. A figure regresses when it "
                  "is worse than the previous run's by more than its tolerance (`history` in "
                  "validation/targets.yaml); better is the direction of its targets; a metric without a target "
                  "has no best.", ""]
        regressions = cmp.regressions
        if regressions or cmp.target_changes:
            lines.append(f"**Regressions: {len(regressions) + len(cmp.target_changes)}**")
            lines.append("")
            lines += [f"- {f.task} `{f.key}`: {_fmt(f.previous)} → {_fmt(f.value)}, {_change(f)}"
                      for f in regressions]
            lines += [f"- target {change}" for change in cmp.target_changes]
        else:
            lines.append("No regression beyond the tolerances, and no target that passed in the previous run "
                         "fails now.")
    if history.skipped:
        lines += ["", f"Lines of `{HISTORY_FILE}` that are no run, skipped: " + "; ".join(history.skipped) + "."]
    return lines


def _figures_table(figures: list[Figure], last: Optional[int]) -> list[str]:
    """The targets' figures against the previous run and the best so far."""
    directed = [f for f in figures if f.rule.better]
    if not directed or last is None:
        return []
    lines = ["", "| figure (better) | this run | previous | change | best so far |", "|---|---|---|---|---|"]
    for f in directed:
        best = "—" if f.best is None else f"{_fmt(f.best)} (run #{f.best_run})"
        if f.new_best:
            best += " — this run is better ★"
        lines.append(f"| {f.key} ({f.rule.better}) | {_cell(_fmt(f.value))} | {_previous(f, last)} | "
                     f"{_cell(_change(f))} | {best} |")
    return lines


def _trend_plot(task: str, title: str, figures: list[Figure], judged: list[dict], folder: Path) -> list[str]:
    """The targets' figures over the runs, with the thresholds of the targets judged here (not the not-applicable)."""
    from validation.plots import trends
    directed = [f for f in figures if f.rule.better]
    applicable = {row["id"] for row in judged if row["status"] in ("pass", "fail")}
    thresholds: dict[str, list[float]] = {}
    for target in for_task(task):
        if target.id not in applicable:
            continue
        if target.op in ("lt", "le", "gt", "ge"):
            thresholds.setdefault(target.key, []).append(target.threshold)
        else:
            thresholds.setdefault(target.key, []).extend(target.threshold)
    name = f"trend_{task}.png"
    try:
        drawn = trends(title, {f.key: f.series for f in directed}, folder / name, thresholds,
                       [f.key for f in directed if f.regressed])
    except Exception as exc:  # as for the task's plots: the verdict must still be shown
        import matplotlib.pyplot as plt
        plt.close("all")
        return ["", f"(plot `{name}` could not be drawn: {type(exc).__name__}: {exc})"]
    return ["", f"![{name}]({name})"] if drawn else []


def render(outputs: dict, folder: Path, tasks: Optional[Sequence[type]] = None,
           history: Optional[History] = None) -> str:
    """report.md's text; plots are written into `folder`. `tasks`: the registry (stacks.tasks.TASKS) by default;
    each with .name, .title and .plots. `history`: the stack's earlier runs (validation/history.py), to compare
    each figure with the previous run and the best so far."""
    if tasks is None:
        from stacks.tasks import TASKS  # imports Pulumi: only when a report is made
        tasks = TASKS
    outputs = outputs if isinstance(outputs, dict) else {}
    registry = {t.name: t for t in tasks}
    title = lambda name: registry[name].title if name in registry else name  # noqa: E731
    v = overall(outputs)
    info = outputs.get("validation") if isinstance(outputs.get("validation"), dict) else {}
    run = outputs.get("_run") if isinstance(outputs.get("_run"), dict) else {}
    c = v["counts"]
    lines = [f"# MLOps validation report — stack `{info.get('stack', '?')}`", "",
             f"**Verdict: {v['status']}** — {c['pass']} targets met, {c['fail']} failed, {c['missing']} missing, "
             f"{c['not_applicable']} not applicable on the declared hardware."]
    if v["reasons"]:
        lines += ["", "Why it is FAIL:", ""] + [f"- {_cell(r)}" for r in v["reasons"]]
    lines += ["", f"- Cluster: {info.get('hpc_target', '?')} (`{info.get('cluster_id', '?')}`), "
                  f"profile `{info.get('profile')}`",
              f"- Declared hardware (config): {_declared(v['platform'])}",
              f"- Shared storage: `{info.get('shared_storage', '?')}`"]
    if info.get("note"):
        lines.append(f"- Note: {info['note']}")
    if run:
        lines.append(f"- `pulumi up` exit code {run.get('exit_code')}, {run.get('pulumi_seconds')} s")
    cmp = compare(outputs, history.runs) if history is not None else None
    last = cmp.previous[0] if cmp and cmp.previous else None
    if cmp:
        lines += _against_section(cmp, history)
    not_run = dict(v["not_run"])
    unknown = "unknown: the outputs do not say which tasks were enabled (no `validation` section)"
    not_run.update({t.name: NOT_ENABLED if info else unknown for t in tasks if t.name not in v["enabled"]})
    if not_run:
        lines += ["", "## Tasks not run", "", "| task | why |", "|---|---|"]
        lines += [f"| {_cell(title(name))} (`{name}`) | {_cell(why)} |" for name, why in not_run.items()]
    order = [t.name for t in tasks if t.name in v["tasks"]] + [t for t in v["tasks"] if t not in registry]
    for task in order:
        result, judged = outputs[task], v["tasks"][task]
        metrics = result.get("metrics") or {}
        lines += ["", f"## {title(task)}", "", _hardware(judged["hardware"]), ""] + _targets_table(judged["targets"])
        lines += _job_lines(result)
        lines += _plots(registry.get(task), metrics, folder)
        figures = {f.key: f for f in (cmp.figures.get(task, []) if cmp else [])}
        if last is not None:
            lines += _figures_table(list(figures.values()), last)
            lines += _trend_plot(task, title(task), list(figures.values()), judged["targets"], folder)
        shown = {k: val for k, val in metrics.items() if not isinstance(val, (dict, list))}
        lines += ["", "<details><summary>All metrics</summary>", ""]
        if last is None:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_cell(_fmt(val))} |" for k, val in sorted(shown.items())]
        else:
            lines += ["| metric | value | previous | change |", "|---|---|---|---|"]
            for k, val in sorted(shown.items()):
                fig = figures.get(k)
                before = f"{_previous(fig, last)} | {_cell(_change(fig))}" if fig else "— | —"
                lines.append(f"| {k} | {_cell(_fmt(val))} | {before} |")
        lines += ["", "</details>"]
    if v["notes"]:
        lines += ["", "## Notes", ""] + [f"- {_cell(n)}" for n in v["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    outputs = json.loads(source.read_text())
    report = source.with_name("report.md")
    from stacks.tasks import TASKS  # the registry imports Pulumi
    kept = source.with_name(HISTORY_FILE)
    report.write_text(render(outputs, source.parent, TASKS, load_history(kept) if kept.exists() else None))
    print(f"report: {report} (verdict: {overall(outputs)['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
