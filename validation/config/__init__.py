"""The stack's config schema: the one place that says which keys exist and what they may hold.

One module a section (hpc, training sizes, serving, kubernetes, oumi); the task list comes from the task
registry (stacks/tasks/), and each task states what it needs of the rest (`Task.check`). Pulumi reads the raw
values (stacks/config.py); this module validates them before any resource is made, so a bad value ends the run
with one line naming the key and what is allowed. One resolution rule for every size: `Settings.option(path)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator

from validation.config.base import PROJECT, REPO_ROOT, ConfigError, Section
from validation.config.hpc import Container, EmbeddedCluster, Hpc, SshTarget
from validation.config.kubernetes import (GPU_RESOURCE, GpuOperator, InferenceServiceSettings, Kubernetes)
from validation.config.monitoring import Monitoring
from validation.config.oumi import Oumi
from validation.config.profiles import PROFILES
from validation.config.serving import LOAD_STAGE, ServedLlm, ServedModel, Serving, ServingMinio
from validation.config.training import Cifar, Llm, Mnist, SlurmProbe, StorageCheck

__all__ = ["PROJECT", "REPO_ROOT", "ConfigError", "Settings", "parse", "task_names", "Container", "EmbeddedCluster",
           "Hpc", "SshTarget", "GPU_RESOURCE", "GpuOperator", "InferenceServiceSettings", "Kubernetes", "Monitoring", "Oumi",
           "LOAD_STAGE", "ServedLlm", "ServedModel", "Serving", "ServingMinio", "Cifar", "Llm", "Mnist",
           "SlurmProbe", "StorageCheck", "PROFILES"]


def task_names() -> tuple[str, ...]:
    """Every validation task, in the registry's order (stacks/tasks/: one module a task)."""
    from stacks.tasks import TASKS

    return tuple(task.name for task in TASKS)


class Settings(Section):
    profile: Literal["smoke", "full"] = "smoke"
    tasks: list[str] = Field(default_factory=lambda: list(task_names()), min_length=1)
    hpc: Hpc = Hpc()
    datasets_dir: str = str(REPO_ROOT.parent / "shared" / "datasets")
    storage: StorageCheck = StorageCheck()
    slurm_probe: SlurmProbe = SlurmProbe()
    mnist: Mnist = Mnist()
    cifar: Cifar = Cifar()
    llm: Llm = Llm()
    kubernetes: Optional[Kubernetes] = None  # a real cluster's serving stack (stacks/k8s/)
    serving: Serving = Serving()  # the embedded serving stack (MLOPS-4.1, 4.2, 5.1)
    oumi: Oumi = Oumi()  # MLOPS-3.1, 3.2
    monitoring: Monitoring = Monitoring()  # the monitoring task (stacks/monitoring/)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        known = task_names()
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; the tasks are: {', '.join(known)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a task is listed twice ({tasks})")
        return tasks

    # -- the one resolution rule ----------------------------------------------------------------------------------
    def option(self, path: str):
        """A size or setting by its dotted path (e.g. "llm.max_steps"): the stack's value, else the profile's
        (validation/config/profiles.py), else None, which the workload reads as its own default."""
        value = self
        for part in path.split("."):
            value = getattr(value, part)
        return value if value is not None else PROFILES[self.profile].get(path)

    def options(self, section: str, *keys: str) -> dict:
        """Several options of one section, as keyword arguments (None where the workload decides)."""
        return {key: self.option(f"{section}.{key}") for key in keys}

    # -- where things are ---------------------------------------------------------------------------------------
    def state_dir(self, stack: str) -> str:
        return self.hpc.embedded.state_dir or f"/tmp/mlops-validation/{stack}"

    def shared_storage(self, stack: str) -> str:
        return self.hpc.shared_storage or f"{self.state_dir(stack)}/shared"

    def serving_state_dir(self, stack: str) -> str:
        return self.serving.state_dir or f"/tmp/mlops-validation/{stack}-serving"

    def monitoring_state_dir(self, stack: str) -> str:
        return self.monitoring.state_dir or f"/tmp/mlops-validation/{stack}-monitoring"

    def cluster_python(self) -> str:
        if self.hpc.python:
            return self.hpc.python
        if self.hpc.container.runtime == "apptainer" or self.hpc.target == "ssh":
            return "python3"
        return str(REPO_ROOT / ".venv-workloads" / "bin" / "python")

    def cluster_oumi_python(self) -> str:
        if self.hpc.oumi_python:
            return self.hpc.oumi_python
        if self.hpc.target == "embedded" and self.hpc.container.runtime == "none" and not self.hpc.python:
            return str(REPO_ROOT / ".venv-oumi" / "bin" / "python")
        if self.hpc.container.enabled and not self.hpc.container.image and not self.hpc.python:
            return "python3-oumi"  # in the image the stack builds (workloads/apptainer.def)
        return self.cluster_python()

    def cluster_apptainer(self) -> str:
        if self.hpc.container.apptainer:
            return self.hpc.container.apptainer
        return str(REPO_ROOT / ".tools" / "bin" / "apptainer") if self.hpc.target == "embedded" else "apptainer"

    def oumi_launcher_python(self) -> str:
        return self.oumi.launcher_python or str(REPO_ROOT / ".venv-oumi" / "bin" / "python")

    @property
    def platform(self) -> dict:
        """The hardware this stack declares (not what its jobs report): where GPU and Kubernetes targets apply."""
        return {"gpu": self.hpc.gpu_model, "gpu_key": "hpc.gpu", "gpus_per_node": self.hpc.gpus_per_node,
                "kubernetes": self.kubernetes is not None, "container": self.hpc.container.enabled}


def _key_part(part) -> str:
    # A key as typed, quoted where it is no plain name (a typo with a space or newline stays on one line).
    text = str(part)
    return text if text.replace("-", "_").isidentifier() or text.isdigit() else repr(text)


def _describe(error: dict) -> str:
    key = ".".join(_key_part(part) for part in error["loc"] if part not in ("function-after",))
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {_shorten(repr(got))})"
    return f"{PROJECT}:{key}: {message}{shown}" if key else f"{PROJECT}: {message}"


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse(raw: dict) -> Settings:
    """Validate the raw config values (camelCase keys, as in Pulumi.<stack>.yaml)."""
    try:
        settings = Settings.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    datasets = Path(settings.datasets_dir)
    try:
        found = datasets.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ConfigError(f"{PROJECT}:datasetsDir: not a usable path ({exc.__class__.__name__}): "
                          f"{_shorten(repr(settings.datasets_dir))}") from None
    if not found:
        raise ConfigError(f"{PROJECT}:datasetsDir: no such directory: {_shorten(repr(str(datasets)))}")
    from stacks.tasks import TASKS

    for task in TASKS:
        problem = task.check(settings) if task.name in settings.tasks else None
        if problem:
            raise ConfigError(f"{PROJECT}:tasks: {task.name} {problem}")
    return settings
