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
    """`hpc.container`: the workload jobs run under `apptainer exec` (stacks/slurm/container.py)."""

    runtime: Literal["none", "apptainer"] = "none"
    # A site's .sif on shared storage. Left out on the embedded cluster: the stack builds one from
    # workloads/apptainer.def (and rebuilds it when the definition or the workloads' requirements change).
    image: Optional[str] = None
    # How `apptainer exec` gets its privileges: "plain" as a site's users run it; "no-privs" (all capabilities
    # dropped), "drop-caps" (only CAP_SYS_RESOURCE dropped) or "userns" (a user namespace, squashfuse). Default:
    # "no-privs" on the embedded cluster, whose root lacks CAP_SYS_RESOURCE so that plain exec fails there
    # (../shared/vendor/README.md), else "plain".
    exec_mode: Optional[Literal["plain", "no-privs", "drop-caps", "userns"]] = None
    # Paths bound besides the stack's folder on shared storage; each must exist on the node (the job checks).
    binds: list[str] = Field(default_factory=list)
    # The apptainer command on the cluster. Default: setup's .tools/bin/apptainer on the embedded cluster.
    apptainer: Optional[str] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _absolute(self) -> "Container":
        for path in [self.image, *self.binds]:
            if path is not None and not path.startswith("/"):
                raise ValueError(f"image and binds must be absolute paths (got {path!r})")
        return self

    @property
    def enabled(self) -> bool:
        return self.runtime == "apptainer"


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
        if self.target == "ssh" and self.container.enabled and not self.container.image:
            raise ValueError("container: runtime 'apptainer' on target 'ssh' needs 'image' (a .sif on shared storage); "
                             "only the embedded cluster builds its own")
        if self.shared_storage and not self.shared_storage.startswith("/"):
            raise ValueError(f"sharedStorage must be an absolute path (got {self.shared_storage!r})")
        if self.target == "ssh" and self.gpus_per_node and self.gpu is None:
            raise ValueError(f"gpusPerNode is {self.gpus_per_node}: name the GPU model in 'gpu' (e.g. 'NVIDIA H200'), "
                             "or 'none' if the GRES devices are no real GPUs")
        return self

    @property
    def container_exec_mode(self) -> str:
        return self.container.exec_mode or ("no-privs" if self.target == "embedded" else "plain")

    @property
    def gpu_model(self) -> Optional[str]:
        """The declared GPU model; None where the stack declares no real GPU."""
        return None if self.gpu in (None, "none") or not self.gpus_per_node else self.gpu


