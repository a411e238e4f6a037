"""MinIO in the cluster: one server on a PersistentVolumeClaim, a Service, and a Job that creates the buckets
(the models' bucket for KServe, the artifact bucket for MLflow) with the `mc` client the MinIO image ships."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import MINIO, MINIO_API_PORT, MINIO_CONSOLE_PORT, labels, service_host


def secret_env(name: str, secret: pulumi.Input[str], key: str) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(name=name, value_from=k8s.core.v1.EnvVarSourceArgs(
        secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret, key=key)))


def credential_env(secret: pulumi.Input[str], user_var: str, password_var: str) -> list:
    return [secret_env(user_var, secret, "AWS_ACCESS_KEY_ID"), secret_env(password_var, secret, "AWS_SECRET_ACCESS_KEY")]


def volume_claim(name: str, namespace: pulumi.Input[str], component: str, size: str, storage_class: Optional[str],
                 opts: pulumi.ResourceOptions) -> k8s.core.v1.PersistentVolumeClaim:
    return k8s.core.v1.PersistentVolumeClaim(name, k8s.core.v1.PersistentVolumeClaimInitArgs(
        # A claim of a WaitForFirstConsumer class stays Pending until its pod exists: don't wait for Bound.
        metadata=k8s.meta.v1.ObjectMetaArgs(name=component, namespace=namespace, labels=labels(component),
                                            annotations={"pulumi.com/skipAwait": "true"}),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"], storage_class_name=storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size})),
    ), opts)


def single_pod_service(name: str, namespace: pulumi.Input[str], component: str, container: k8s.core.v1.ContainerArgs,
                       volume: str, claim: k8s.core.v1.PersistentVolumeClaim, ports: dict[str, int],
                       parent: pulumi.Resource, pod_security: Optional[k8s.core.v1.PodSecurityContextArgs] = None,
                       extra_volumes: Optional[list] = None):
    """One pod on its ReadWriteOnce volume (Recreate: the volume has one writer at a time) and the Service in
    front of it, named after the component; returns (deployment, service). extra_volumes: more volumes the
    container mounts (a ConfigMap)."""
    meta = k8s.meta.v1.ObjectMetaArgs(name=component, namespace=namespace, labels=labels(component))
    deployment = k8s.apps.v1.Deployment(f"{name}-server", k8s.apps.v1.DeploymentInitArgs(
        metadata=meta,
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels(component)),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(component)),
                spec=k8s.core.v1.PodSpecArgs(
                    security_context=pod_security, containers=[container], volumes=[k8s.core.v1.VolumeArgs(
                        name=volume, persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                            claim_name=claim.metadata.name)), *(extra_volumes or [])])))),
        pulumi.ResourceOptions(parent=parent))
    service = k8s.core.v1.Service(f"{name}-service", k8s.core.v1.ServiceInitArgs(
        metadata=meta,
        spec=k8s.core.v1.ServiceSpecArgs(selector=labels(component), ports=[
            k8s.core.v1.ServicePortArgs(name=port_name, port=port, target_port=port)
            for port_name, port in ports.items()])),
        pulumi.ResourceOptions(parent=parent, depends_on=[deployment]))
    return deployment, service


def bucket_names(storage_uris: list[str], extra: list[str]) -> list[str]:
    """The buckets to create: each storageUri's bucket, then the extra ones, without repeats, in order."""
    names = [uri.removeprefix("s3://").split("/", 1)[0] for uri in storage_uris] + list(extra)
    return list(dict.fromkeys(names))


# mc's credentials as MC_HOST_store=<scheme>://<key>:<secret>@<host>, percent-encoded by shell builtins: the keys come
# from the Secret's environment and never stand on a command line (`mc alias set URL KEY SECRET` would show them in
# the process list of the node).
MC_HOST_FROM_ENV = "\n".join([
    "set -eu",
    'enc() { s=$1; out=; while [ -n "$s" ]; do c=${s%"${s#?}"}; s=${s#?}',
    "  case $c in [A-Za-z0-9._~-]) out=$out$c ;; *) out=$out$(printf '%%%02X' \"'$c\") ;; esac; done;"
    ' printf %s "$out"; }',
    'export MC_HOST_store="${ENDPOINT%%://*}://$(enc "$ACCESS_KEY"):$(enc "$SECRET_KEY")@${ENDPOINT#*://}"',
])


@dataclass
class ObjectStoreArgs:
    namespace: pulumi.Input[str]
    image: str
    credentials_secret: pulumi.Input[str]  # keys AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    storage_size: str
    storage_class: Optional[str]
    buckets: list[str]


class ObjectStore(pulumi.ComponentResource):
    endpoint_url: pulumi.Output[str]  # http://minio.<ns>.svc.cluster.local:9000

    def __init__(self, name: str, args: ObjectStoreArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:ObjectStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        claim = volume_claim(f"{name}-data", args.namespace, MINIO, args.storage_size, args.storage_class, child)
        container = k8s.core.v1.ContainerArgs(
            name=MINIO, image=args.image,
            args=["server", "/data", "--address", f":{MINIO_API_PORT}", "--console-address", f":{MINIO_CONSOLE_PORT}"],
            env=credential_env(args.credentials_secret, "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),
            ports=[k8s.core.v1.ContainerPortArgs(name="api", container_port=MINIO_API_PORT),
                   k8s.core.v1.ContainerPortArgs(name="console", container_port=MINIO_CONSOLE_PORT)],
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(
                path="/minio/health/ready", port=MINIO_API_PORT), period_seconds=5),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data")])
        _, service = single_pod_service(name, args.namespace, MINIO, container, "data", claim,
                                        {"api": MINIO_API_PORT, "console": MINIO_CONSOLE_PORT}, self)
        self.endpoint_url = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: f"http://{service_host(MINIO, ns)}:{MINIO_API_PORT}")
        make_buckets = "\n".join([MC_HOST_FROM_ENV] + [f"mc mb --ignore-existing store/{b}" for b in args.buckets])
        self.buckets_job = k8s.batch.v1.Job(f"{name}-buckets", k8s.batch.v1.JobInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels("minio-buckets")),
            spec=k8s.batch.v1.JobSpecArgs(backoff_limit=6, template=k8s.core.v1.PodTemplateSpecArgs(
                spec=k8s.core.v1.PodSpecArgs(restart_policy="OnFailure", containers=[k8s.core.v1.ContainerArgs(
                    name="mc", image=args.image, command=["sh", "-c", make_buckets],
                    env=[k8s.core.v1.EnvVarArgs(name="ENDPOINT", value=self.endpoint_url),
                         *credential_env(args.credentials_secret, "ACCESS_KEY", "SECRET_KEY")])])))),
            pulumi.ResourceOptions(parent=self, depends_on=[service]))
        self.register_outputs({"endpoint_url": self.endpoint_url})
