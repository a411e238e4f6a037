"""`hpc`: where the SLURM jobs go (the embedded single-node cluster or a site's login node over ssh)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from validation.config.base import Section

class SshTarget(Section):
    """A real login node, reached as a user's laptop would reach it. The key is the secret `sshPrivateKey`."""

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    connect_timeout_seconds: int = Field(10, ge=1, le=300)
    known_hosts_file: Optional[str] = None  # default: the user's ~/.ssh/known_hosts (new hosts are accepted once)


class EmbeddedCluster(Section):
    """The single-node SLURM that the dev stack runs on this machine."""

    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>
    # slurmctld listens on base_port, slurmd on +1, sshd on +2: two stacks can run side by side.
    base_port: int = Field(16817, ge=1024, le=65000)
    cpus: Optional[int] = Field(None, ge=1)  # default: what `slurmd -C` reports
    # How the stack reaches it: "ssh" through its sshd (the path a real login node takes), or "local".
    submit_via: Literal["ssh", "local"] = "ssh"


class Container(Section):
    runtime: Literal["none", "apptainer"] = "none"
    image: Optional[str] = None  # an Apptainer .sif on shared storage

    @model_validator(mode="after")
    def _image_for_apptainer(self) -> "Container":
        if self.runtime == "apptainer" and not self.image:
            raise ValueError("runtime 'apptainer' needs 'image' (path of a .sif on shared storage)")
        return self


class Hpc(Section):
    target: Literal["embedded", "ssh"] = "embedded"
    ssh: Optional[SshTarget] = None
    embedded: EmbeddedCluster = EmbeddedCluster()
    partition: str = Field("debug", min_length=1)
    gpus_per_node: int = Field(2, ge=0, le=16)
    # What the GRES GPUs are: their model (e.g. "NVIDIA H200"), or "none" where the GRES devices are no real GPUs
    # (the embedded default's device nodes). It decides where GPU targets apply, never what a job reports about
    # itself: a job that trains on CPU where GPUs are declared fails. Default: "none" on the embedded cluster;
    # a site with GPUs must name them.
    gpu: Optional[str] = Field(None, min_length=1)
    cpus_per_task: int = Field(2, ge=1, le=512)  # for training jobs
    # BeeGFS (or any shared filesystem) mount seen by the login and compute nodes.
    shared_storage: Optional[str] = None
    container: Container = Container()
    # The workloads' Python on the cluster (an environment path the site names); inside a container: "python3".
    python: Optional[str] = None
    # The Python with Oumi on the cluster (Oumi pins older torch/transformers, so it is its own environment).
    # Default: .venv-oumi on the embedded default, else the same as `python`.
    oumi_python: Optional[str] = None
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
        if self.target == "ssh" and self.gpus_per_node and self.gpu is None:
            raise ValueError(f"gpusPerNode is {self.gpus_per_node}: name the GPU model in 'gpu' (e.g. 'NVIDIA H200'), "
                             "or 'none' if the GRES devices are no real GPUs")
        return self

    @property
    def gpu_model(self) -> Optional[str]:
        """The declared GPU model; None where the stack declares no real GPU."""
        return None if self.gpu in (None, "none") or not self.gpus_per_node else self.gpu


