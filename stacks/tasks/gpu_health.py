"""GPU health: per GPU of a node, through NVML inside a GRES job (workloads/gpu_health.py): driver and CUDA versions,
ECC errors, retired pages and row remapping, throttle reasons, clocks, power, PCIe and NVLink, judged against what a
healthy node shows (no uncorrectable errors, no throttling at idle, all links up). The facts explain a missed
training target; they are exported whether or not the targets apply."""
from __future__ import annotations

from typing import Optional

from stacks.tasks import Measured, Task, devices


class GpuHealth(Task):
    name = "gpu_health"
    title = "GPU health (NVML: ECC, throttling, clocks, power, PCIe, NVLink)"
    gpu = True

    @classmethod
    def check(cls, settings) -> Optional[str]:
        if not settings.hpc.gpus_per_node:
            return "reads the GPUs of a node through GRES, but hpc.gpusPerNode is 0: leave the task out of `tasks`"
        return None

    def build(self, run) -> Measured:
        s = run.settings
        job = run.jobs.job("gpu-health", "workloads.gpu_health", "--out-dir $JOB_DIR", gpus=s.hpc.gpus_per_node,
                           cpus=1, time_limit_minutes=5)
        return Measured(metrics=job.metrics, observed=job.metrics.apply(lambda m: devices(**{"gpu-health": m})),
                        records={"job": job.summary()}, done=[job])
