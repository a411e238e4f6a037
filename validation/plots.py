"""The report's plots, declared by each task (`plots = (Plot("mnist_loss.png", loss("MNIST", "epoch")),)`).

A factory returns a draw function `(metrics, path) -> bool`: it writes the PNG at `path` and returns True,
or returns False (and writes nothing) when the task's metrics lack the data the plot needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import matplotlib

matplotlib.use("Agg")  # no display on a cluster or in CI
import matplotlib.pyplot as plt  # noqa: E402

Draw = Callable[[dict, Path], bool]


@dataclass(frozen=True)
class Plot:
    file: str  # the PNG's name, beside report.md
    draw: Draw


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def loss(what: str, unit: str) -> Draw:
    """The training loss curve (`loss_curve`, one value a `unit`)."""
    def draw(metrics: dict, path: Path) -> bool:
        curve = metrics.get("loss_curve")
        if not curve:
            return False
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(range(1, len(curve) + 1), curve, marker="o")
        ax.set(xlabel=unit, ylabel="training loss", title=f"{what} training loss")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    return draw


def scaling(what: str, unit: str) -> Draw:
    """1 vs N GPUs: both loss curves (`loss_curve_1gpu`, `loss_curve_2gpu`) and both training times."""
    def draw(metrics: dict, path: Path) -> bool:
        one, two = metrics.get("loss_curve_1gpu"), metrics.get("loss_curve_2gpu")
        if not one or not two:
            return False
        world = metrics.get("world_size")
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
        left.plot(range(1, len(one) + 1), one, marker="o", label="1 GPU")
        left.plot(range(1, len(two) + 1), two, marker="s", label=f"{world} GPUs")
        left.set(xlabel=unit, ylabel="training loss", title=f"{what} training loss")
        left.legend()
        left.grid(alpha=0.3)
        right.bar(["1 GPU", f"{world} GPUs"],
                  [metrics.get("train_seconds_1gpu") or 0, metrics.get("train_seconds_2gpu") or 0])
        right.set(ylabel="training seconds", title=f"speedup {metrics.get('speedup')}x ({metrics.get('backend')})")
        right.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    return draw


def submit_latency() -> Draw:
    """sbatch → job start of each probe job (`submit_to_start_seconds`)."""
    def draw(metrics: dict, path: Path) -> bool:
        latencies = metrics.get("submit_to_start_seconds")
        if not latencies:
            return False
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(range(1, len(latencies) + 1), latencies)
        ax.set(xlabel="job (in order of submission)", ylabel="seconds",
               title="sbatch → job start (includes queueing for the GPUs)")
        ax.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    return draw


def storage_throughput() -> Draw:
    """Shared storage write, read and cross-job read MB/s."""
    def draw(metrics: dict, path: Path) -> bool:
        bars = {k: metrics.get(k) for k in ("write_mb_per_s", "read_mb_per_s", "cross_job_read_mb_per_s")}
        bars = {k.replace("_mb_per_s", "").replace("_", " "): v for k, v in bars.items() if v}
        if not bars:
            return False
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(list(bars), list(bars.values()), color=["#4c72b0", "#55a868", "#c44e52"][: len(bars)])
        size = int(metrics.get("bytes") or 0) >> 20
        ax.set(ylabel="MB/s", title=f"Shared storage ({metrics.get('fs_type')}, {size} MiB file)")
        ax.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    return draw


def serving_latency() -> Draw:
    """P50/P95/P99 and throughput of each load-test stage (`stages`)."""
    def draw(metrics: dict, path: Path) -> bool:
        stages = [st for st in metrics.get("stages") or [] if st.get("p95_ms") is not None]
        if not stages:
            return False
        fig, ax = plt.subplots(figsize=(7, 3))
        x = range(len(stages))
        for offset, key in ((-0.25, "p50_ms"), (0, "p95_ms"), (0.25, "p99_ms")):
            ax.bar([i + offset for i in x], [st.get(key) or 0 for st in stages], width=0.25, label=key[:3].upper())
        ax.set_xticks(list(x), [f"{st.get('stage')}\n{st.get('throughput_rps')} req/s" for st in stages], fontsize=8)
        ax.set(ylabel="latency (ms)", title=f"load test per stage ({metrics.get('device', '?')})")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    return draw


def evaluation() -> Draw:
    """Base vs fine-tuned model: every numeric score of `models` (sample counts left out)."""
    def draw(metrics: dict, path: Path) -> bool:
        models = metrics.get("models") or {}
        keys = sorted({k for scores in models.values() for k, v in (scores or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("samples")})
        if not models or not keys:
            return False
        fig, ax = plt.subplots(figsize=(8, 3))
        width = 0.8 / len(models)
        for i, (label, scores) in enumerate(sorted(models.items())):
            ax.bar([j + (i - (len(models) - 1) / 2) * width for j in range(len(keys))],
                   [(scores or {}).get(k) or 0 for k in keys], width=width, label=label)
        ax.set_xticks(range(len(keys)), keys, fontsize=7, rotation=20, ha="right")
        samples = next(iter(models.values())) or {}
        ax.set(title=f"Oumi evaluation: base vs fine-tuned ({samples.get('gsm8k_samples', '?')} records a set)")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    return draw


def trends(title: str, series: dict[str, list[tuple[int, float]]], path: Path,
           thresholds: Optional[dict[str, list[float]]] = None, regressed: Iterable[str] = ()) -> bool:
    """One panel a metric: its value over the runs of the history (run number → value), this run last, marked
    red where it regressed, with its targets' thresholds as dashed lines. Nothing without two runs of a metric."""
    series = {k: points for k, points in series.items() if len(points) >= 2}
    if not series:
        return False
    thresholds, regressed = thresholds or {}, set(regressed)
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.4 * rows), squeeze=False)
    for ax, (key, points) in zip(axes.flat, sorted(series.items())):
        runs, values = zip(*points)
        ax.plot(runs, values, marker="o", color="#4c72b0")
        ax.plot(runs[-1:], values[-1:], marker="o", markersize=9, color="#c44e52" if key in regressed else "#55a868")
        for line in thresholds.get(key, []):
            ax.axhline(line, linestyle="--", color="grey", linewidth=1)
        ax.set_title(key + (" (regressed)" if key in regressed else ""), fontsize=8)
        ax.set_xticks(runs if len(runs) <= 12 else runs[:: max(1, len(runs) // 6)])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(f"{title}: figures over the runs (run number; dashed: targets)", fontsize=9)
    return _save(fig, path)


def alert_timeline() -> Draw:
    """The injected fault's alert (`timeline`: polls of Prometheus' rule state and Alertmanager, seconds since the
    fault), with the fault's start and end and the measured fire and resolve times."""
    states = {"inactive": 0, "pending": 1, "firing": 2}

    def draw(metrics: dict, path: Path) -> bool:
        polls = [p for p in metrics.get("timeline") or [] if "prometheus" in p]
        if not polls:
            return False
        events = [p for p in metrics["timeline"] if "event" in p]
        fig, ax = plt.subplots(figsize=(7, 3))
        t = [p["t"] for p in polls]
        ax.step(t, [states.get(p["prometheus"], 0) for p in polls], where="post", label="Prometheus rule")
        ax.step(t, [2.2 if p["alertmanager"] == "active" else -0.2 for p in polls], where="post",
                label="Alertmanager active", linestyle="--")
        for e in events:
            ax.axvline(e["t"], color="grey", alpha=0.6)
            ax.annotate(e["event"], (e["t"], 1.5), fontsize=7, rotation=90, ha="right", va="center")
        ax.set_yticks([-0.2, 0, 1, 2, 2.2], ["none", "inactive", "pending", "firing", "active"])
        ax.set(xlabel="seconds since the fault", title=f"{metrics.get('alert')}: fired after "
               f"{metrics.get('alert_fire_seconds')} s, resolved {metrics.get('alert_resolve_seconds')} s after the fix")
        ax.legend(fontsize=7, loc="lower right")


def rollout() -> Draw:
    """MLOPS-5.2 under load: correct and failed answers a second through the router, with the pipeline's events
    (each candidate's registration, gate, switch, rollback) marked (`timeline`)."""
    marks = {"triggered": ("registered", "tab:gray"), "rejected": ("rejected", "tab:red"),
             "switched": ("switched", "tab:green"), "rolled_back": ("rolled back", "tab:orange")}

    def draw(metrics: dict, path: Path) -> bool:
        line = metrics.get("timeline")
        if not line or not line.get("second"):
            return False
        fig, ax = plt.subplots(figsize=(9, 3.2))
        middle = [t + 0.5 for t in line["second"]]  # each count is of the second [t, t + 1)
        ax.plot(middle, line["ok"], label="correct answers/s", color="tab:blue")
        ax.bar(middle, line["failed"], width=1.0, label="failed requests/s", color="tab:red", alpha=0.7)
        labelled = set()
        for e in line.get("events", []):
            if e["event"] in marks:
                text, color = marks[e["event"]]
                ax.axvline(e["t"], color=color, ls="--", lw=1, label=None if text in labelled else text)
                ax.annotate(f"v{e['version']}", (e["t"], ax.get_ylim()[1] * 0.92), fontsize=7, color=color)
                labelled.add(text)
        ax.set(xlabel="seconds since the load started", ylabel="requests",
               title="rollout under load: good candidate, shuffled-label candidate, crash after rollout")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    return draw
