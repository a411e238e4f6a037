"""MLOPS-3.2: `oumi evaluate` as a cluster job launched through Oumi (as in MLOPS-3.1), on the base SmolLM2 and the
fine-tuned model (MLOPS-1.2's, else MLOPS-3.1's): GSM8K exact match and reference perplexity, Self-Instruct ROUGE-L
F1 and perplexity, through custom evaluation functions (stacks/oumi/evaluation.py, workloads/oumi_eval.py)."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.tasks import Measured, Task
from stacks.tasks.fixtures import SFT_FILES, base_model_dir, oumi_site
from stacks.tasks.mlops_3_1 import oumi_needs_ssh
from validation.plots import Plot, evaluation


class OumiEvaluationTask(Task):
    name = "mlops_3_2"
    spec = "MLOPS-3.2"
    title = "MLOPS-3.2 Oumi evaluation: base vs fine-tuned"
    data = {"sft": SFT_FILES}
    uses = ("mlops_1_2", "mlops_2_2", "mlops_3_1")
    plots = (Plot("oumi_evaluation.png", evaluation()),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        return oumi_needs_ssh(settings)

    def build(self, run) -> Measured:
        from stacks.oumi.evaluation import OumiEvaluation, OumiEvaluationArgs

        s = run.settings
        finetuned = run.provided("mlops_1_2", "model_dir") or run.provided("mlops_3_1", "model_dir")
        samples = s.option("oumi.eval_samples")
        evaluated = OumiEvaluation("mlops-3-2", oumi_site(run), OumiEvaluationArgs(
            base_model_dir=base_model_dir(run), finetuned_model_dir=finetuned, samples=samples,
            max_new_tokens=s.option("oumi.max_new_tokens")),
            pulumi.ResourceOptions(depends_on=run.after(*self.uses) + run.jobs.after))
        return Measured(metrics=evaluated.metrics.apply(lambda m: scored_fractions(m, samples)), done=[evaluated])


def scored_fractions(metrics: dict, requested: int) -> dict:
    """Per model and eval set, the fraction of the requested records that got a score (a model or a scorer that
    breaks on some records shows here, where a presence check would pass)."""
    out = dict(metrics)
    for label in metrics.get("models") or {}:
        for evalset in ("gsm8k", "self_instruct"):
            scored = metrics.get(f"{label}_{evalset}_samples")
            out[f"{label}_{evalset}_scored_fraction"] = round(scored / requested, 4) \
                if isinstance(scored, (int, float)) else None
    return out
