"""MLOPS-2.1: CIFAR-10 data-parallel training, run twice with the same global batch, epochs and seed —
on one GPU, then on two (two tasks under srun, DistributedDataParallel over NCCL, gloo on CPU) — to
measure the speedup the second GPU buys."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi

from stacks.slurm.job import WorkloadContext
from stacks.slurm.staging import StagedDirectory, StagedDirectoryArgs, check_against_sums

CIFAR_FILES = [f"cifar10_train_part{i}.npz" for i in range(5)] + ["cifar10_test.npz"]


@dataclass
class CifarDataParallelArgs:
    datasets_dir: str
    epochs: Optional[int] = None
    global_batch_size: Optional[int] = None
    max_train_samples: Optional[int] = None
    cpus_per_rank: int = 1
    time_limit_minutes: int = 30


class CifarDataParallel(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: WorkloadContext, args: CifarDataParallelArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:tasks:CifarDataParallel", name, None, opts)
        datasets = Path(args.datasets_dir)
        files = check_against_sums(datasets / "cifar10", datasets / "SHA256SUMS",
                                   [f"cifar10/{f}" for f in CIFAR_FILES])
        data = StagedDirectory(f"{name}-data", StagedDirectoryArgs(
            connection=ctx.connection, cluster_id=ctx.cluster_id, source=str(datasets / "cifar10"),
            destination=ctx.root.apply(lambda r: f"{r}/datasets/cifar10"), files=files),
            pulumi.ResourceOptions(parent=self))
        extra = "".join(f" --{flag} {value}" for flag, value in (
            ("epochs", args.epochs), ("global-batch-size", args.global_batch_size),
            ("max-train-samples", args.max_train_samples)) if value)
        cli = data.path.apply(lambda d: f"--data-dir {d} --out-dir $JOB_DIR{extra}")
        # Sequential, so the two runs never share the node's GPUs (or, on CPU, its cores).
        self.single = ctx.job(f"{name}-1gpu", "workloads.cifar10", cli, gpus=1, tasks=1, cpus=args.cpus_per_rank,
                              time_limit_minutes=args.time_limit_minutes, opts=pulumi.ResourceOptions(parent=self))
        self.double = ctx.job(f"{name}-2gpu", "workloads.cifar10", cli, gpus=2, tasks=2, cpus=args.cpus_per_rank,
                              time_limit_minutes=args.time_limit_minutes,
                              opts=pulumi.ResourceOptions(parent=self, depends_on=[self.single]))
        self.metrics: pulumi.Output[dict] = pulumi.Output.all(self.single.metrics, self.double.metrics).apply(
            lambda v: compare(*v))
        self.register_outputs({"metrics": self.metrics})


def compare(one: dict, two: dict) -> dict:
    """The two runs side by side, and the figures the targets name."""
    speedup = one["train_seconds"] / two["train_seconds"] if two.get("train_seconds") else None
    util = (two.get("gpu_utilization") or {}).get("mean_percent")
    return {
        "test_accuracy": two.get("test_accuracy"), "test_accuracy_1gpu": one.get("test_accuracy"),
        "train_seconds_1gpu": one.get("train_seconds"), "train_seconds_2gpu": two.get("train_seconds"),
        "speedup": round(speedup, 3) if speedup else None,
        "scaling_efficiency": round(speedup / two["world_size"], 3) if speedup and two.get("world_size") else None,
        "world_size": two.get("world_size"), "world_size_1gpu": one.get("world_size"),
        "backend": two.get("backend"), "params_in_sync": two.get("params_in_sync"),
        "max_param_divergence": two.get("max_param_divergence"),
        "gpu_utilization_mean_percent": util, "device": two.get("device"), "device_name": two.get("device_name"),
        "epochs": two.get("epochs"), "global_batch_size": two.get("global_batch_size"),
        "loss_curve_1gpu": one.get("loss_curve"), "loss_curve_2gpu": two.get("loss_curve"),
        "runs": {"1gpu": one, "2gpu": two},
    }
