"""MLflow in the cluster: a tracking server with its SQLite backend store on a PersistentVolumeClaim and
its artifacts in MinIO (served through the tracking server, so clients need no S3 keys)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import MLFLOW, MLFLOW_PORT, service_host
from stacks.k8s.object_store import credential_env, single_pod_service, volume_claim


def mlflow_command(artifact_bucket: str) -> list[str]:
    return ["mlflow", "server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT),
            "--backend-store-uri", "sqlite:////mlflow/mlflow.db",
            "--serve-artifacts", "--artifacts-destination", f"s3://{artifact_bucket}/artifacts"]


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

    def __init__(self, name: str, args: TrackingServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:TrackingServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        claim = volume_claim(f"{name}-store", args.namespace, MLFLOW, args.storage_size, args.storage_class, child)
        container = k8s.core.v1.ContainerArgs(
            name=MLFLOW, image=args.image, command=mlflow_command(args.artifact_bucket),
            env=[k8s.core.v1.EnvVarArgs(name="MLFLOW_S3_ENDPOINT_URL", value=args.s3_endpoint_url),
                 *credential_env(args.credentials_secret, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=MLFLOW_PORT)],
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(
                path="/health", port=MLFLOW_PORT), period_seconds=5),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="store", mount_path="/mlflow")])
        single_pod_service(name, args.namespace, MLFLOW, container, "store", claim, {"http": MLFLOW_PORT}, self,
                           # the image's user, so that it can write the SQLite store on the volume
                           pod_security=k8s.core.v1.PodSecurityContextArgs(fs_group=1000))
        self.url = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: f"http://{service_host(MLFLOW, ns)}:{MLFLOW_PORT}")
        self.register_outputs({"url": self.url})
