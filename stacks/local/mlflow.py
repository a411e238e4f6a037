"""MLflow tracking server of the serving stack: SQLite backend store, MinIO as its S3 artifact store (the server
proxies artifacts, so clients need no S3 keys), on 127.0.0.1; the registration of a trained model in it, and the
resolution of `models:/<name>@<alias>` to the S3 URI a predictor fetches (workloads/serving/registry.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from stacks.local.minio import MinioServer
from stacks.local.process import WORKLOADS_PYTHON, LocalDaemon, LocalRun


@dataclass
class MlflowServerArgs:
    state_dir: str
    port: int
    minio: MinioServer
    artifacts_bucket: str = "mlflow-artifacts"
    port_config_key: str = "mlops-validation:serving.basePort"


class MlflowServer(pulumi.ComponentResource):
    tracking_uri: pulumi.Output[str]

    def __init__(self, name: str, args: MlflowServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:MlflowServer", name, None, opts)
        url = f"http://127.0.0.1:{args.port}"
        store = f"{args.state_dir}/mlflow"
        self.daemon = LocalDaemon(f"{name}-daemon", {
            "name": "MLflow tracking server",
            "argv": [WORKLOADS_PYTHON, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(args.port),
                     "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                     "--artifacts-destination", f"s3://{args.artifacts_bucket}/", "--workers", "1"],
            # No background job runner: it starts eight more Python processes (huey consumers) that this
            # tracking-and-registry use never needs, on two shared cores.
            "env": {"MLFLOW_S3_IGNORE_TLS": "true", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            "secret_env": args.minio.env.apply(lambda e: {**e, "MLFLOW_S3_ENDPOINT_URL": e["AWS_ENDPOINT_URL"]}),
            "ready_url": f"{url}/health", "ready_timeout_s": 120,
            "log_file": f"{args.state_dir}/logs/mlflow.log",
            "ports": {str(args.port): args.port_config_key},
            "make_dirs": [store],  # the registry outlives a restart; destroy removes the serving state folder
            "minio": args.minio.endpoint,
        }, pulumi.ResourceOptions(parent=self, depends_on=[args.minio.buckets]))
        self.tracking_uri = pulumi.Output.concat(url, "")
        self.artifacts_destination = f"s3://{args.artifacts_bucket}"
        self.minio = args.minio
        self.cold_start_seconds = self.daemon.cold_start_seconds
        self.register_outputs({"tracking_uri": self.tracking_uri})


@dataclass
class ModelRegistrationArgs:
    server: MlflowServer
    model_path: pulumi.Input[str]  # the TorchScript file on shared storage
    model_sha256: pulumi.Input[str]  # a new model registers a new version
    name: str = "mnist-cnn"
    metrics_json: Optional[pulumi.Input[str]] = None  # the training job's metrics.json, logged with the run
    serialization_format: str = "pickle"


class ModelRegistration(pulumi.ComponentResource):
    result: pulumi.Output[dict]  # version, run id, sync_seconds, registration_seconds, ...

    def __init__(self, name: str, args: ModelRegistrationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:ModelRegistration", name, None, opts)
        extra = pulumi.Output.from_input(args.metrics_json).apply(lambda p: ["--metrics-json", p] if p else [])
        run = LocalRun(f"{name}-run", {
            "name": f"MLflow registration of {args.name}", "module": "workloads.serving.registry",
            "args": pulumi.Output.all(args.server.tracking_uri, args.model_path, extra).apply(lambda v: [
                "register", "--tracking-uri", v[0], "--model", v[1], "--name", args.name,
                "--serialization-format", args.serialization_format, *v[2]]),
            "model_sha256": args.model_sha256, "server": args.server.daemon.id, "timeout_s": 600,
        }, pulumi.ResourceOptions(parent=self))
        self.result = run.result
        self.register_outputs({"result": self.result})


class AliasResolution(pulumi.ComponentResource):
    """The deployment side's look-up: `models:/<name>@<alias>` to its version and the S3 URI of its artifacts,
    checked in MinIO; re-run when the registration it follows is."""

    result: pulumi.Output[dict]  # version, run_id, storage_uri, model_file, resolve_seconds, ...

    def __init__(self, name: str, server: MlflowServer, registration: ModelRegistration, model_name: str = "mnist-cnn",
                 alias: str = "champion", opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:AliasResolution", name, None, opts)
        run = LocalRun(f"{name}-run", {
            "name": f"resolving models:/{model_name}@{alias}", "module": "workloads.serving.registry",
            "args": server.tracking_uri.apply(lambda uri: [
                "resolve", "--tracking-uri", uri, "--name", model_name, "--alias", alias,
                "--artifacts-destination", server.artifacts_destination]),
            "secret_env": server.minio.env, "registered": registration.result, "timeout_s": 300,
        }, pulumi.ResourceOptions(parent=self))
        self.result = run.result
        self.register_outputs({"result": self.result})
