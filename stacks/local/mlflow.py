"""MLflow tracking server of the serving stack: SQLite backend store, MinIO as its S3 artifact store (the server
proxies artifacts, so clients need no S3 keys), on 127.0.0.1; the registration of a trained model in it, and the
resolution of `models:/<name>@<alias>` to the S3 URI a predictor fetches (workloads/serving/registry.py).

The server runs MLflow's basic-auth app: every request but /health needs the admin user's password (generated, a
Pulumi secret, given to the server and its clients only through the environment: MLFLOW_AUTH_ADMIN_* and
MLFLOW_TRACKING_USERNAME/PASSWORD); no other user has any permission (default_permission NO_PERMISSIONS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from stacks.local.minio import GeneratedCredentials, MinioServer
from stacks.local.process import WORKLOADS_PYTHON, LocalDaemon, LocalRun


def basic_auth_ini(database_uri: str) -> str:
    """The auth app's config file (MLFLOW_AUTH_CONFIG_PATH): no permission for anyone but the admin, its users in
    DATABASE_URI. No secret in it: the admin's name and password come from MLFLOW_AUTH_ADMIN_* in the environment.
    Shared with the cluster's MLflow (stacks/k8s/tracking.py)."""
    return ("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = {database_uri}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")


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
        child = pulumi.ResourceOptions(parent=self)
        admin = GeneratedCredentials(f"{name}-admin", child)  # user and password of the auth app's admin
        flask = GeneratedCredentials(f"{name}-flask", child)  # its secret_key signs the CSRF tokens
        # What a client needs (MLflow's own variables): a Pulumi secret, passed only in the environment.
        self.client_env = pulumi.Output.secret(pulumi.Output.all(admin.access_key, admin.secret_key).apply(
            lambda v: {"MLFLOW_TRACKING_USERNAME": v[0], "MLFLOW_TRACKING_PASSWORD": v[1]}))
        auth_ini = f"{store}/basic_auth.ini"
        self.daemon = LocalDaemon(f"{name}-daemon", {
            "name": "MLflow tracking server",
            "argv": [WORKLOADS_PYTHON, "-m", "mlflow", "server", "--app-name", "basic-auth",
                     "--host", "127.0.0.1", "--port", str(args.port),
                     "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                     "--artifacts-destination", f"s3://{args.artifacts_bucket}/", "--workers", "1"],
            # No background job runner: it starts eight more Python processes (huey consumers) that this
            # tracking-and-registry use never needs, on two shared cores.
            "env": {"MLFLOW_S3_IGNORE_TLS": "true", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": auth_ini},
            "files": {auth_ini: basic_auth_ini(f"sqlite:///{store}/basic_auth.db")},
            "secret_env": pulumi.Output.all(args.minio.env, admin.access_key, admin.secret_key, flask.secret_key).apply(
                lambda v: {**v[0], "MLFLOW_S3_ENDPOINT_URL": v[0]["AWS_ENDPOINT_URL"],
                           "MLFLOW_AUTH_ADMIN_USERNAME": v[1], "MLFLOW_AUTH_ADMIN_PASSWORD": v[2],
                           "MLFLOW_FLASK_SERVER_SECRET_KEY": v[3]}),
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

    def client_env_with(self, *envs: pulumi.Input[dict]) -> pulumi.Output[dict]:
        """A client's environment: MLflow's credentials and `envs` (e.g. MinIO's), a Pulumi secret."""
        return pulumi.Output.secret(pulumi.Output.all(self.client_env, *envs).apply(
            lambda parts: {k: v for part in parts for k, v in part.items()}))


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
            "secret_env": args.server.client_env,
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
            "secret_env": server.client_env_with(server.minio.env), "registered": registration.result,
            "timeout_s": 300,
        }, pulumi.ResourceOptions(parent=self))
        self.result = run.result
        self.register_outputs({"result": self.result})
