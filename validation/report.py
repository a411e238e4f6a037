"""Turn a stack's outputs (`pulumi stack output --json`) into a report a person can read: report.md with
a verdict table per task and plots beside it. The overall verdict is validation/verdict.py's; titles and
plots come from the task registry (stacks/tasks).

    python -m validation.report reports/dev/outputs.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

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


def render(outputs: dict, folder: Path, tasks: Optional[Sequence[type]] = None) -> str:
    """report.md's text; plots are written into `folder`. `tasks`: the registry (stacks.tasks.TASKS) by default;
    each with .name, .title and .plots."""
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
        shown = {k: val for k, val in metrics.items() if not isinstance(val, (dict, list))}
        lines += ["", "<details><summary>All metrics</summary>", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(_fmt(val))} |" for k, val in sorted(shown.items())]
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
    report.write_text(render(outputs, source.parent, TASKS))
    print(f"report: {report} (verdict: {overall(outputs)['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
