"""The serving stack on a real Kubernetes cluster, as one component: namespace, MinIO, MLflow, S3 credentials
for KServe, the GPU Operator and GPU check, the InferenceServices, and their measurements."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.credentials import S3Access, S3AccessArgs
from stacks.k8s.dashboards import dashboards_config_map
from stacks.k8s.gpu import GpuNodes, GpuNodesArgs
from stacks.k8s.inference import (InferenceServices, InferenceServicesArgs, inference_service_body,
                                  serving_runtime_body, served_models)
from stacks.k8s.measure import ServingMeasurement, ServingMeasurementArgs
from stacks.k8s.model_seed import BaseModelSeed, BaseModelSeedArgs
from stacks.k8s.names import PART_OF, SERVICE_ACCOUNT
from stacks.k8s.object_store import ObjectStore, ObjectStoreArgs, bucket_names
from stacks.k8s.provider import cluster_provider
from stacks.k8s.tracking import TrackingServer, TrackingServerArgs
from validation.config import Kubernetes


def revision(settings: Kubernetes) -> str:
    """A digest of what the InferenceServices are: a change means the figures must be measured again."""
    models = served_models(settings.cpu_model, settings.gpu_model)
    bodies = [serving_runtime_body(m, settings.namespace, settings.predictor_image) for m in models]
    bodies += [inference_service_body(m, mode, settings.namespace, SERVICE_ACCOUNT)
               for m in models for mode in settings.deployment_modes]
    return hashlib.sha256(json.dumps(bodies, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class KubernetesServingArgs:
    settings: Kubernetes
    minio_root_password: pulumi.Output[str]  # a Pulumi secret


class KubernetesServing(pulumi.ComponentResource):
    summary: pulumi.Output[dict]  # the stack output `kubernetes_serving`

    def __init__(self, name: str, args: KubernetesServingArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:Serving", name, None, opts)
        k = args.settings
        self.provider = cluster_provider(f"{name}-provider", k.context, k.kubeconfig, pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.namespace = k8s.core.v1.Namespace(f"{name}-namespace", k8s.core.v1.NamespaceInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=k.namespace, labels=dict(PART_OF))), child)
        ns = self.namespace.metadata.name  # an Output: everything in it waits for the namespace
        self.dashboards = dashboards_config_map(f"{name}-dashboards", ns, child)
        self.s3 = S3Access(f"{name}-s3", S3AccessArgs(
            namespace=ns, access_key=k.minio.root_user, secret_key=args.minio_root_password, region=k.minio.region),
            child)
        models = served_models(k.cpu_model, k.gpu_model)
        self.store = ObjectStore(f"{name}-minio", ObjectStoreArgs(
            namespace=ns, image=k.minio.image, credentials_secret=self.s3.secret_name,
            storage_size=k.minio.storage_size, storage_class=k.minio.storage_class,
            buckets=bucket_names([m.settings.storage_uri for m in models], [k.mlflow.artifact_bucket])), child)
        self.tracking = TrackingServer(f"{name}-mlflow", TrackingServerArgs(
            namespace=ns, image=k.mlflow.image or k.predictor_image, credentials_secret=self.s3.secret_name,
            s3_endpoint_url=self.store.endpoint_url, artifact_bucket=k.mlflow.artifact_bucket,
            storage_size=k.mlflow.storage_size, storage_class=k.mlflow.storage_class),
            pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.store.buckets_job]))
        depends_on = {m.key: [self.store.buckets_job] for m in models}
        self.gpus = None
        if k.gpu_model.enabled:
            self.gpus = GpuNodes(f"{name}-gpus", GpuNodesArgs(
                context=k.context, kubeconfig=k.kubeconfig, operator=k.gpu_operator,
                node_selector=dict(k.gpu_model.node_selector), gpus_per_pod=k.gpu_model.gpus), child)
            depends_on["smollm2"].append(self.gpus.check)
            if k.gpu_model.seed_base_model:
                seed = BaseModelSeed(f"{name}-smollm2-seed", BaseModelSeedArgs(
                    namespace=ns, image=k.predictor_image, credentials_secret=self.s3.secret_name,
                    s3_endpoint_url=self.store.endpoint_url, storage_uri=k.gpu_model.storage_uri),
                    pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.store.buckets_job]))
                depends_on["smollm2"].append(seed.job)
        self.services = InferenceServices(f"{name}-isvc", InferenceServicesArgs(
            namespace=ns, image=k.predictor_image, service_account=self.s3.service_account_name, models=models,
            modes=list(k.deployment_modes), depends_on=depends_on), child)
        measured: pulumi.Input = None
        if k.measurement.enabled:
            self.measurement = ServingMeasurement(f"{name}-measurement", ServingMeasurementArgs(
                context=k.context, kubeconfig=k.kubeconfig, namespace=ns, services=self.services.services,
                settings=k.measurement.model_dump(), revision=revision(k)),
                pulumi.ResourceOptions(parent=self, depends_on=list(self.services.resources.values())))
            measured = self.measurement.results
        self.summary = pulumi.Output.all(
            ns, self.store.endpoint_url, self.tracking.url, self.services.services,
            self.gpus.check.gpu_nodes if self.gpus else None, measured,
            self.tracking.auth_secret_name).apply(lambda v: {
                "context": k.context, "namespace": v[0], "minio": v[1], "mlflow": v[2], "inference_services": v[3],
                "gpu_nodes": v[4], "measurements": v[5] if k.measurement.enabled else "disabled (measurement.enabled)",
                # MLflow's basic auth: where a client finds MLFLOW_TRACKING_USERNAME / _PASSWORD (never the values)
                "mlflow_credentials_secret": v[6],
            })
        self.register_outputs({"summary": self.summary})
