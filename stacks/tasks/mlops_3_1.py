"""MLOPS-3.1: Oumi's CLI on this machine reaches the cluster over ssh as a laptop would (a per-stack ssh config and
the custom cloud `mlops_slurm`), launches a short SmolLM2 fine-tune with `oumi launch up`, waits for it and brings
its files back with their sha256 checked against the cluster's (stacks/oumi/launch.py)."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.tasks import Measured, Task
from stacks.tasks.fixtures import SFT_FILES, base_model_dir, oumi_site


class OumiLaunchTask(Task):
    name = "mlops_3_1"
    spec = "MLOPS-3.1"
    title = "MLOPS-3.1 Oumi custom cluster: launch over ssh"
    data = {"sft": SFT_FILES}
    uses = ("mlops_1_2", "mlops_2_2")  # one LLM job at a time

    @classmethod
    def check(cls, settings) -> Optional[str]:
        return oumi_needs_ssh(settings)

    def build(self, run) -> Measured:
        from stacks.oumi.launch import OumiLaunch, OumiLaunchArgs

        s = run.settings
        launch = OumiLaunch("mlops-3-1", oumi_site(run), OumiLaunchArgs(
            base_model_dir=base_model_dir(run), steps=s.option("oumi.train_steps"),
            max_length=s.option("oumi.max_length")),
            pulumi.ResourceOptions(depends_on=run.after(*self.uses) + run.jobs.after))
        return Measured(metrics=launch.metrics, done=[launch], provides={"model_dir": launch.model_dir})


def oumi_needs_ssh(settings) -> Optional[str]:
    if settings.hpc.target == "embedded" and settings.hpc.embedded.submit_via == "local":
        return "Oumi reaches the cluster over ssh: set hpc.embedded.submitVia: ssh"
    return None
