"""The embedded default's serving stack, on 127.0.0.1 (MLOPS-4.1, 4.2, 5.1): MinIO, the MLflow tracking server,
the MNIST model from MLOPS-1.1 registered in MLflow and published to MinIO, the KServe predictors for it (CPU)
and for SmolLM2 (text generation with request batching), and a locust load test of each.

Resources are ordered as a deployment would be: MinIO and its buckets (the credential check), then MLflow and
the model sync, then the predictors (each fetches its model from its s3:// URI), then the load tests, one after
the other so that they never share the two cores. `pulumi destroy` stops every process and removes the state
folder (/tmp/mlops-validation/<stack>-serving).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from stacks.local.load_generator import LoadTest, LoadTestArgs
from stacks.local.minio import MinioServer, MinioServerArgs
from stacks.local.mlflow import MlflowServer, MlflowServerArgs, ModelRegistration, ModelRegistrationArgs
from stacks.local.model_server import Predictor, PredictorArgs
from stacks.local.process import LocalRun, StateDir
from validation.config import Settings

MNIST_NAME, LLM_NAME = "mnist", "smollm2"


@dataclass
class EmbeddedServingArgs:
    settings: Settings
    stack: str
    minio_access_key: Optional[pulumi.Output[str]] = None  # secrets; generated when not given
    minio_secret_key: Optional[pulumi.Output[str]] = None
    mnist_model: Optional[pulumi.Output[dict]] = None  # MLOPS-1.1's metrics["model"]: path, sha256
    mnist_job_dir: Optional[pulumi.Output[str]] = None  # its job folder (metrics.json, logged with the run)
    mnist_job_seconds: Optional[pulumi.Output[float]] = None  # its elapsed time, for the pipeline time
    llm_model_dir: Optional[pulumi.Input[str]] = None  # a HF folder (MLOPS-1.2's fine-tuned one); None: the base


class EmbeddedServing(pulumi.ComponentResource):
    cpu: Optional[pulumi.Output[dict]] = None  # metrics of mlops_4_1
    llm: Optional[pulumi.Output[dict]] = None  # metrics of mlops_4_2
    pipeline: Optional[pulumi.Output[dict]] = None  # metrics of mlops_5_1

    def __init__(self, name: str, args: EmbeddedServingArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:EmbeddedServing", name, None, opts)
        s, cfg = args.settings, args.settings.serving
        tasks = set(s.tasks)
        state = s.serving_state_dir(args.stack)
        port = cfg.base_port
        folder = StateDir(f"{name}-state", state, pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, depends_on=[folder])
        stage_seconds = lambda model: model.stage_seconds or s.serving_option("stage_seconds")  # noqa: E731

        self.minio = MinioServer(f"{name}-minio", MinioServerArgs(
            state_dir=state, port=port, binary=cfg.minio.binary, endpoint=cfg.minio.endpoint,
            access_key=args.minio_access_key, secret_key=args.minio_secret_key), child)
        self.summary = {"minio": self.minio.endpoint}
        mnist = mnist_test = registration = None
        if {"mlops_4_1", "mlops_5_1"} & tasks:
            source = args.mnist_model.apply(lambda m: m["path"]) if args.mnist_model is not None else None
            digest = args.mnist_model.apply(lambda m: m["sha256"]) if args.mnist_model is not None else None
            mnist = Predictor(f"{name}-mnist", PredictorArgs(
                kind="mnist", model_name=MNIST_NAME, minio=self.minio, state_dir=state, port=port + 3,
                source=source, source_digest=digest, storage_uri=cfg.cpu.storage_uri, ready_timeout_s=120), child)
            self.summary["mnist_predictor"] = mnist.url
        if "mlops_5_1" in tasks:
            mlflow = MlflowServer(f"{name}-mlflow", MlflowServerArgs(state_dir=state, port=port + 2,
                                                                      minio=self.minio), child)
            registration = ModelRegistration(f"{name}-registration", ModelRegistrationArgs(
                server=mlflow, model_path=args.mnist_model.apply(lambda m: m["path"]),
                model_sha256=args.mnist_model.apply(lambda m: m["sha256"]),
                metrics_json=args.mnist_job_dir.apply(lambda d: f"{d}/metrics.json") if args.mnist_job_dir else None,
                serialization_format=cfg.registration_format), child)
            self.summary["mlflow"] = mlflow.tracking_uri
            self.pipeline = pulumi.Output.all(registration.result, mnist.sync, mnist.cold_start_seconds,
                                              args.mnist_job_seconds, mnist.storage_uri).apply(lambda v: pipeline_metrics(*v))
        if mnist is not None and "mlops_4_1" in tasks:
            mnist_test = LoadTest(f"{name}-mnist-load", LoadTestArgs(
                predictor=mnist, example="mnist-v1", model_name=MNIST_NAME,
                stages=cfg.cpu.stages or s.serving_option("cpu_stages"), stage_seconds=stage_seconds(cfg.cpu)),
                pulumi.ResourceOptions(parent=self, depends_on=[registration] if registration else []))
            self.cpu = pulumi.Output.all(mnist_test.result, mnist.cold_start_seconds, mnist.load_metrics,
                                         mnist.sync, mnist.storage_uri).apply(lambda v: serving_metrics(*v))
        if "mlops_4_2" in tasks:
            # The configured folder, else MLOPS-1.2's fine-tuned one, else the base SmolLM2 (prepared here).
            base = f"{state}/models/smollm2-base"
            chosen = pulumi.Output.from_input(cfg.llm.model_dir or args.llm_model_dir)
            described = LocalRun(f"{name}-llm-model", {
                "name": "the LLM model folder", "module": "workloads.serving.llm_model",
                "args": chosen.apply(lambda d: ["--model-dir", d] if d else ["--model-dir", base, "--prepare-base"]),
                "timeout_s": 900}, child)
            llm = Predictor(f"{name}-llm", PredictorArgs(
                kind="llm", model_name=LLM_NAME, minio=self.minio, state_dir=state, port=port + 4,
                source=described.result.apply(lambda r: r["model_dir"]),
                source_digest=described.result.apply(lambda r: r["digest"]), storage_uri=cfg.llm.storage_uri,
                extra_args=["--device", cfg.llm.device, "--max-batch-size", str(cfg.llm.max_batch_size),
                            "--max-batch-delay-ms", str(cfg.llm.max_batch_delay_ms)], ready_timeout_s=300),
                pulumi.ResourceOptions(parent=self, depends_on=[folder] + ([mnist_test] if mnist_test else [])))
            llm_test = LoadTest(f"{name}-llm-load", LoadTestArgs(
                predictor=llm, example="llm-v1", model_name=LLM_NAME,
                stages=cfg.llm.stages or s.serving_option("llm_stages"), stage_seconds=stage_seconds(cfg.llm),
                timeout_s=120), pulumi.ResourceOptions(parent=self))
            self.summary["llm_predictor"] = llm.url
            self.llm = pulumi.Output.all(llm_test.result, llm.cold_start_seconds, llm.load_metrics, llm.sync,
                                         llm.storage_uri).apply(lambda v: serving_metrics(*v))
        self.register_outputs({"summary": self.summary})


def serving_metrics(load: dict, cold_start: float, loaded: dict, sync: dict, storage_uri: str) -> dict:
    """One predictor's task metrics: the load test's figures plus its cold start and model load time."""
    return {**load, "cold_start_seconds": cold_start, "model_load_seconds": loaded.get("model_load_seconds"),
            "model_download_seconds": loaded.get("download_seconds"), "storage_uri": storage_uri,
            "sync_seconds": sync.get("sync_seconds"), "model_bytes": sync.get("bytes") or loaded.get("model_bytes"),
            "device": loaded.get("device", "cpu"), "device_name": loaded.get("device_name", "cpu"),
            "predictor": {k: v for k, v in loaded.items() if k not in ("pid", "process_started_at")}}


def pipeline_metrics(registration: dict, sync: dict, deployment_seconds: float, train_seconds: Optional[float],
                     storage_uri: str) -> dict:
    """MLOPS-5.1: each stage as measured, and the pipeline time as the sum of the stages it ran."""
    stages = {"train_job_seconds": train_seconds, "registration_seconds": registration["registration_seconds"],
              "sync_seconds": sync.get("sync_seconds"), "deployment_seconds": deployment_seconds}
    measured = [v for v in stages.values() if isinstance(v, (int, float))]
    return {**stages, "pipeline_seconds": round(sum(measured), 3) if len(measured) == len(stages) else None,
            "pipeline_note": "sum of the measured stages: the MLOPS-1.1 training job, MLflow registration, "
                             "publishing the model to MinIO, the predictor's start until ready",
            "registry": registration, "storage_uri": storage_uri}
