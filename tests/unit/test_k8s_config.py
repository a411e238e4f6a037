"""The `kubernetes` config section: defaults, and a clear one-line error naming each bad setting."""
import pytest

from validation.config import ConfigError, parse

K8S = {"context": "admin@cluster", "predictorImage": "registry.example.org/mlops/predictor:0.1.0"}


def settings(**kubernetes):
    return parse({"kubernetes": {**K8S, **kubernetes}})


def test_no_kubernetes_section_by_default():
    assert parse({}).kubernetes is None


def test_defaults():
    k = settings().kubernetes
    assert k.namespace == "mlops-validation" and k.deployment_modes == ["RawDeployment", "Serverless"]
    assert k.cpu_model.storage_uri == "s3://models/mnist" and k.gpu_model.storage_uri == "s3://models/smollm2"
    assert k.gpu_model.gpus == 1 and k.gpu_operator.enabled is False
    assert (k.cpu_model.serverless.min_replicas, k.cpu_model.raw_deployment.min_replicas) == (0, 1)


def test_numbers_are_accepted_as_quantities():
    k = settings(cpuModel={"resources": {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": 0.5}}}).kubernetes
    assert k.cpu_model.resources.requests["cpu"] == 2


@pytest.mark.parametrize("bad, key, words", [
    ({"context": ""}, "kubernetes.context", "at least 1 character"),
    ({"namespace": "Bad_Namespace"}, "kubernetes.namespace", "should match pattern"),
    ({"deploymentModes": ["Knative"]}, "kubernetes.deploymentModes.0", "'RawDeployment' or 'Serverless'"),
    ({"deploymentModes": ["Serverless", "Serverless"]}, "kubernetes", "lists a mode twice"),
    ({"deploymentModes": []}, "kubernetes.deploymentModes", "at least 1 item"),
    ({"cpuModel": {"rawDeployment": {"scaleMetric": "concurrency"}}}, "kubernetes.cpuModel.rawDeployment.scaleMetric",
     "'cpu' or 'memory'"),
    ({"cpuModel": {"rawDeployment": {"minReplicas": 0}}}, "kubernetes.cpuModel.rawDeployment.minReplicas",
     "greater than or equal to 1"),
    ({"cpuModel": {"serverless": {"scaleMetric": "cpu"}}}, "kubernetes.cpuModel.serverless.scaleMetric",
     "'concurrency' or 'rps'"),
    ({"cpuModel": {"rawDeployment": {"scaleTarget": 150}}}, "kubernetes.cpuModel.rawDeployment",
     "utilization percentage, 1-100 (got 150)"),
    ({"cpuModel": {"serverless": {"minReplicas": 4, "maxReplicas": 2}}}, "kubernetes.cpuModel.serverless",
     "maxReplicas (2) is below minReplicas (4)"),
    ({"cpuModel": {"storageUri": "gs://models/mnist"}}, "kubernetes.cpuModel.storageUri", "should match pattern"),
    ({"cpuModel": {"resources": {"limits": {"memory": "2 GB"}}}}, "kubernetes.cpuModel.resources",
     "'2 GB' is not a Kubernetes quantity"),
    ({"gpuModel": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}, "kubernetes.gpuModel.resources",
     "set the GPU count with 'gpus'"),
    ({"gpuModel": {"gpus": 0}}, "kubernetes.gpuModel.gpus", "greater than or equal to 1"),
    ({"gpuModel": {"tolerations": [{"operator": "Exists", "value": "x"}]}}, "kubernetes.gpuModel.tolerations.0",
     "takes no 'value'"),
    ({"gpuModel": {"tolerations": [{"effect": "NoRun", "key": "k"}]}}, "kubernetes.gpuModel.tolerations.0.effect",
     "'NoSchedule', 'PreferNoSchedule' or 'NoExecute'"),
    ({"cpuModel": {"enabled": False}, "gpuModel": {"enabled": False}}, "kubernetes", "nothing to serve"),
    ({"gpuOperator": {"repository": "helm.ngc.nvidia.com"}}, "kubernetes.gpuOperator.repository",
     "should match pattern"),
    ({"measurement": {"ingressUrl": "10.0.0.5"}}, "kubernetes.measurement.ingressUrl", "should match pattern"),
    ({"minio": {"storageSize": "lots"}}, "kubernetes.minio.storageSize", "should match pattern"),
    ({"predictorImages": "x"}, "kubernetes.predictorImages", "Extra inputs are not permitted"),
])
def test_bad_values_name_the_setting(bad, key, words):
    with pytest.raises(ConfigError) as exc:
        settings(**bad)
    message = str(exc.value)
    assert f"mlops-validation:{key}:" in message and words in message and "\n" not in message


def test_predictor_image_is_required():
    with pytest.raises(ConfigError, match="mlops-validation:kubernetes.predictorImage: Field required"):
        parse({"kubernetes": {"context": "c"}})


def test_the_k8s_site_example_is_valid():
    import yaml

    from validation.config import REPO_ROOT, Settings

    raw = yaml.safe_load((REPO_ROOT / "examples" / "Pulumi.k8ssite.yaml").read_text())["config"]
    values = {key.split(":", 1)[1]: value for key, value in raw.items() if key != "mlops-validation:datasetsDir"}
    k = Settings.model_validate(values).kubernetes
    assert k.context == "mlops-admin@gpu-cluster" and k.gpu_model.gpus == 1
