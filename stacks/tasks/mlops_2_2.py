"""MLOPS-2.2: the SmolLM2 fine-tune of MLOPS-1.2 on two GPUs through Oumi's distributed launch (torchrun inside
the job, NCCL; gloo ranks on CPU-only nodes), against the 1-GPU run with the same data, steps and global batch:
speedup and scaling efficiency, with the same work checked from what the trainers counted over all ranks."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.tasks import Measured, Task, devices
from stacks.tasks.fixtures import SFT_FILES, llm_finetune, llm_single_gpu
from stacks.tasks.mlops_2_1 import same_work, speedup, two_gpus_on_a_node
from validation.plots import Plot, scaling

# Two runs of the same global batches train the same samples and optimizer steps; their token counts may differ by
# a few records' lengths where the ranks' shards split the data differently.
TOKEN_TOLERANCE = 0.02


class LlmDataParallel(Task):
    name = "mlops_2_2"
    spec = "MLOPS-2.2"
    title = "MLOPS-2.2 Multi-GPU SmolLM2 fine-tuning (1 vs 2 GPUs)"
    data = {"sft": SFT_FILES}
    uses = ("mlops_1_2",)  # its 1-GPU run is this task's baseline
    gpu = True
    plots = (Plot("smollm_scaling.png", scaling("SmolLM2", "logged step")),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        return two_gpus_on_a_node(settings)

    def build(self, run) -> Measured:
        single = llm_single_gpu(run)
        # After the 1-GPU run, so the two never share the node's GPUs (or, on CPU, its cores).
        double = llm_finetune(run, "mlops-2-2-2gpu", gpus=2, opts=pulumi.ResourceOptions(depends_on=[single]))
        both = pulumi.Output.all(single.metrics, double.metrics)
        return Measured(metrics=both.apply(lambda v: compare(*v)),
                        observed=both.apply(lambda v: devices(**{"1gpu": v[0], "2gpu": v[1]})),
                        records={"jobs": pulumi.Output.all(**{"1gpu": single.summary(), "2gpu": double.summary()})},
                        done=[single, double])


def compare(one: dict, two: dict) -> dict:
    """The 2-GPU run against the 1-GPU one: the same work (by the trainers' own counts), so t1/t2 is the speedup."""
    ratio, efficiency = speedup(one, two)
    same = same_work(one, two, ("optimizer_steps", "samples_trained")) and \
        same_work(one, two, ("tokens_trained",), TOKEN_TOLERANCE)
    return {
        "speedup": ratio, "scaling_efficiency": efficiency, "same_work": same,
        "tokens_trained_1gpu": one.get("tokens_trained"), "tokens_trained_2gpu": two.get("tokens_trained"),
        "samples_trained_1gpu": one.get("samples_trained"), "samples_trained_2gpu": two.get("samples_trained"),
        "optimizer_steps_1gpu": one.get("optimizer_steps"), "optimizer_steps_2gpu": two.get("optimizer_steps"),
        "train_seconds_1gpu": one.get("train_seconds"), "train_seconds_2gpu": two.get("train_seconds"),
        "tokens_per_second_1gpu": one.get("tokens_per_second"), "tokens_per_second_2gpu": two.get("tokens_per_second"),
        "mfu_2gpu": two.get("mfu"), "world_size": two.get("world_size"), "backend": two.get("backend"),
        "ranks_reporting": two.get("ranks_reporting"), "ranks_consistent": two.get("ranks_consistent"),
        "ranks_on_gpu": two.get("ranks_on_gpu"), "ranks_wrapped_ddp": two.get("ranks_wrapped_ddp"),
        "replica_max_divergence": two.get("replica_max_divergence"),
        "launcher": two.get("launcher"), "trainer": two.get("trainer"),
        "heldout_loss_dropped": two.get("heldout_loss_dropped"),
        "heldout_loss_before": two.get("heldout_loss_before"), "heldout_loss_after": two.get("heldout_loss_after"),
        "gpu_utilization_mean_percent": (two.get("gpu_utilization") or {}).get("mean_percent"),
        "device": two.get("device"), "device_name": two.get("device_name"),
        "steps": two.get("steps"), "global_batch_size": two.get("global_batch_size"),
        "loss_curve_1gpu": one.get("loss_curve"), "loss_curve_2gpu": two.get("loss_curve"),
        "runs": {"1gpu": one, "2gpu": two},
    }
