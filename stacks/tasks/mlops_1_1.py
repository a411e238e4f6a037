"""MLOPS-1.1: train a CNN on the real MNIST as a one-GPU SLURM job, reading the data from shared storage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi

from stacks.slurm.job import WorkloadContext
from stacks.slurm.staging import StagedDirectory, StagedDirectoryArgs, check_against_sums

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@dataclass
class MnistTrainingArgs:
    datasets_dir: str  # holds mnist/ and SHA256SUMS (shared/datasets here; a site's staging area there)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    time_limit_minutes: int = 30


class MnistTraining(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: WorkloadContext, args: MnistTrainingArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:tasks:MnistTraining", name, None, opts)
        datasets = Path(args.datasets_dir)
        files = check_against_sums(datasets / "mnist", datasets / "SHA256SUMS", [f"mnist/{f}" for f in MNIST_FILES])
        data = StagedDirectory(f"{name}-data", StagedDirectoryArgs(
            connection=ctx.connection, cluster_id=ctx.cluster_id, source=str(datasets / "mnist"),
            destination=ctx.root.apply(lambda r: f"{r}/datasets/mnist"), files=files),
            pulumi.ResourceOptions(parent=self))
        extra = "".join(f" --{flag} {value}" for flag, value in
                        (("epochs", args.epochs), ("batch-size", args.batch_size)) if value)
        self.job = ctx.job(name, "workloads.mnist",
                           data.path.apply(lambda d: f"--data-dir {d} --out-dir $JOB_DIR{extra}"),
                           gpus=1, cpus=ctx.cpus_per_task, time_limit_minutes=args.time_limit_minutes,
                           opts=pulumi.ResourceOptions(parent=self))
        self.staging = pulumi.Output.all(data.bytes, data.seconds, data.mb_per_s).apply(
            lambda v: {"bytes": v[0], "seconds": v[1], "mb_per_s": v[2]})
        self.metrics: pulumi.Output[dict] = self.job.metrics.apply(_derived)
        self.register_outputs({"metrics": self.metrics})


def _derived(m: dict) -> dict:
    """The job's metrics.json plus the flat figures the targets name."""
    util = m.get("gpu_utilization") or {}
    out = dict(m)
    if isinstance(m.get("test_accuracy"), (int, float)) and isinstance(m.get("reevaluated_accuracy"), (int, float)):
        out["reevaluation_delta"] = abs(m["test_accuracy"] - m["reevaluated_accuracy"])
    if util.get("mean_percent") is not None:
        out["gpu_utilization_mean_percent"] = util["mean_percent"]
    return out
