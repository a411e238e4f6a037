"""Turn a stack's outputs (`pulumi stack output --json`) into a report a person can read: report.md with
a verdict table per task and plots beside it.

    python -m validation.report reports/dev/outputs.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster or in CI
import matplotlib.pyplot as plt  # noqa: E402

STATUS = {"pass": "✅ pass", "fail": "❌ FAIL", "not_applicable": "➖ not applicable", "missing": "❌ MISSING"}
TITLES = {"slurm": "SLURM scheduler and GRES", "storage": "Shared storage (BeeGFS at a site)",
          "mlops_1_1": "MLOPS-1.1 Single-GPU MNIST training",
          "mlops_1_2": "MLOPS-1.2 Single-GPU SmolLM2 fine-tuning with Oumi",
          "mlops_2_1": "MLOPS-2.1 CIFAR-10 data-parallel training (1 vs 2 GPUs)",
          "mlops_2_2": "MLOPS-2.2 Multi-GPU SmolLM2 fine-tuning (1 vs 2 GPUs)",
          "mlops_3_1": "MLOPS-3.1 Oumi custom cluster: launch over ssh",
          "mlops_3_2": "MLOPS-3.2 Oumi evaluation: base vs fine-tuned",
          "mlops_4_1": "MLOPS-4.1 CPU inference (MNIST, KServe)",
          "mlops_4_2": "MLOPS-4.2 LLM inference (SmolLM2, KServe)",
          "mlops_5_1": "MLOPS-5.1 Train → register → sync → deploy"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _targets_table(result: dict) -> list[str]:
    lines = ["| target | spec says | measured | verdict |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        verdict = STATUS[t["status"]] + (f" — {t['reason']}" if t.get("reason") else "")
        source = "" if t.get("source") == "spec" else " (project goal)"
        lines.append(f"| {t['metric']}{source} | {t['target']} | {_fmt(t.get('value'))} | {verdict} |")
    return lines


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_loss(metrics: dict, path: Path, what: str = "MNIST", unit: str = "epoch") -> bool:
    curve = metrics.get("loss_curve")
    if not curve:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(curve) + 1), curve, marker="o")
    ax.set(xlabel=unit, ylabel="training loss", title=f"{what} training loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_scaling(metrics: dict, path: Path, what: str = "CIFAR-10", unit: str = "epoch") -> bool:
    one, two = metrics.get("loss_curve_1gpu"), metrics.get("loss_curve_2gpu")
    if not one or not two:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    left.plot(range(1, len(one) + 1), one, marker="o", label="1 GPU")
    left.plot(range(1, len(two) + 1), two, marker="s", label=f"{metrics.get('world_size')} GPUs")
    left.set(xlabel=unit, ylabel="training loss", title=f"{what} training loss")
    left.legend()
    left.grid(alpha=0.3)
    right.bar(["1 GPU", f"{metrics.get('world_size')} GPUs"],
              [metrics.get("train_seconds_1gpu") or 0, metrics.get("train_seconds_2gpu") or 0])
    right.set(ylabel="training seconds", title=f"speedup {metrics.get('speedup')}x ({metrics.get('backend')})")
    right.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_latency(metrics: dict, path: Path) -> bool:
    latencies = metrics.get("submit_to_start_seconds")
    if not latencies:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(1, len(latencies) + 1), latencies)
    ax.set(xlabel="job (in order of submission)", ylabel="seconds",
           title="sbatch → job start (includes queueing for the GPUs)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_storage(metrics: dict, path: Path) -> bool:
    bars = {k: metrics.get(k) for k in ("write_mb_per_s", "read_mb_per_s", "cross_job_read_mb_per_s")}
    bars = {k.replace("_mb_per_s", "").replace("_", " "): v for k, v in bars.items() if v}
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(bars), list(bars.values()), color=["#4c72b0", "#55a868", "#c44e52"][: len(bars)])
    ax.set(ylabel="MB/s", title=f"Shared storage ({metrics.get('fs_type')}, {metrics.get('bytes', 0) >> 20} MiB file)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_serving(metrics: dict, path: Path) -> bool:
    stages = [st for st in metrics.get("stages") or [] if st.get("p95_ms") is not None]
    if not stages:
        return False
    fig, ax = plt.subplots(figsize=(7, 3))
    x = range(len(stages))
    for offset, key in ((-0.25, "p50_ms"), (0, "p95_ms"), (0.25, "p99_ms")):
        ax.bar([i + offset for i in x], [st.get(key) or 0 for st in stages], width=0.25, label=key[:3].upper())
    ax.set_xticks(list(x), [f"{st['stage']}\n{st.get('throughput_rps')} req/s" for st in stages], fontsize=8)
    ax.set(ylabel="latency (ms)", title=f"load test per stage ({metrics.get('device', '?')})")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_evaluation(metrics: dict, path: Path) -> bool:
    models = metrics.get("models") or {}
    keys = sorted({k for scores in models.values() for k, v in scores.items()
                   if isinstance(v, (int, float)) and not k.endswith("samples")})
    if not models or not keys:
        return False
    fig, ax = plt.subplots(figsize=(8, 3))
    for i, (label, scores) in enumerate(sorted(models.items())):
        ax.bar([j + (i - 0.5) * 0.4 for j in range(len(keys))], [scores.get(k) or 0 for k in keys], width=0.4,
               label=label)
    ax.set_xticks(range(len(keys)), keys, fontsize=7, rotation=20, ha="right")
    ax.set(title=f"Oumi evaluation: base vs fine-tuned ({next(iter(models.values())).get('gsm8k_samples', '?')} "
                 "records a set)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


PLOTS = {"mlops_1_1": [("mnist_loss.png", _plot_loss)],
         "mlops_1_2": [("smollm_loss.png", lambda m, p: _plot_loss(m, p, "SmolLM2 (Oumi)", "logged step"))],
         "mlops_2_1": [("cifar_scaling.png", _plot_scaling)],
         "mlops_2_2": [("smollm_scaling.png", lambda m, p: _plot_scaling(m, p, "SmolLM2 (Oumi)", "logged step"))],
         "mlops_3_2": [("oumi_evaluation.png", _plot_evaluation)],
         "mlops_4_1": [("cpu_serving_latency.png", _plot_serving)],
         "mlops_4_2": [("llm_serving_latency.png", _plot_serving)],
         "slurm": [("slurm_latency.png", _plot_latency)],
         "storage": [("storage_throughput.png", _plot_storage)]}


def render(outputs: dict, folder: Path) -> str:
    info = outputs.get("validation", {})
    run = outputs.get("_run", {})
    tasks = [t for t in info.get("tasks", TITLES) if t in outputs]
    counts = {"pass": 0, "fail": 0, "not_applicable": 0, "missing": 0}
    for task in tasks:
        for status, n in outputs[task].get("summary", {}).items():
            counts[status] += n
    ok = counts["fail"] == 0 and counts["missing"] == 0 and run.get("exit_code", 0) == 0
    lines = [f"# MLOps validation report — stack `{info.get('stack', '?')}`", "",
             f"**Verdict: {'PASS' if ok else 'FAIL'}** — {counts['pass']} targets met, {counts['fail']} failed, "
             f"{counts['missing']} missing, {counts['not_applicable']} not applicable on this hardware.", "",
             f"- Cluster: {info.get('hpc_target', '?')} (`{info.get('cluster_id', '?')}`), profile `{info.get('profile')}`",
             f"- Shared storage: `{info.get('shared_storage', '?')}`"]
    if info.get("note"):
        lines.append(f"- Note: {info['note']}")
    if run:
        lines.append(f"- `pulumi up` exit code {run.get('exit_code')}, {run.get('pulumi_seconds')} s")
    missing_tasks = [t for t in info.get("tasks", []) if t not in outputs]
    if missing_tasks:
        lines.append(f"- **Tasks with no output (their resources failed):** {', '.join(missing_tasks)}")
    for task in tasks:
        result = outputs[task]
        lines += ["", f"## {TITLES.get(task, task)}", ""] + _targets_table(result)
        for job in [result["job"]] if result.get("job") else list(result.get("jobs", {}).values()):
            lines += ["", f"SLURM job {job.get('job_id')} on `{job.get('node')}`: {job.get('state')}, exit "
                          f"{job.get('exit_code')}, {job.get('elapsed_seconds')} s; GRES environment "
                          f"`CUDA_VISIBLE_DEVICES={job.get('gres_env', {}).get('CUDA_VISIBLE_DEVICES')}`; "
                          f"log `{job.get('log_path')}`"]
        for name, plot in PLOTS.get(task, []):
            if plot(result.get("metrics", {}), folder / name):
                lines += ["", f"![{name}]({name})"]
        shown = {k: v for k, v in result.get("metrics", {}).items() if not isinstance(v, (dict, list))}
        lines += ["", "<details><summary>All metrics</summary>", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(shown.items())]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    outputs = json.loads(source.read_text())
    report = source.with_name("report.md")
    report.write_text(render(outputs, source.parent))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
