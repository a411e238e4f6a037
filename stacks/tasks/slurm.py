"""SLURM itself, measured: login, a burst of small GPU jobs (submission success rate, submit-to-start latency,
the GRES devices each job got) and a GPU request the node cannot give, which must be refused."""
from __future__ import annotations

import pulumi

from stacks.slurm.probe import SlurmProbe, SlurmProbeArgs
from stacks.tasks import Measured, Task
from validation.plots import Plot, submit_latency


class SchedulerCheck(Task):
    name = "slurm"
    title = "SLURM scheduler and GRES"
    plots = (Plot("slurm_latency.png", submit_latency()),)

    def build(self, run) -> Measured:
        s = run.settings
        probe = SlurmProbe("slurm", SlurmProbeArgs(
            connection=run.hpc.connection, cluster_id=run.hpc.cluster_id, root=run.hpc.root,
            partition=s.hpc.partition, gpus_per_node=s.hpc.gpus_per_node, jobs=s.option("slurm_probe.jobs")),
            pulumi.ResourceOptions(depends_on=run.jobs.after))
        return Measured(metrics=probe.metrics, done=[probe])
