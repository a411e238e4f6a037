"""A KServe predictor on the embedded default, deployed as an InferenceService would be: the model is first
published to MinIO (the sync), then the predictor process (python -m workloads.serving.<kind>_predictor) fetches
it from its s3:// storage URI with KServe's storage initializer, loads it, and serves V1, V2 and /metrics on
127.0.0.1. Ready means /v2/models/<name>/ready answers 200; the launch-to-ready time is the cold start.

A stack may name a model already in MinIO (storage_uri) instead: it is checked first, so a missing object fails
`pulumi up` with the URI named, before any predictor starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi

from stacks.local.minio import MinioServer
from stacks.local.process import WORKLOADS_PYTHON, LocalDaemon, LocalRun

PREDICTORS = {"mnist": "workloads.serving.mnist_predictor", "llm": "workloads.serving.llm_predictor"}


@dataclass
class PredictorArgs:
    kind: str  # mnist | llm
    model_name: str
    minio: MinioServer
    state_dir: str
    port: int
    source: Optional[pulumi.Input[str]] = None  # a local file or folder to publish
    source_digest: Optional[pulumi.Input[str]] = None  # its content digest: names the object prefix
    storage_uri: Optional[pulumi.Input[str]] = None  # or: a model already in MinIO (or one a registry resolved)
    bucket: str = "models"
    extra_args: pulumi.Input[list[str]] = field(default_factory=list)
    ready_timeout_s: int = 300
    port_config_key: str = "mlops-validation:serving.basePort"


class Predictor(pulumi.ComponentResource):
    url: pulumi.Output[str]
    storage_uri: pulumi.Output[str]
    sync: pulumi.Output[dict]  # what publishing measured ({} when the model was already in MinIO)
    cold_start_seconds: pulumi.Output[float]
    load_metrics: pulumi.Output[dict]  # the predictor's own download and load timings

    def __init__(self, name: str, args: PredictorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:Predictor", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=[args.minio.buckets])
        if args.storage_uri:
            step = LocalRun(f"{name}-check", {
                "name": f"model object check for {args.model_name}", "module": "workloads.serving.objects",
                "args": ["check", "--uri", args.storage_uri], "secret_env": args.minio.env,
                "server": args.minio.endpoint, "timeout_s": 120}, child)
            self.storage_uri = pulumi.Output.from_input(args.storage_uri)
            self.sync = pulumi.Output.from_input({})
        else:
            uri = pulumi.Output.from_input(args.source_digest).apply(
                lambda d: f"s3://{args.bucket}/{args.model_name}/{d[:16]}")
            step = LocalRun(f"{name}-publish", {
                "name": f"publishing {args.model_name} to MinIO", "module": "workloads.serving.objects",
                "args": pulumi.Output.all(args.source, uri).apply(lambda v: ["publish", "--source", v[0], "--uri", v[1]]),
                "secret_env": args.minio.env, "server": args.minio.endpoint, "timeout_s": 900}, child)
            self.storage_uri = step.result.apply(lambda r: r["uri"])
            self.sync = step.result
        url = f"http://127.0.0.1:{args.port}"
        model_dir = f"{args.state_dir}/predictors/{args.model_name}"
        self.daemon = LocalDaemon(f"{name}-daemon", {
            "name": f"KServe predictor {args.model_name}",
            "argv": pulumi.Output.all(self.storage_uri, args.extra_args).apply(lambda v: [
                WORKLOADS_PYTHON, "-m", PREDICTORS[args.kind], "--model-name", args.model_name, "--storage-uri", v[0],
                "--http-port", str(args.port), "--host", "127.0.0.1", "--model-dir", f"{model_dir}/model",
                "--metrics-file", f"{model_dir}/load.json", *v[1]]),
            "secret_env": args.minio.env, "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            "ready_url": f"{url}/v2/models/{args.model_name}/ready", "ready_timeout_s": args.ready_timeout_s,
            "log_file": f"{args.state_dir}/logs/{args.model_name}-predictor.log",
            "ports": {str(args.port): args.port_config_key}, "metrics_file": f"{model_dir}/load.json",
            "make_dirs": [model_dir], "remove_on_delete": [model_dir],
        }, pulumi.ResourceOptions(parent=self, depends_on=[step]))
        self.url = pulumi.Output.concat(url, "")
        self.cold_start_seconds = self.daemon.cold_start_seconds
        self.load_metrics = self.daemon.load_metrics
        self.register_outputs({"url": self.url, "storage_uri": self.storage_uri})
