"""The validation tasks: one module a task in this package, found here. This registry is the one task list: the
config schema's task names, the data checked before anything starts, the stack outputs, the report's sections
and the acceptance tests all come from it. Adding a task is one new module here plus its rows in
validation/targets.yaml.

A task is written the way ReFrame writes a test, built the way Pulumi builds a component:

    class MnistTraining(Task):
        name = "mlops_1_1"                     # its stack output, and its rows' `task` in targets.yaml
        title = "MLOPS-1.1 Single-GPU MNIST training"
        data = {"mnist": (...files...)}         # staged from datasetsDir, checked against SHA256SUMS first
        uses = ()                              # tasks whose outputs it consumes when they run (they come first)
        gpu = True                             # its jobs must run on the GPUs the stack declares
        plots = (Plot("mnist_loss.png", loss("MNIST", "epoch")),)

        def build(self, run) -> Measured:      # its resources, under one component; what they measured
            ...

Targets (validation/targets.yaml) are kept apart from the tasks, and scoped to the hardware they apply to,
as ReFrame keeps references per system; `result()` judges a task's figures against them.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import pulumi

from validation.plots import Plot
from validation.targets import task_result

if TYPE_CHECKING:
    from stacks.site import Run
    from validation.config import Settings


@dataclass
class Measured:
    """What a task's resources measured, as Pulumi outputs."""

    metrics: pulumi.Input[dict]  # the figures its targets name (flat keys), and the detail behind them
    # What its jobs ran on: {"device", "device_name", "jobs": {label: {"device", "device_name"}}}; "n/a" for
    # platform checks whose targets hold on any hardware.
    observed: pulumi.Input[dict] = field(default_factory=lambda: {"device": "n/a"})
    records: dict[str, pulumi.Input] = field(default_factory=dict)  # exported beside the metrics (job summaries)
    done: list[pulumi.Resource] = field(default_factory=list)  # what later tasks that use this one wait for
    provides: dict[str, Any] = field(default_factory=dict)  # values later tasks consume (a model's path, …)


def cli_flags(settings: "Settings", flags: dict[str, str]) -> str:
    """The workload's flags (" --epochs 3 ...") from settings by dotted path; unset ones are left to the workload."""
    return "".join(f" --{flag} {settings.option(path)}" for flag, path in flags.items()
                   if settings.option(path) is not None)


def devices(**runs: dict) -> dict:
    """What a training task's runs ran on (`Measured.observed`), from each run's metrics: the last run's device, and
    every run's and every rank's by label, so that one rank fallen back to CPU shows."""
    jobs = {}
    for label, m in runs.items():
        jobs[label] = {"device": m.get("device"), "device_name": m.get("device_name")}
        for rank in m.get("rank_devices") or []:  # each rank's own record: device cuda:1, device_type cuda
            jobs[f"{label} rank {rank.get('rank')}"] = {"device": rank.get("device_type") or rank.get("device"),
                                                         "device_name": rank.get("device_name")}
    last = list(runs.values())[-1]
    return {"device": last.get("device"), "device_name": last.get("device_name"), "jobs": jobs}


class Task:
    name: ClassVar[str]
    title: ClassVar[str]
    spec: ClassVar[str] = "platform"  # the matrix row (MLOPS-1.1 …), or "platform" for the checks of the platform
    data: ClassVar[dict[str, tuple[str, ...]]] = {}  # datasets folder -> the files this task stages
    uses: ClassVar[tuple[str, ...]] = ()
    gpu: ClassVar[bool] = False
    plots: ClassVar[tuple[Plot, ...]] = ()

    @classmethod
    def check(cls, settings: "Settings") -> Optional[str]:
        """Why the config cannot run this task (one line naming the keys), or None."""
        return None

    @classmethod
    def platform(cls, settings: "Settings") -> dict:
        """The hardware this task's figures come from, as the config declares it (where its targets apply)."""
        return settings.platform

    def build(self, run: "Run") -> Measured:
        raise NotImplementedError


def discover(path: list[str], package: str) -> tuple[type[Task], ...]:
    """The Task classes that the modules of a package declare, in the matrix's order."""
    modules = [importlib.import_module(f"{package}.{m.name}") for m in pkgutil.iter_modules(path)]
    found = [cls for cls in _all_subclasses(Task) if "name" in cls.__dict__
             and any(cls.__module__ == m.__name__ for m in modules)]
    names = [t.name for t in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"two task modules declare the task name(s) {sorted(duplicates)}")
    known = {cls.name for cls in _all_subclasses(Task) if "name" in cls.__dict__}
    for task in found:
        unknown = [u for u in task.uses if u not in known]
        if unknown:
            raise ValueError(f"task {task.name} uses unknown task(s) {unknown}")
    # The matrix's order: platform checks first, then MLOPS-1.1 … 5.2.
    return tuple(sorted(found, key=lambda t: ("" if t.spec == "platform" else t.spec, t.name)))


def _all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_all_subclasses(direct))]


TASKS: tuple[type[Task], ...] = discover(__path__, __name__)
BY_NAME: dict[str, type[Task]] = {t.name: t for t in TASKS}


def build_order(enabled: list[str], registry: tuple[type[Task], ...] = TASKS) -> list[type[Task]]:
    """The enabled tasks, each after the enabled tasks it uses (matrix order among the rest)."""
    pending = [t for t in registry if t.name in enabled]
    ordered: list[type[Task]] = []
    while pending:
        done = {o.name for o in ordered}
        ready = next((t for t in pending if all(u not in enabled or u in done for u in t.uses)), None)
        if ready is None:
            raise ValueError(f"tasks {[t.name for t in pending]} use each other in a cycle")
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def data_needs(enabled: list[str], registry: tuple[type[Task], ...] = TASKS) -> dict[str, list[str]]:
    """Every dataset file the enabled tasks stage, by folder (for the check before anything starts)."""
    needs: dict[str, list[str]] = {}
    for task in registry:
        if task.name in enabled:
            for folder, files in task.data.items():
                needs.setdefault(folder, [])
                needs[folder] += [f for f in files if f not in needs[folder]]
    return needs


def result(task: type[Task], measured: Measured, platform: dict) -> pulumi.Output[dict]:
    """The task's stack output: its metrics, what it ran on, its records and each target's verdict."""
    labels = list(measured.records)
    return pulumi.Output.all(measured.metrics, measured.observed, *measured.records.values()).apply(
        lambda v: task_result(task.name, v[0], v[1], platform, **dict(zip(labels, v[2:]))))
