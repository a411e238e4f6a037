"""The models served by KServe: one ServingRuntime per predictor (our image, the predictor module of
workloads/serving/) and an InferenceService per model and deployment mode.

The bodies are plain dicts built by pure functions, so the unit tests can check them field by field and
against KServe's own Python models (tests/unit/test_k8s_inference.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import (AUTOSCALER_CLASS, DEPLOYMENT_MODE, KSERVE_MODE, MODE_SUFFIX, MODEL_DIR, PART_OF,
                              PREDICTOR_PORT)
from validation.config import GPU_RESOURCE, InferenceServiceSettings

KSERVE_API = "serving.kserve.io/v1beta1"
RUNTIME_API = "serving.kserve.io/v1alpha1"


@dataclass(frozen=True)
class ServedModel:
    """What differs between the CPU and the GPU model."""

    key: str  # "mnist" / "smollm2": InferenceService names start with it
    task: str  # the spec task its figures belong to (mlops_4_1 / mlops_4_2)
    module: str  # the predictor's entry point in the image
    model_format: str
    settings: InferenceServiceSettings
    gpus: int = 0

    @property
    def runtime_name(self) -> str:
        return f"mlops-{self.key}"


def served_models(cpu_model, gpu_model) -> list[ServedModel]:
    models = []
    if cpu_model.enabled:
        models.append(ServedModel("mnist", "mlops_4_1", "workloads.serving.mnist_predictor", "mlops-mnist-torchscript",
                                  cpu_model))
    if gpu_model.enabled:
        models.append(ServedModel("smollm2", "mlops_4_2", "workloads.serving.llm_predictor", "mlops-smollm2",
                                  gpu_model, gpus=gpu_model.gpus))
    return models


def service_name(model: ServedModel, mode: str) -> str:
    return f"{model.key}-{MODE_SUFFIX[mode]}"


def resources_body(model: ServedModel) -> dict:
    requests = {k: str(v) for k, v in model.settings.resources.requests.items()}
    limits = {k: str(v) for k, v in model.settings.resources.limits.items()}
    if model.gpus:
        # Extended resources must be equal in requests and limits.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(model.gpus)
    body = {}
    if requests:
        body["requests"] = requests
    if limits:
        body["limits"] = limits
    return body


def serving_runtime_body(model: ServedModel, namespace: pulumi.Input[str], image: str) -> dict:
    """A namespaced ServingRuntime running our predictor; {{.Name}} is the InferenceService's name, which
    KServe also uses as the model's name in /v1/models/<name> and /v2/models/<name>."""
    return {
        "apiVersion": RUNTIME_API, "kind": "ServingRuntime",
        "metadata": {"name": model.runtime_name, "namespace": namespace, "labels": dict(PART_OF)},
        "spec": {
            "supportedModelFormats": [{"name": model.model_format, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v1", "v2"],
            "containers": [{
                "name": "kserve-container", "image": image,
                "command": ["python", "-m", model.module],
                # The predictors bind 127.0.0.1 unless told otherwise (workloads/serving/server.py).
                "args": ["--model-name={{.Name}}", f"--storage-uri={MODEL_DIR}", f"--http-port={PREDICTOR_PORT}",
                         "--host=0.0.0.0"],
                "ports": [{"containerPort": PREDICTOR_PORT, "protocol": "TCP"}],
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "DO_NOT_TRACK", "value": "1"}],
            }],
        },
    }


def inference_service_body(model: ServedModel, mode: str, namespace: pulumi.Input[str],
                           service_account: pulumi.Input[str]) -> dict:
    scaling = model.settings.serverless if mode == "Serverless" else model.settings.raw_deployment
    predictor = {
        "serviceAccountName": service_account,
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "scaleMetric": scaling.scale_metric,
        "scaleTarget": scaling.scale_target,
        "model": {
            "modelFormat": {"name": model.model_format},
            "runtime": model.runtime_name,
            "storageUri": model.settings.storage_uri,
            "resources": resources_body(model),
        },
    }
    if model.settings.node_selector:
        predictor["nodeSelector"] = dict(model.settings.node_selector)
    if model.settings.tolerations:
        predictor["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in model.settings.tolerations]
    annotations = {DEPLOYMENT_MODE: KSERVE_MODE[mode]}
    if mode == "RawDeployment":
        annotations[AUTOSCALER_CLASS] = "hpa"
    return {
        "apiVersion": KSERVE_API, "kind": "InferenceService",
        "metadata": {
            "name": service_name(model, mode), "namespace": namespace,
            "labels": {**PART_OF, "mlops-validation/model": model.key},
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


@dataclass
class InferenceServicesArgs:
    namespace: pulumi.Input[str]
    image: str
    service_account: pulumi.Input[str]
    models: list[ServedModel]
    modes: list[str]
    # Per model key: resources the model's InferenceServices wait for (the GPU check for the GPU model).
    depends_on: dict[str, list[pulumi.Resource]] = field(default_factory=dict)


class InferenceServices(pulumi.ComponentResource):
    services: pulumi.Output[list]  # [{name, model, task, mode, min_replicas, max_replicas, gpus}]

    def __init__(self, name: str, args: InferenceServicesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:InferenceServices", name, None, opts)
        self.resources: dict[str, k8s.apiextensions.CustomResource] = {}
        rows = []
        for model in args.models:
            runtime = custom_resource(f"{name}-{model.runtime_name}",
                                      serving_runtime_body(model, args.namespace, args.image),
                                      pulumi.ResourceOptions(parent=self))
            for mode in args.modes:
                body = inference_service_body(model, mode, args.namespace, args.service_account)
                svc = custom_resource(f"{name}-{service_name(model, mode)}", body, pulumi.ResourceOptions(
                    parent=self, depends_on=[runtime, *args.depends_on.get(model.key, [])]))
                self.resources[service_name(model, mode)] = svc
                scaling = model.settings.serverless if mode == "Serverless" else model.settings.raw_deployment
                rows.append({"name": service_name(model, mode), "model": model.key, "task": model.task, "mode": mode,
                             "min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                             "scale_metric": scaling.scale_metric, "scale_target": scaling.scale_target,
                             "gpus": model.gpus})
        self.services = pulumi.Output.from_input(rows)
        self.register_outputs({"services": self.services})


def custom_resource(name: str, body: dict, opts: pulumi.ResourceOptions) -> k8s.apiextensions.CustomResource:
    """A CustomResource from a full body: apiVersion, kind and metadata become arguments, the rest `spec`."""
    return k8s.apiextensions.CustomResource(
        name, api_version=body["apiVersion"], kind=body["kind"],
        metadata=k8s.meta.v1.ObjectMetaArgs(**{_snake(k): v for k, v in body["metadata"].items()}),
        spec=body["spec"], opts=opts)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
