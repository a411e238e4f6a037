"""MLOPS-1.1: train a CNN on the real MNIST as a one-GPU SLURM job, reading the data from shared storage; the
model is saved as TorchScript with its sha256, and re-evaluated from the saved file."""
from __future__ import annotations

from stacks.tasks import Measured, Task, cli_flags, devices
from validation.plots import Plot, loss

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class MnistTraining(Task):
    name = "mlops_1_1"
    spec = "MLOPS-1.1"
    title = "MLOPS-1.1 Single-GPU MNIST training"
    data = {"mnist": MNIST_FILES}
    gpu = True
    plots = (Plot("mnist_loss.png", loss("MNIST", "epoch")),)

    def build(self, run) -> Measured:
        s, data = run.settings, run.dataset("mnist")
        flags = {"epochs": "mnist.epochs", "batch-size": "mnist.batch_size"}
        extra = cli_flags(s, flags)
        job = run.jobs.job("mlops-1-1", "workloads.mnist",
                           data.path.apply(lambda d: f"--data-dir {d} --out-dir $JOB_DIR{extra}"),
                           gpus=1, cpus=s.hpc.cpus_per_task, time_limit_minutes=s.hpc.job_timeout_minutes,
                           data=[data.digest])
        metrics = job.metrics.apply(derived)
        return Measured(metrics=metrics, observed=metrics.apply(lambda m: devices(job=m)),
                        records={"job": job.summary()}, done=[job],
                        provides={"model": metrics.apply(lambda m: m["model"]), "job": job})


def derived(m: dict) -> dict:
    """The job's metrics.json plus the flat figures the targets name."""
    out = dict(m)
    if isinstance(m.get("test_accuracy"), (int, float)) and isinstance(m.get("reevaluated_accuracy"), (int, float)):
        out["reevaluation_delta"] = abs(m["test_accuracy"] - m["reevaluated_accuracy"])
    out["gpu_utilization_mean_percent"] = (m.get("gpu_utilization") or {}).get("mean_percent")
    return out

