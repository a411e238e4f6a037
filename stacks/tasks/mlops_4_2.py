"""MLOPS-4.2: LLM inference. SmolLM2 (serving.llm.modelDir, else MLOPS-1.2's fine-tuned model, else the base one)
behind a KServe text-generation predictor with request batching, fetched from MinIO by its s3:// URI and load
tested like MLOPS-4.1; its GPU targets are judged where the stack declares GPUs."""
from __future__ import annotations

import pulumi

from stacks.local.load_generator import LoadTest, LoadTestArgs
from stacks.local.model_server import Predictor, PredictorArgs
from stacks.local.process import LocalRun
from stacks.tasks import Measured, Task, devices
from stacks.tasks.fixtures import LLM_NAME, kubernetes, serving_base
from stacks.tasks.mlops_4_1 import served
from validation.plots import Plot, serving_latency


class LlmInference(Task):
    name = "mlops_4_2"
    spec = "MLOPS-4.2"
    title = "MLOPS-4.2 LLM inference (SmolLM2, KServe)"
    uses = ("mlops_1_2", "mlops_4_1", "mlops_5_1")  # the fine-tuned model; one load on the cores at a time
    gpu = True
    plots = (Plot("llm_serving_latency.png", serving_latency()),)

    @classmethod
    def platform(cls, settings) -> dict:
        # The predictor runs where `pulumi up` runs (serving.gpu), not on the cluster's nodes (hpc.gpu).
        return {**settings.platform, "gpu": settings.serving.gpu_model, "gpu_key": "serving.gpu"}

    def build(self, run) -> Measured:
        s, base = run.settings, serving_base(run)
        cfg = s.serving.llm
        prepared = f"{base.state_dir}/models/smollm2-base"
        chosen = pulumi.Output.from_input(cfg.model_dir or run.provided("mlops_1_2", "model_dir"))
        model = LocalRun("serving-llm-model", {
            "name": "the LLM model folder", "module": "workloads.serving.llm_model",
            "args": chosen.apply(lambda d: ["--model-dir", d] if d else ["--model-dir", prepared, "--prepare-base"]),
            "timeout_s": 900}, base.options())
        predictor = Predictor("serving-llm", PredictorArgs(
            kind="llm", model_name=LLM_NAME, minio=base.minio, state_dir=base.state_dir, port=base.base_port + 4,
            source=model.result.apply(lambda r: r["model_dir"]), source_digest=model.result.apply(lambda r: r["digest"]),
            storage_uri=cfg.storage_uri,
            extra_args=["--device", cfg.device, "--max-batch-size", str(cfg.max_batch_size),
                        "--max-batch-delay-ms", str(cfg.max_batch_delay_ms)], ready_timeout_s=300),
            base.options(*run.after(*self.uses)))
        load = LoadTest("serving-llm-load", LoadTestArgs(
            predictor=predictor, example="llm-v1", model_name=LLM_NAME, stages=s.option("serving.llm.stages"),
            stage_seconds=s.option("serving.llm.stage_seconds"), timeout_s=120))
        metrics = served(load.result, predictor, kubernetes(run), LLM_NAME)
        return Measured(metrics=metrics, observed=metrics.apply(lambda m: devices(predictor=m)), done=[load],
                        provides={"predictor": predictor})  # watched by the monitoring task
