"""The InferenceService and ServingRuntime bodies, field by field, and against KServe's own Python models."""
import kserve.models
import kubernetes.client.models
import pytest

from stacks.k8s.inference import inference_service_body, served_models, serving_runtime_body
from validation.config import Kubernetes

SETTINGS = Kubernetes.model_validate({
    "context": "c", "predictorImage": "registry.example.org/mlops/predictor:0.1.0",
    "cpuModel": {"storageUri": "s3://models/mnist/v3", "serverless": {"minReplicas": 0, "maxReplicas": 5,
                                                                      "scaleMetric": "rps", "scaleTarget": 50}},
    "gpuModel": {"gpus": 2, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
                 "rawDeployment": {"minReplicas": 1, "maxReplicas": 2, "scaleMetric": "memory", "scaleTarget": 70}},
})
CPU, GPU = served_models(SETTINGS.cpu_model, SETTINGS.gpu_model)
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def strict(data, type_name: str, path: str = "$"):
    """Builds KServe's (and Kubernetes') client models from a body, refusing any key the models do not know
    and any value of the wrong type; the models' constructors then check their required fields."""
    # KServe's generator writes list[T] / dict(str, T); the kubernetes client's, List[T] / Dict[str, T].
    if type_name.startswith(("list[", "List[")):
        assert isinstance(data, list), f"{path}: expected a list, got {data!r}"
        return [strict(item, type_name[5:-1], f"{path}[{i}]") for i, item in enumerate(data)]
    if type_name.startswith(("dict(", "Dict[")):
        assert isinstance(data, dict), f"{path}: expected a map, got {data!r}"
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {k: strict(v, value_type, f"{path}.{k}") for k, v in data.items()}
    if type_name in PRIMITIVES:
        assert isinstance(data, PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(data, bool)), \
            f"{path}: expected {type_name}, got {data!r}"
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    assert isinstance(data, dict), f"{path}: expected a {type_name} object, got {data!r}"
    known = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = set(data) - set(known)
    assert not unknown, f"{path}: {type_name} has no field(s) {sorted(unknown)}"
    return cls(**{known[k]: strict(v, cls.openapi_types[known[k]], f"{path}.{k}") for k, v in data.items()})


def test_the_strict_check_can_fail():
    body = inference_service_body(CPU, "Serverless", "ns", "sa")
    body["spec"]["predictor"]["scaleMetrics"] = "cpu"  # a typo KServe would silently drop
    with pytest.raises(AssertionError, match="no field"):
        strict(body, "V1beta1InferenceService")
    body = inference_service_body(GPU, "Serverless", "ns", "sa")
    body["spec"]["predictor"]["tolerations"][0]["effects"] = "NoSchedule"  # inside a Kubernetes type
    with pytest.raises(AssertionError, match="V1Toleration has no field"):
        strict(body, "V1beta1InferenceService")
    body = inference_service_body(CPU, "Serverless", "ns", "sa")
    body["spec"]["predictor"]["minReplicas"] = "1"
    with pytest.raises(AssertionError, match="expected int"):
        strict(body, "V1beta1InferenceService")


@pytest.mark.parametrize("model", [CPU, GPU], ids=["cpu", "gpu"])
@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_inference_service_is_a_valid_kserve_object(model, mode):
    service = strict(inference_service_body(model, mode, "mlops", "kserve-s3"), "V1beta1InferenceService")
    assert isinstance(service, kserve.models.V1beta1InferenceService)
    assert service.spec.predictor.model.storage_uri == model.settings.storage_uri
    expected = ({"serving.kserve.io/deploymentMode": "Knative"} if mode == "Serverless" else
                {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "hpa"})
    assert service.metadata.annotations == expected


@pytest.mark.parametrize("model", [CPU, GPU], ids=["cpu", "gpu"])
def test_serving_runtime_is_a_valid_kserve_object(model):
    runtime = strict(serving_runtime_body(model, "mlops", SETTINGS.predictor_image), "V1alpha1ServingRuntime")
    assert runtime.spec.supported_model_formats[0].name == model.model_format


def test_cpu_serverless_body():
    body = inference_service_body(CPU, "Serverless", "mlops", "kserve-s3")
    assert body["apiVersion"] == "serving.kserve.io/v1beta1" and body["kind"] == "InferenceService"
    assert body["metadata"]["name"] == "mnist-serverless" and body["metadata"]["namespace"] == "mlops"
    assert body["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Knative"}
    predictor = body["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "kserve-s3"
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (0, 5, "rps", 50)
    assert predictor["model"] == {
        "modelFormat": {"name": "mlops-mnist-torchscript"}, "runtime": "mlops-mnist",
        "storageUri": "s3://models/mnist/v3",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}}
    assert "nodeSelector" not in predictor and "tolerations" not in predictor


def test_cpu_raw_deployment_body_uses_the_hpa_settings():
    predictor = inference_service_body(CPU, "RawDeployment", "mlops", "sa")["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (1, 3, "cpu", 80)


def test_gpu_body_has_gpu_limits_selector_and_tolerations():
    body = inference_service_body(GPU, "RawDeployment", "mlops", "sa")
    assert body["metadata"]["name"] == "smollm2-raw"
    predictor = body["spec"]["predictor"]
    resources = predictor["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2" and resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["memory"] == "32Gi"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert predictor["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                         "effect": "NoSchedule"}]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (1, 2, "memory", 70)
    assert predictor["model"]["storageUri"] == "s3://models/smollm2"


def test_gpu_defaults_tolerate_the_gpu_taint():
    defaults = Kubernetes.model_validate({"context": "c", "predictorImage": "i"})
    gpu = served_models(defaults.cpu_model, defaults.gpu_model)[1]
    predictor = inference_service_body(gpu, "Serverless", "ns", "sa")["spec"]["predictor"]
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_runtime_runs_our_predictor_on_the_downloaded_model():
    container = serving_runtime_body(GPU, "mlops", "img:1")["spec"]["containers"][0]
    assert container["name"] == "kserve-container" and container["image"] == "img:1"
    assert container["command"] == ["python", "-m", "workloads.serving.llm_predictor"]
    assert container["args"] == ["--model-name={{.Name}}", "--storage-uri=/mnt/models", "--http-port=8080",
                                 "--host=0.0.0.0"]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    cpu = serving_runtime_body(CPU, "mlops", "img:1")["spec"]["containers"][0]
    assert cpu["command"][-1] == "workloads.serving.mnist_predictor"


def test_a_disabled_model_is_not_served():
    settings = Kubernetes.model_validate({"context": "c", "predictorImage": "i", "gpuModel": {"enabled": False}})
    assert [m.key for m in served_models(settings.cpu_model, settings.gpu_model)] == ["mnist"]


@pytest.mark.parametrize("model", [CPU, GPU], ids=["cpu", "gpu"])
def test_runtime_args_are_what_the_predictor_accepts(model):
    """The ServingRuntime's arguments parse with the predictor's own parser (workloads/serving/server.py)."""
    from workloads.serving.server import base_parser

    args = serving_runtime_body(model, "mlops", "img:1")["spec"]["containers"][0]["args"]
    parsed = base_parser("x").parse_args([a.replace("{{.Name}}", "mnist-raw") for a in args])
    assert (parsed.model_name, parsed.storage_uri, parsed.http_port, parsed.host) == \
        ("mnist-raw", "/mnt/models", 8080, "0.0.0.0")
