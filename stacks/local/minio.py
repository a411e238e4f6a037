"""MinIO, the S3 store of the serving stack: the real server (built from the Go module proxy by
tools/bootstrap.sh into .tools/bin/minio when none is on PATH), on 127.0.0.1, with credentials that are Pulumi
secrets. A stack may instead name an existing MinIO (serving.minio.endpoint) with its keys as the secrets
servingMinioAccessKey / servingMinioSecretKey; nothing is started then.

Either way the component ends with the buckets the stack needs, made through the `minio` SDK: that first
authenticated call is the credential check, so a wrong key fails `pulumi up` here, naming the endpoint.
"""
from __future__ import annotations

import secrets
import shutil
import string
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

from stacks.local.process import REPO_ROOT, LocalDaemon, LocalRun, ServingError


def minio_binary(configured: Optional[str] = None) -> str:
    """serving.minio.binary, else `minio` on PATH, else the one tools/bootstrap.sh built."""
    found = configured or shutil.which("minio") or str(REPO_ROOT / ".tools" / "bin" / "minio")
    if not Path(found).is_file():
        raise ServingError(f"no MinIO server binary at {found}: run tools/bootstrap.sh (it builds one), "
                           "or set mlops-validation:serving.minio.binary")
    return found


# -- generated credentials: made once, kept in state as secrets ---------------------------------------------
class _CredentialsProvider(ResourceProvider):
    def create(self, props: dict) -> CreateResult:
        alphabet = string.ascii_letters + string.digits
        access = "mlops" + "".join(secrets.choice(alphabet) for _ in range(15))
        secret = "".join(secrets.choice(alphabet) for _ in range(40))
        return CreateResult(id_=uuid.uuid4().hex, outs={**props, "access_key": access, "secret_key": secret})

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        return DiffResult(changes=False)


class GeneratedCredentials(Resource, module="mlops", name="GeneratedCredentials"):
    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]

    def __init__(self, name: str, opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            additional_secret_outputs=["access_key", "secret_key"]))
        super().__init__(_CredentialsProvider(), name, {"access_key": None, "secret_key": None}, opts)


@dataclass
class MinioServerArgs:
    state_dir: str  # the data folder and log live here
    port: int  # S3 API; the console takes port + 1
    buckets: list[str] = field(default_factory=lambda: ["models", "mlflow-artifacts"])
    binary: Optional[str] = None
    endpoint: Optional[str] = None  # an existing MinIO: start nothing
    access_key: Optional[pulumi.Input[str]] = None  # secrets; generated when not given
    secret_key: Optional[pulumi.Input[str]] = None
    port_config_key: str = "mlops-validation:serving.basePort"


class MinioServer(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]
    env: pulumi.Output[dict]  # secret: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...

    def __init__(self, name: str, args: MinioServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:MinioServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.access_key is None or args.secret_key is None:
            generated = GeneratedCredentials(f"{name}-credentials", child)
            access, secret = generated.access_key, generated.secret_key
        else:
            access, secret = args.access_key, args.secret_key
        access, secret = pulumi.Output.secret(access), pulumi.Output.secret(secret)
        depends: list[pulumi.Resource] = []
        if args.endpoint:
            self.endpoint = pulumi.Output.from_input(args.endpoint.rstrip("/"))
            self.where = pulumi.Output.from_input(f"existing MinIO at {args.endpoint}")
            self.pid = pulumi.Output.from_input(None)
        else:
            data = f"{args.state_dir}/minio-data"
            url = f"http://127.0.0.1:{args.port}"
            daemon = LocalDaemon(f"{name}-daemon", {
                "name": "MinIO server",
                "argv": [minio_binary(args.binary), "server", data, "--address", f"127.0.0.1:{args.port}",
                         "--console-address", f"127.0.0.1:{args.port + 1}", "--quiet"],
                # Its Prometheus metrics without a bearer token, for the monitoring task: it listens on 127.0.0.1 only.
                "env": {"MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "MINIO_PROMETHEUS_AUTH_TYPE": "public"},
                "secret_env": pulumi.Output.all(access, secret).apply(
                    lambda v: {"MINIO_ROOT_USER": v[0], "MINIO_ROOT_PASSWORD": v[1]}),
                "ready_url": f"{url}/minio/health/ready", "ready_timeout_s": 60,
                "log_file": f"{args.state_dir}/logs/minio.log",
                "ports": {str(args.port): args.port_config_key, str(args.port + 1): args.port_config_key},
                # The data outlives a restart of the server (a crash, a reboot); `pulumi destroy` removes it with
                # the serving state folder.
                "make_dirs": [data],
            }, child)
            depends.append(daemon)
            self.endpoint = pulumi.Output.from_input(url)
            self.where = pulumi.Output.from_input(f"MinIO server on {url}")
            self.pid = daemon.pid
        self.env = pulumi.Output.secret(pulumi.Output.all(self.endpoint, access, secret).apply(lambda v: {
            "AWS_ENDPOINT_URL": v[0], "AWS_ACCESS_KEY_ID": v[1], "AWS_SECRET_ACCESS_KEY": v[2],
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "S3_VERIFY_SSL": "0",
            "S3_USE_HTTPS": "1" if v[0].startswith("https") else "0"}))
        # Bucket creation is the first authenticated call: a refused key fails here, naming the endpoint.
        self.buckets = LocalRun(f"{name}-buckets", {
            "name": "MinIO buckets", "module": "workloads.serving.objects",
            "args": ["buckets", *args.buckets], "secret_env": self.env,
            "server": daemon.id if not args.endpoint else args.endpoint, "timeout_s": 120,
        }, pulumi.ResourceOptions(parent=self, depends_on=depends))
        self.ready = self.buckets.result
        self.register_outputs({"endpoint": self.endpoint})
