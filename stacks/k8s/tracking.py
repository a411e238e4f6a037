"""MLflow in the cluster: a tracking server with its SQLite backend store on a PersistentVolumeClaim and
its artifacts in MinIO (served through the tracking server, so clients need no S3 keys)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import MLFLOW, MLFLOW_PORT, labels, service_host
from stacks.k8s.object_store import credential_env, volume_claim


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
        meta = k8s.meta.v1.ObjectMetaArgs(name=MLFLOW, namespace=args.namespace, labels=labels(MLFLOW))
        claim = volume_claim(f"{name}-store", args.namespace, MLFLOW, args.storage_size, args.storage_class, child)
        container = k8s.core.v1.ContainerArgs(
            name=MLFLOW, image=args.image, command=mlflow_command(args.artifact_bucket),
            env=[k8s.core.v1.EnvVarArgs(name="MLFLOW_S3_ENDPOINT_URL", value=args.s3_endpoint_url),
                 *credential_env(args.credentials_secret, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=MLFLOW_PORT)],
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(
                path="/health", port=MLFLOW_PORT), period_seconds=5),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="store", mount_path="/mlflow")])
        deployment = k8s.apps.v1.Deployment(f"{name}-server", k8s.apps.v1.DeploymentInitArgs(
            metadata=meta,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),  # SQLite: one writer
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels(MLFLOW)),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(MLFLOW)),
                    spec=k8s.core.v1.PodSpecArgs(
                        security_context=k8s.core.v1.PodSecurityContextArgs(fs_group=1000),  # the image's user
                        containers=[container], volumes=[k8s.core.v1.VolumeArgs(
                        name="store", persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                            claim_name=claim.metadata.name))])))), child)
        k8s.core.v1.Service(f"{name}-service", k8s.core.v1.ServiceInitArgs(
            metadata=meta,
            spec=k8s.core.v1.ServiceSpecArgs(selector=labels(MLFLOW), ports=[
                k8s.core.v1.ServicePortArgs(name="http", port=MLFLOW_PORT, target_port=MLFLOW_PORT)])),
            pulumi.ResourceOptions(parent=self, depends_on=[deployment]))
        self.url = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: f"http://{service_host(MLFLOW, ns)}:{MLFLOW_PORT}")
        self.register_outputs({"url": self.url})
