"""MLOPS-2.1: CIFAR-10 data-parallel training, run twice with the same global batch, epochs and seed — on one
GPU, then on two (two tasks under srun, DistributedDataParallel over NCCL, gloo on CPU) — to measure the speedup
the second GPU buys. The two runs are judged the same work by what the trainers counted, not by their arguments."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.tasks import Measured, Task, cli_flags, devices
from validation.plots import Plot, scaling

CIFAR_FILES = tuple(f"cifar10_train_part{i}.npz" for i in range(5)) + ("cifar10_test.npz",)


class CifarDataParallel(Task):
    name = "mlops_2_1"
    spec = "MLOPS-2.1"
    title = "MLOPS-2.1 CIFAR-10 data-parallel training (1 vs 2 GPUs)"
    data = {"cifar10": CIFAR_FILES}
    gpu = True
    plots = (Plot("cifar_scaling.png", scaling("CIFAR-10", "epoch")),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        return two_gpus_on_a_node(settings)

    def build(self, run) -> Measured:
        s, data = run.settings, run.dataset("cifar10")
        flags = {"epochs": "cifar.epochs", "global-batch-size": "cifar.global_batch_size",
                 "max-train-samples": "cifar.max_train_samples"}
        extra = cli_flags(s, flags)
        cli = data.path.apply(lambda d: f"--data-dir {d} --out-dir $JOB_DIR{extra}")
        common = dict(cpus=1, time_limit_minutes=s.hpc.job_timeout_minutes, data=[data.digest])
        single = run.jobs.job("mlops-2-1-1gpu", "workloads.cifar10", cli, gpus=1, tasks=1, **common)
        # After the 1-GPU run, so the two never share the node's GPUs (or, on CPU, its cores).
        double = run.jobs.job("mlops-2-1-2gpu", "workloads.cifar10", cli, gpus=2, tasks=2, **common,
                              opts=pulumi.ResourceOptions(depends_on=[single]))
        both = pulumi.Output.all(single.metrics, double.metrics)
        return Measured(metrics=both.apply(lambda v: compare(*v)),
                        observed=both.apply(lambda v: devices(**{"1gpu": v[0], "2gpu": v[1]})),
                        records={"jobs": pulumi.Output.all(**{"1gpu": single.summary(), "2gpu": double.summary()})},
                        done=[single, double])


def two_gpus_on_a_node(settings) -> Optional[str]:
    if settings.hpc.gpus_per_node < 2:
        return (f"needs 2 GPUs on one node, but hpc.gpusPerNode is {settings.hpc.gpus_per_node}: "
                "use a partition with 2 GPUs a node, or leave the task out of `tasks`")
    return None


def same_work(one: dict, two: dict, keys: tuple[str, ...], tolerance: float = 0.0) -> Optional[bool]:
    """Whether two runs did the same work, by what their trainers counted (summed over ranks): each count equal
    within `tolerance` (relative); None when a run did not count it."""
    for key in keys:
        a, b = one.get(key), two.get(key)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return None
        if abs(a - b) > tolerance * max(abs(a), abs(b)):
            return False
    return True


def speedup(one: dict, two: dict) -> tuple[Optional[float], Optional[float]]:
    """t(1 GPU) / t(2 GPUs), and that over the world size the 2-GPU run measured (its scaling efficiency)."""
    if not one.get("train_seconds") or not two.get("train_seconds"):
        return None, None
    ratio = one["train_seconds"] / two["train_seconds"]
    return round(ratio, 3), round(ratio / two["world_size"], 3) if two.get("world_size") else None


def compare(one: dict, two: dict) -> dict:
    """The two runs side by side, and the figures the targets name."""
    ratio, efficiency = speedup(one, two)
    return {
        "test_accuracy": two.get("test_accuracy"), "test_accuracy_1gpu": one.get("test_accuracy"),
        "train_seconds_1gpu": one.get("train_seconds"), "train_seconds_2gpu": two.get("train_seconds"),
        "speedup": ratio, "scaling_efficiency": efficiency,
        "same_work": same_work(one, two, ("samples_trained", "epochs_completed")),
        "samples_trained_1gpu": one.get("samples_trained"), "samples_trained_2gpu": two.get("samples_trained"),
        "world_size": two.get("world_size"), "world_size_1gpu": one.get("world_size"),
        "ranks_reporting": two.get("ranks_reporting"), "ranks_consistent": two.get("ranks_consistent"),
        "ranks_on_gpu": two.get("ranks_on_gpu"),
        "backend": two.get("backend"), "params_in_sync": two.get("params_in_sync"),
        "max_param_divergence": two.get("max_param_divergence"),
        "gpu_utilization_mean_percent": (two.get("gpu_utilization") or {}).get("mean_percent"),
        "device": two.get("device"), "device_name": two.get("device_name"),
        "epochs": two.get("epochs"), "global_batch_size": two.get("global_batch_size"),
        "loss_curve_1gpu": one.get("loss_curve"), "loss_curve_2gpu": two.get("loss_curve"),
        "runs": {"1gpu": one, "2gpu": two},
    }
