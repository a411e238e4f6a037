"""The stack's config schema: the one place that says which keys exist and what they may hold.

Pulumi reads the raw values (stacks/config.py); this module validates them before any resource
is made, so a bad value ends the run with one line naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

PROJECT = "mlops-validation"
REPO_ROOT = Path(__file__).resolve().parent.parent

TaskName = Literal["slurm", "storage", "mlops_1_1", "mlops_2_1"]
ALL_TASKS: tuple[str, ...] = ("slurm", "storage", "mlops_1_1", "mlops_2_1")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


class _Model(BaseModel):
    # camelCase keys in Pulumi.<stack>.yaml, snake_case in Python; unknown keys are typos, so refuse them.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SshTarget(_Model):
    """A real login node, reached as a user's laptop would reach it. The key is the secret `sshPrivateKey`."""

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    connect_timeout_seconds: int = Field(10, ge=1, le=300)
    known_hosts_file: Optional[str] = None  # default: the user's ~/.ssh/known_hosts (new hosts are accepted once)


class EmbeddedCluster(_Model):
    """The single-node SLURM that the dev stack runs on this machine."""

    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>
    # slurmctld listens on base_port, slurmd on +1, sshd on +2: two stacks can run side by side.
    base_port: int = Field(16817, ge=1024, le=65000)
    cpus: Optional[int] = Field(None, ge=1)  # default: what `slurmd -C` reports
    # How the stack reaches it: "ssh" through its sshd (the path a real login node takes), or "local".
    submit_via: Literal["ssh", "local"] = "ssh"


class Container(_Model):
    runtime: Literal["none", "apptainer"] = "none"
    image: Optional[str] = None  # an Apptainer .sif on shared storage

    @model_validator(mode="after")
    def _image_for_apptainer(self) -> "Container":
        if self.runtime == "apptainer" and not self.image:
            raise ValueError("runtime 'apptainer' needs 'image' (path of a .sif on shared storage)")
        return self


class Hpc(_Model):
    target: Literal["embedded", "ssh"] = "embedded"
    ssh: Optional[SshTarget] = None
    embedded: EmbeddedCluster = EmbeddedCluster()
    partition: str = Field("debug", min_length=1)
    gpus_per_node: int = Field(2, ge=0, le=16)
    cpus_per_task: int = Field(2, ge=1, le=512)  # for training jobs
    # BeeGFS (or any shared filesystem) mount seen by the login and compute nodes.
    shared_storage: Optional[str] = None
    container: Container = Container()
    # The workloads' Python on the cluster (an environment path the site names); inside a container: "python3".
    python: Optional[str] = None
    job_timeout_minutes: int = Field(30, ge=1, le=24 * 60)

    @model_validator(mode="after")
    def _target_needs(self) -> "Hpc":
        if self.target == "ssh":
            if self.ssh is None:
                raise ValueError("target 'ssh' needs 'ssh: {host, port, user}'")
            if not self.shared_storage:
                raise ValueError("target 'ssh' needs 'sharedStorage' (the BeeGFS path on the cluster)")
        if self.shared_storage and not self.shared_storage.startswith("/"):
            raise ValueError(f"sharedStorage must be an absolute path (got {self.shared_storage!r})")
        return self


class Mnist(_Model):
    epochs: Optional[int] = Field(None, ge=1, le=100)  # None: the workload's default
    batch_size: Optional[int] = Field(None, ge=1, le=65536)


class Cifar(_Model):
    epochs: Optional[int] = Field(None, ge=1, le=200)
    global_batch_size: Optional[int] = Field(None, ge=2, le=65536)
    max_train_samples: Optional[int] = Field(None, ge=100, le=50000)


class StorageCheck(_Model):
    size_mb: Optional[int] = Field(None, ge=1, le=1024 * 1024)


class SlurmProbe(_Model):
    jobs: Optional[int] = Field(None, ge=1, le=10000)


# Sizes per profile: `smoke` fits 2 CPU cores and CI, `full` a GPU cluster.
PROFILE_DEFAULTS = {
    # cifar_epochs: 3 epochs of the small net reach ~0.72 on 2 CPU cores in about a minute (docs/benchmarks.md);
    # None: the workload's own default (10 epochs of airbench94 on a GPU).
    "smoke": {"storage_mb": 64, "probe_jobs": 10, "cifar_epochs": 3},
    "full": {"storage_mb": 4096, "probe_jobs": 100, "cifar_epochs": None},
}


class Settings(_Model):
    profile: Literal["smoke", "full"] = "smoke"
    tasks: list[TaskName] = Field(default_factory=lambda: list(ALL_TASKS), min_length=1)
    hpc: Hpc = Hpc()
    datasets_dir: str = str(REPO_ROOT.parent / "shared" / "datasets")
    storage: StorageCheck = StorageCheck()
    slurm_probe: SlurmProbe = SlurmProbe()
    mnist: Mnist = Mnist()
    cifar: Cifar = Cifar()

    @property
    def storage_mb(self) -> int:
        return self.storage.size_mb or PROFILE_DEFAULTS[self.profile]["storage_mb"]

    @property
    def probe_jobs(self) -> int:
        return self.slurm_probe.jobs or PROFILE_DEFAULTS[self.profile]["probe_jobs"]

    @property
    def cifar_epochs(self) -> Optional[int]:
        return self.cifar.epochs or PROFILE_DEFAULTS[self.profile]["cifar_epochs"]

    def state_dir(self, stack: str) -> str:
        return self.hpc.embedded.state_dir or f"/tmp/mlops-validation/{stack}"

    def shared_storage(self, stack: str) -> str:
        return self.hpc.shared_storage or f"{self.state_dir(stack)}/shared"

    def cluster_python(self) -> str:
        if self.hpc.python:
            return self.hpc.python
        if self.hpc.container.runtime == "apptainer" or self.hpc.target == "ssh":
            return "python3"
        return str(REPO_ROOT / ".venv-workloads" / "bin" / "python")


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"] if part not in ("function-after",))
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{PROJECT}:{key}: {message}{shown}" if key else f"{PROJECT}: {message}"


def parse(raw: dict) -> Settings:
    """Validate the raw config values (camelCase keys, as in Pulumi.<stack>.yaml)."""
    try:
        settings = Settings.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    datasets = Path(settings.datasets_dir)
    if not datasets.is_dir():
        raise ConfigError(f"{PROJECT}:datasetsDir: no such directory: {datasets}")
    return settings
