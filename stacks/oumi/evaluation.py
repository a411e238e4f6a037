"""MLOPS-3.2: `oumi evaluate` as a cluster job launched through Oumi (as in MLOPS-3.1), on the base SmolLM2 and,
when given, the fine-tuned model: GSM8K test subset (exact match of the final answer, loss/perplexity of the
reference solutions) and the Self-Instruct user-oriented eval set (ROUGE-L F1, reference loss/perplexity), through
the custom evaluation functions of workloads/oumi_eval.py. Exports both models' scores and their difference; the
result files come back to reports/<stack>/oumi/.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
import yaml

from stacks.oumi.launch import (EXPORTED, CLOUD_MODULE, EVAL_MODULE, REPO, OumiSiteArgs, checked_copies,
                                file_summary, launch)

EVAL_CONFIG = REPO / "workloads" / "oumi" / "mlops_eval.yaml"
GSM8K = "sft/gsm8k_test.jsonl"
SELF_INSTRUCT = "sft/eval/self_instruct_user_oriented_eval.jsonl"
# (task, key in its result) -> flat metric name
SCORES = {("mlops_gsm8k", "exact_match"): "gsm8k_exact_match", ("mlops_gsm8k", "loss"): "gsm8k_loss",
          ("mlops_gsm8k", "perplexity"): "gsm8k_perplexity",
          ("mlops_self_instruct", "rouge_l_f1"): "self_instruct_rouge_l_f1",
          ("mlops_self_instruct", "loss"): "self_instruct_loss",
          ("mlops_self_instruct", "perplexity"): "self_instruct_perplexity"}


def eval_config(base: dict, samples: int, max_new_tokens: int, batch_size: int) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["generation"].update(max_new_tokens=max_new_tokens, batch_size=batch_size)
    for task in cfg["tasks"]:
        task["num_samples"] = samples
    return cfg


def run_script(python: str, models: dict) -> str:
    """The job: one `oumi evaluate` per model, each into @OUT@/<label>."""
    py = shlex.quote(python)
    lines = ["set -euo pipefail", "mkdir -p @OUT@", 'echo "$PWD/oumi_eval.py" > oumi_extra_deps.txt',
             'export OUMI_EXTRA_DEPS_FILE="$PWD/oumi_extra_deps.txt"']
    for label, model in models.items():
        lines.append(f"{py} -m oumi evaluate -c mlops_eval.yaml --model.model_name {shlex.quote(model)} "
                     f"--output_dir @OUT@/{label}")
    return "\n".join(lines) + "\n"


def scores_from_files(files: list, label: str) -> dict:
    """One model's flat scores from its retrieved task_result.json files (custom_<time>/task_result.json)."""
    scores = {}
    for f in files:
        parts = Path(f["name"]).parts
        if parts[0] != label or parts[-1] != "task_result.json" or not f.get("local_path"):
            continue
        results = json.loads(Path(f["local_path"]).read_text()).get("results", {})
        for (task, key), metric in SCORES.items():
            if key in results.get(task, {}):
                scores[metric] = results[task][key]
        for task, values in results.items():
            if "num_samples" in values:
                scores[f"{task.removeprefix('mlops_')}_samples"] = values["num_samples"]
    return scores


def eval_metrics(o: dict, labels: list[str]) -> dict:
    files = o.get("files") or []
    models = {label: scores_from_files(files, label) for label in labels}
    out = {"connect_seconds": o["connect_seconds"], "submit_to_start_seconds": o["submit_to_start_seconds"],
           "final_state": o["final_state"], "slurm_job_id": o["job_id"], "exit_code": o["exit_code"],
           "job_completed": int(o["final_state"] == "COMPLETED"), "run_seconds": o["run_seconds"],
           "oumi_launch_seconds": o["oumi_launch_seconds"], "ssh_master_closed": int(bool(o["ssh_master_closed"])),
           "results": file_summary(files), "results_intact": file_summary(files)["all_intact"],
           "report_dir": o["report_dir"], "models": models}
    for label, scores in models.items():
        out.update({f"{label}_{k}": v for k, v in scores.items()})
    if "finetuned" in models:
        out["difference"] = {k: models["finetuned"][k] - models["base"][k] for k in SCORES.values()
                             if isinstance(models["base"].get(k), (int, float))
                             and isinstance(models["finetuned"].get(k), (int, float))}
    return out


@dataclass
class OumiEvaluationArgs:
    base_model_dir: pulumi.Input[str]
    finetuned_model_dir: Optional[pulumi.Input[str]] = None
    samples: int = 8
    max_new_tokens: int = 160
    batch_size: int = 8


class OumiEvaluation(pulumi.ComponentResource):
    def __init__(self, name: str, site: OumiSiteArgs, args: OumiEvaluationArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:oumi:Evaluation", name, None, opts)
        copies, data_digest = checked_copies(site.datasets_dir, [GSM8K, SELF_INSTRUCT])
        config = yaml.safe_dump(eval_config(yaml.safe_load(EVAL_CONFIG.read_text()), args.samples,
                                            args.max_new_tokens, args.batch_size), sort_keys=False)
        files = {"mlops_eval.yaml": config, "oumi_eval.py": EVAL_MODULE.read_text()}
        self.labels = ["base"] + (["finetuned"] if args.finetuned_model_dir is not None else [])
        models = pulumi.Output.all(args.base_model_dir, args.finetuned_model_dir).apply(
            lambda v: {label: path for label, path in zip(["base", "finetuned"], v) if path})
        run = models.apply(lambda m: run_script(site.cluster_python, m))
        self.job = launch(f"{name}-job", site, files, copies, run,
                          triggers=[data_digest, CLOUD_MODULE.read_text()], opts=pulumi.ResourceOptions(parent=self))
        self.metrics: pulumi.Output[dict] = pulumi.Output.all(*(getattr(self.job, k) for k in EXPORTED)).apply(
            lambda v: eval_metrics(dict(zip(EXPORTED, v)), self.labels))
        self.register_outputs({"metrics": self.metrics})
