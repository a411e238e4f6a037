"""The site one `pulumi up` validates, as the tasks see it: the settings and secrets, the SLURM cluster (embedded
or a site's login node), the workloads' code and the data sets on its shared storage, and what the tasks built
before. Tasks share components through `fixture` (built once, by the first task that needs it)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import pulumi

from stacks import config
from stacks.slurm.container import ContainerImage, ContainerRun, inside_fraction
from stacks.slurm.job import WorkloadContext
from stacks.slurm.staging import (StagedDirectory, StagedDirectoryArgs, check_against_sums, manifest,
                                  manifest_digest, preflight)
from stacks.slurm.target import HpcTarget, HpcTargetArgs
from stacks.tasks import BY_NAME, Measured, Task, data_needs
from validation.config import Settings

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
T = TypeVar("T")


@dataclass
class Dataset:
    """A data set staged on shared storage: its folder there, and the digest of its files (new data re-runs jobs)."""

    path: pulumi.Output[str]
    digest: str


@dataclass
class Run:
    cfg: config.StackConfig
    hpc: HpcTarget
    jobs: WorkloadContext  # submits the workloads as SLURM jobs (stacks/slurm/job.py)
    image: Any = None  # hpc.container on the embedded cluster: the image the stack built (stacks/slurm/container.py)
    built: dict[str, Measured] = field(default_factory=dict)
    _fixtures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: config.StackConfig) -> "Run":
        """Check the enabled tasks' data, then bring up the cluster target and stage the workloads' code."""
        s = cfg.settings
        try:
            preflight(s.datasets_dir, data_needs(s.tasks))
        except (OSError, ValueError) as exc:
            raise pulumi.RunError(f"dataset check failed: {exc}") from None
        hpc = HpcTarget("hpc", HpcTargetArgs(settings=s, stack=cfg.stack, ssh_private_key=cfg.ssh_private_key))
        code_files = manifest(WORKLOADS)
        code = StagedDirectory("workloads-code", StagedDirectoryArgs(
            connection=hpc.connection, cluster_id=hpc.cluster_id, source=str(WORKLOADS),
            destination=hpc.root.apply(lambda r: f"{r}/code/workloads"), files=code_files))
        image, container = None, None
        if s.hpc.container.enabled:
            if not s.hpc.container.image:  # the embedded cluster builds its own from workloads/apptainer.def
                image = ContainerImage("workloads-image", hpc.root.apply(lambda r: f"{r}/images"),
                                       s.cluster_apptainer(), s.hpc.container_exec_mode)
            run = dict(apptainer=s.cluster_apptainer(), exec_mode=s.hpc.container_exec_mode,
                       binds=tuple(s.hpc.container.binds), nv=s.hpc.gpu_model is not None)
            container = pulumi.Output.all(image.path, image.sha256).apply(
                lambda v: ContainerRun(image=v[0], expected_sha256=v[1], **run)) if image else \
                ContainerRun(image=s.hpc.container.image, **run)
        jobs = WorkloadContext(
            connection=hpc.connection, cluster_id=hpc.cluster_id, root=hpc.root,
            code_dir=code.path.apply(lambda p: p.rsplit("/", 1)[0]), python=s.cluster_python(),
            partition=s.hpc.partition, gpus_per_node=s.hpc.gpus_per_node, cpus_per_task=s.hpc.cpus_per_task,
            container=container, code_version=manifest_digest(code_files),
            submit_via="local" if s.hpc.target == "embedded" and s.hpc.embedded.submit_via == "local" else "ssh")
        return cls(cfg=cfg, hpc=hpc, jobs=jobs, image=image)

    @property
    def settings(self) -> Settings:
        return self.cfg.settings

    @property
    def stack(self) -> str:
        return self.cfg.stack

    def build(self, task: type[Task]) -> Measured:
        """Build one task. The platform checks (GPU health, the scheduler, storage) run one after the other on a quiet
        cluster, and every later task's jobs wait for them: the probe's concurrent GPU jobs must not queue behind
        the training jobs, nor a health check read GPUs that are training."""
        platform_done = [r for name, m in self.built.items() if BY_NAME[name].spec == "platform" for r in m.done]
        self.jobs = replace(self.jobs, after=platform_done)
        first = len(self.jobs.made)
        measured = task().build(self)
        if self.settings.hpc.container.enabled and self.jobs.made[first:]:
            measured = replace(measured, metrics=self._with_container(measured.metrics, self.jobs.made[first:]))
        self.built[task.name] = measured
        return measured

    def _with_container(self, metrics: pulumi.Input[dict], jobs: list) -> pulumi.Output[dict]:
        """The task's metrics plus what its jobs measured of the container (hpc.container): each job's facts, and
        the share of them whose workload recorded it ran inside the image (the target `<task>_in_container`)."""
        container = pulumi.Output.from_input(self.jobs.container)
        return pulumi.Output.all(metrics, container, *(j.container for j in jobs)).apply(lambda v: {
            **v[0], "container": {"image": v[1].image, "built_sha256": v[1].expected_sha256,
                                  "jobs": {j.job_name: c for j, c in zip(jobs, v[2:])}},
            "container_jobs_inside": inside_fraction(list(v[2:]), v[1].image, v[1].expected_sha256)})

    def runs(self, task: str) -> bool:
        return task in self.settings.tasks

    def provided(self, task: str, key: str, default: Any = None) -> Any:
        """A value an earlier task provides (its model, …), or the default when that task does not run."""
        return self.built[task].provides.get(key, default) if task in self.built else default

    def after(self, *tasks: str) -> list[pulumi.Resource]:
        """What the named tasks' resources were, for depends_on: those that run come first."""
        return [r for t in tasks if t in self.built for r in self.built[t].done]

    def fixture(self, name: str, make: Callable[["Run"], T]) -> T:
        """A component that several tasks share, made by the first that asks for it."""
        if name not in self._fixtures:
            self._fixtures[name] = make(self)
        return self._fixtures[name]

    def made(self, name: str) -> Any:
        """A fixture an earlier task made, or None (what the monitoring task watches)."""
        return self._fixtures.get(name)

    def dataset(self, folder: str) -> Dataset:
        """The folder of datasetsDir, with every file the enabled tasks need of it, staged once on shared storage."""
        def stage(run: "Run") -> Dataset:
            s = run.settings
            root = Path(s.datasets_dir)
            names = data_needs(s.tasks)[folder]
            files = check_against_sums(root / folder, root / "SHA256SUMS", [f"{folder}/{n}" for n in names])
            staged = StagedDirectory(f"data-{folder}", StagedDirectoryArgs(
                connection=run.hpc.connection, cluster_id=run.hpc.cluster_id, source=str(root / folder),
                destination=run.hpc.root.apply(lambda r: f"{r}/datasets/{folder}"), files=files))
            return Dataset(path=staged.path, digest=manifest_digest(files))

        return self.fixture(f"dataset:{folder}", stage)
