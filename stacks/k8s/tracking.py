"""MLflow in the cluster: a tracking server with its SQLite backend store on a PersistentVolumeClaim and
its artifacts in MinIO (served through the tracking server, so clients need no S3 keys).

It runs MLflow's basic-auth app, as the embedded default's server does (stacks/local/mlflow.py): every request but
/health needs the admin user's password, and no other user has any permission (default_permission NO_PERMISSIONS).
The admin's name and password and the Flask key that signs the CSRF tokens are generated (GeneratedCredentials:
Pulumi secrets in the state), written to the Secret `mlflow-auth` and given to the server only through its
environment (secretKeyRef): never on its command line, in the ConfigMap or in the Deployment. The same Secret
carries MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, MLflow's own client variables, for a pod to take with
envFrom."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import MLFLOW, MLFLOW_AUTH_CONFIG, MLFLOW_AUTH_SECRET, MLFLOW_PORT, labels, service_host
from stacks.k8s.object_store import credential_env, secret_env, single_pod_service, volume_claim
from stacks.local.minio import GeneratedCredentials
from stacks.local.mlflow import basic_auth_ini

AUTH_CONFIG_DIR = "/etc/mlflow-auth"
AUTH_CONFIG_FILE = "basic_auth.ini"
# The server's variables (MLflow's auth app) and the clients' (MLflow's tracking client), all keys of the Secret.
SERVER_AUTH_ENV = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def mlflow_command(artifact_bucket: str) -> list[str]:
    return ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT),
            "--backend-store-uri", "sqlite:////mlflow/mlflow.db",
            "--serve-artifacts", "--artifacts-destination", f"s3://{artifact_bucket}/artifacts"]


def auth_secret_data(admin_user: str, admin_password: str, flask_key: str) -> dict:
    return {"MLFLOW_AUTH_ADMIN_USERNAME": admin_user, "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key,
            "MLFLOW_TRACKING_USERNAME": admin_user, "MLFLOW_TRACKING_PASSWORD": admin_password}


@dataclass
class TrackingServerArgs:
    namespace: pulumi.Input[str]
    image: str
    credentials_secret: pulumi.Input[str]
    s3_endpoint_url: pulumi.Input[str]
    artifact_bucket: str
    storage_size: str
    storage_class: Optional[str]


class TrackingServer(pulumi.ComponentResource):
    url: pulumi.Output[str]
    auth_secret_name: pulumi.Output[str]  # the Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD for clients

    def __init__(self, name: str, args: TrackingServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:TrackingServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Generated once and kept in the state as secrets (the embedded server's way): user and password of the
        # auth app's admin, and the Flask secret key.
        admin = GeneratedCredentials(f"{name}-admin", pulumi.ResourceOptions(parent=self))
        flask = GeneratedCredentials(f"{name}-flask", pulumi.ResourceOptions(parent=self))
        auth = k8s.core.v1.Secret(f"{name}-auth", k8s.core.v1.SecretInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=MLFLOW_AUTH_SECRET, namespace=args.namespace,
                                                labels=labels(MLFLOW)),
            type="Opaque",
            string_data=pulumi.Output.secret(pulumi.Output.all(admin.access_key, admin.secret_key,
                                                               flask.secret_key).apply(lambda v: auth_secret_data(*v))),
        ), pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stringData", "data"]))
        config = k8s.core.v1.ConfigMap(f"{name}-auth-config", k8s.core.v1.ConfigMapInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=MLFLOW_AUTH_CONFIG, namespace=args.namespace,
                                                labels=labels(MLFLOW)),
            # the auth app's users live on the store's volume, beside the tracking store
            data={AUTH_CONFIG_FILE: basic_auth_ini("sqlite:////mlflow/basic_auth.db")}), child)
        claim = volume_claim(f"{name}-store", args.namespace, MLFLOW, args.storage_size, args.storage_class, child)
        container = k8s.core.v1.ContainerArgs(
            name=MLFLOW, image=args.image, command=mlflow_command(args.artifact_bucket),
            env=[k8s.core.v1.EnvVarArgs(name="MLFLOW_S3_ENDPOINT_URL", value=args.s3_endpoint_url),
                 *credential_env(args.credentials_secret, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                 k8s.core.v1.EnvVarArgs(name="MLFLOW_AUTH_CONFIG_PATH", value=f"{AUTH_CONFIG_DIR}/{AUTH_CONFIG_FILE}"),
                 *[secret_env(var, auth.metadata.name, var) for var in SERVER_AUTH_ENV]],
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=MLFLOW_PORT)],
            # /health is the one path the auth app leaves open
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(
                path="/health", port=MLFLOW_PORT), period_seconds=5),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="store", mount_path="/mlflow"),
                           k8s.core.v1.VolumeMountArgs(name="auth-config", mount_path=AUTH_CONFIG_DIR,
                                                       read_only=True)])
        single_pod_service(name, args.namespace, MLFLOW, container, "store", claim, {"http": MLFLOW_PORT}, self,
                           # the image's user, so that it can write the SQLite store on the volume
                           pod_security=k8s.core.v1.PodSecurityContextArgs(fs_group=1000),
                           extra_volumes=[k8s.core.v1.VolumeArgs(
                               name="auth-config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                   name=config.metadata.name))])
        self.url = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: f"http://{service_host(MLFLOW, ns)}:{MLFLOW_PORT}")
        self.auth_secret_name = auth.metadata.name
        self.register_outputs({"url": self.url, "auth_secret_name": self.auth_secret_name})
