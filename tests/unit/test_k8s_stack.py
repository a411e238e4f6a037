"""The Kubernetes serving stack rendered under Pulumi mocks (no cluster, no provider plugin): what would be
sent to the API server, field by field."""
import json

import pulumi
import pytest
from pulumi.runtime import rpc

from validation.config import Kubernetes

BASE = {"context": "site-admin@gpu-cluster", "predictorImage": "registry.example.org/mlops/predictor:0.1.0"}
PASSWORD = "not-a-real-password-1234"
GENERATED = "generated-secret-5678"  # in every key the mocks generate
IS_TYPE = "kubernetes:serving.kserve.io/v1beta1:InferenceService"


class Recorder(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}

    def new_resource(self, args):
        self.resources[args.name] = args
        outs = dict(args.inputs)
        if args.typ.endswith(":GeneratedCredentials"):
            # GeneratedCredentials (MLflow's admin, its Flask key): made here, as its provider would
            outs.update(access_key=f"{args.name}-user", secret_key=f"{args.name}-{GENERATED}")
        return [f"{args.name}-id", outs]

    def call(self, args):
        return {}

    def of_type(self, typ: str) -> list[dict]:
        return [r.inputs for r in self.resources.values() if r.typ == typ]

    def named(self, typ: str) -> dict[str, dict]:
        return {r["metadata"]["name"]: r for r in self.of_type(typ) if "name" in r.get("metadata", {})}


def is_secret(value) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def render(**overrides) -> tuple[Recorder, dict]:
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="mlops-validation", stack="k8stest", preview=False)
    from stacks.k8s import KubernetesServing, KubernetesServingArgs

    summary: dict = {}

    @pulumi.runtime.test
    def build():
        serving = KubernetesServing("serving", KubernetesServingArgs(
            settings=Kubernetes.model_validate({**BASE, **overrides}),
            minio_root_password=pulumi.Output.secret(PASSWORD)))
        return serving.summary.apply(summary.update)

    build()
    return recorder, summary


@pytest.fixture(scope="module")
def default():
    return render()


def test_provider_targets_the_named_context(default):
    recorder, _ = default
    (provider,) = recorder.of_type("pulumi:providers:kubernetes")
    assert provider["context"] == "site-admin@gpu-cluster"
    k8s_resources = [r for r in recorder.resources.values() if r.typ.startswith("kubernetes:")]
    assert k8s_resources and all(r.provider and "serving-provider" in r.provider for r in k8s_resources)


def test_namespace(default):
    recorder, summary = default
    assert list(recorder.named("kubernetes:core/v1:Namespace")) == ["mlops-validation"]
    namespaced = [r for r in recorder.resources.values()
                  if r.typ.startswith("kubernetes:") and r.typ != "kubernetes:core/v1:Namespace"]
    assert all(r.inputs["metadata"]["namespace"] == "mlops-validation" for r in namespaced)
    assert summary["namespace"] == "mlops-validation"


def test_s3_secret_is_a_pulumi_secret_and_the_password_appears_nowhere_else(default):
    recorder, _ = default
    secret = recorder.named("kubernetes:core/v1:Secret")["s3-credentials"]
    assert is_secret(secret["stringData"])
    assert secret["stringData"]["value"] == {"AWS_ACCESS_KEY_ID": "mlops-admin", "AWS_SECRET_ACCESS_KEY": PASSWORD}
    others = [r.inputs for r in recorder.resources.values() if r.inputs is not secret]
    assert PASSWORD not in json.dumps(others, default=str)


def test_s3_annotations_on_secret_and_service_account(default):
    recorder, _ = default
    expected = {"serving.kserve.io/s3-endpoint": "minio.mlops-validation.svc.cluster.local:9000",
                "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-verifyssl": "0",
                "serving.kserve.io/s3-region": "us-east-1", "serving.kserve.io/s3-useanoncredential": "false"}
    account = recorder.named("kubernetes:core/v1:ServiceAccount")["kserve-s3"]
    assert account["metadata"]["annotations"] == expected
    assert account["secrets"] == [{"name": "s3-credentials"}]
    assert recorder.named("kubernetes:core/v1:Secret")["s3-credentials"]["metadata"]["annotations"] == expected


def test_minio_reads_its_credentials_from_the_secret(default):
    recorder, summary = default
    minio = recorder.named("kubernetes:apps/v1:Deployment")["minio"]
    container = minio["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("quay.io/minio/minio:RELEASE.")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {"MINIO_ROOT_USER": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"},
                   "MINIO_ROOT_PASSWORD": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert minio["spec"]["strategy"] == {"type": "Recreate"}
    claims = recorder.named("kubernetes:core/v1:PersistentVolumeClaim")
    assert claims["minio"]["spec"]["resources"]["requests"] == {"storage": "50Gi"}
    (job,) = recorder.of_type("kubernetes:batch/v1:Job")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "mc mb --ignore-existing store/models" in command and "store/mlflow" in command
    # mc gets the keys from the Secret's environment (MC_HOST_store), never as arguments of a command line
    assert "export MC_HOST_store=" in command and "mc alias" not in command and PASSWORD not in command
    assert summary["minio"] == "http://minio.mlops-validation.svc.cluster.local:9000"


def test_mlflow_uses_minio_for_artifacts(default):
    recorder, summary = default
    mlflow = recorder.named("kubernetes:apps/v1:Deployment")["mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == BASE["predictorImage"]  # it has mlflow and boto3
    assert "--artifacts-destination" in container["command"]
    assert container["command"][container["command"].index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == summary["minio"]
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
    assert summary["mlflow"] == "http://mlflow.mlops-validation.svc.cluster.local:5000"


def test_mlflow_runs_the_basic_auth_app_with_generated_credentials_from_a_secret(default):
    recorder, summary = default
    mlflow = recorder.named("kubernetes:apps/v1:Deployment")["mlflow"]
    pod = mlflow["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    # the admin's credentials and the Flask key: generated (GeneratedCredentials, secrets in the state), in the
    # Secret mlflow-auth, a Pulumi secret
    auth = recorder.named("kubernetes:core/v1:Secret")["mlflow-auth"]
    assert is_secret(auth["stringData"])
    data = auth["stringData"]["value"]
    assert data == {"MLFLOW_AUTH_ADMIN_USERNAME": "serving-mlflow-admin-user",
                    "MLFLOW_AUTH_ADMIN_PASSWORD": f"serving-mlflow-admin-{GENERATED}",
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": f"serving-mlflow-flask-{GENERATED}",
                    "MLFLOW_TRACKING_USERNAME": "serving-mlflow-admin-user",
                    "MLFLOW_TRACKING_PASSWORD": f"serving-mlflow-admin-{GENERATED}"}
    assert sorted(r.name for r in recorder.resources.values() if r.typ.endswith(":GeneratedCredentials")) == [
        "serving-mlflow-admin", "serving-mlflow-flask"]
    # the server reads them from that Secret's keys, by reference: no value in its environment or anywhere else
    env = {e["name"]: e for e in container["env"]}
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": var}
        assert "value" not in env[var]
    others = [r.inputs for r in recorder.resources.values() if r.inputs is not auth]
    assert GENERATED not in json.dumps(others, default=str)
    assert GENERATED not in json.dumps(summary, default=str)
    # the auth app's config: a ConfigMap mounted where MLFLOW_AUTH_CONFIG_PATH points, no secret in it, nobody but
    # the admin allowed anything, its users on the store's volume
    config = recorder.named("kubernetes:core/v1:ConfigMap")["mlflow-auth-config"]["data"]["basic_auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in config and "sqlite:////mlflow/basic_auth.db" in config
    assert "authenticate_request_basic_auth" in config and "admin_password" not in config
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth-config"]["configMap"] == {"name": "mlflow-auth-config"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["auth-config"]["mountPath"] == "/etc/mlflow-auth" and mounts["auth-config"]["readOnly"] is True
    assert mounts["store"]["mountPath"] == "/mlflow"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"  # the one path left open
    assert summary["mlflow_credentials_secret"] == "mlflow-auth"


def test_the_cluster_mlflow_has_the_embedded_servers_auth_config():
    from stacks.k8s.tracking import mlflow_command
    from stacks.local.mlflow import basic_auth_ini

    assert basic_auth_ini("sqlite:////mlflow/basic_auth.db").splitlines()[1:2] == ["default_permission = NO_PERMISSIONS"]
    assert "--app-name" in mlflow_command("mlflow") and not [a for a in mlflow_command("mlflow") if "password" in a]


def test_four_inference_services_in_both_modes(default):
    recorder, summary = default
    services = recorder.named(IS_TYPE)
    assert sorted(services) == ["mnist-raw", "mnist-serverless", "smollm2-raw", "smollm2-serverless"]
    for name, body in services.items():
        mode = "Serverless" if name.endswith("serverless") else "RawDeployment"
        assert body["metadata"]["annotations"] == (
            {"serving.kserve.io/deploymentMode": "Knative"} if mode == "Serverless" else
            {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "hpa"})
        predictor = body["spec"]["predictor"]
        assert predictor["serviceAccountName"] == "kserve-s3"
        assert predictor["model"]["storageUri"] in ("s3://models/mnist", "s3://models/smollm2")
        expected = (0, 3, "concurrency", 4) if mode == "Serverless" else (1, 3, "cpu", 80)
        assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"],
                predictor["scaleTarget"]) == expected
    gpu = services["smollm2-serverless"]["spec"]["predictor"]
    assert gpu["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu = services["mnist-raw"]["spec"]["predictor"]
    assert "nvidia.com/gpu" not in cpu["model"]["resources"]["limits"] and "nodeSelector" not in cpu
    assert [s["name"] for s in summary["inference_services"]] == ["mnist-raw", "mnist-serverless", "smollm2-raw",
                                                                   "smollm2-serverless"]
    assert sorted(recorder.named("kubernetes:serving.kserve.io/v1alpha1:ServingRuntime")) == ["mlops-mnist",
                                                                                               "mlops-smollm2"]


def test_gpu_services_wait_for_the_gpu_check(default):
    recorder, _ = default
    check = recorder.resources["serving-gpus-check"]
    assert check.inputs["node_selector"] == {"nvidia.com/gpu.present": "true"} and check.inputs["gpus_per_pod"] == 1
    assert check.inputs["wait_seconds"] == 0  # no operator: GPUs must be there already
    assert not recorder.of_type("kubernetes:helm.sh/v3:Release")


def test_gpu_operator_release_when_enabled():
    recorder, _ = render(gpuOperator={"enabled": True, "chartVersion": "v25.3.1",
                                      "values": {"driver": {"enabled": False}}})
    (release,) = recorder.of_type("kubernetes:helm.sh/v3:Release")
    assert release["chart"] == "gpu-operator" and release["version"] == "v25.3.1"
    assert release["repositoryOpts"] == {"repo": "https://helm.ngc.nvidia.com/nvidia"}
    assert release["namespace"] == "gpu-operator" and release["createNamespace"] is True
    assert release["values"] == {"driver": {"enabled": False}}
    assert recorder.resources["serving-gpus-check"].inputs["wait_seconds"] == 600


def test_one_mode_and_no_gpu_model():
    recorder, summary = render(deploymentModes=["Serverless"], gpuModel={"enabled": False},
                               measurement={"enabled": False})
    assert sorted(recorder.named(IS_TYPE)) == ["mnist-serverless"]
    assert "serving-gpus-check" not in recorder.resources and "serving-measurement" not in recorder.resources
    assert summary["gpu_nodes"] is None and summary["measurements"].startswith("disabled")
    (job,) = recorder.of_type("kubernetes:batch/v1:Job")
    assert "store/smollm2" not in job["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def test_measurement_gets_every_service_and_its_settings(default):
    recorder, _ = default
    measurement = recorder.resources["serving-measurement"].inputs
    assert measurement["context"] == "site-admin@gpu-cluster" and measurement["namespace"] == "mlops-validation"
    assert [s["name"] for s in measurement["services"]] == ["mnist-raw", "mnist-serverless", "smollm2-raw",
                                                            "smollm2-serverless"]
    assert measurement["settings"]["ramp_max_concurrency"] == 32 and len(measurement["revision"]) == 16


def test_a_changed_service_changes_the_measurement_revision(default):
    recorder, _ = default
    changed, _ = render(cpuModel={"serverless": {"scaleTarget": 9}})
    assert changed.resources["serving-measurement"].inputs["revision"] != \
        recorder.resources["serving-measurement"].inputs["revision"]


def test_no_seed_job_unless_asked(default):
    recorder, _ = default
    assert not [j for j in recorder.of_type("kubernetes:batch/v1:Job")
                if j["metadata"]["labels"]["app.kubernetes.io/name"] == "model-seed"]


def test_seed_job_publishes_the_base_model_to_the_storage_uri():
    recorder, summary = render(gpuModel={"seedBaseModel": True, "storageUri": "s3://models/smollm2-base"})
    (seed,) = [j for j in recorder.of_type("kubernetes:batch/v1:Job")
               if j["metadata"]["labels"]["app.kubernetes.io/name"] == "model-seed"]
    container = seed["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == BASE["predictorImage"]
    assert container["command"][-1] == ("python -m workloads.smollm prepare --out /tmp/smollm2 && python -m "
                                        "workloads.serving.objects publish --source /tmp/smollm2 "
                                        "--uri s3://models/smollm2-base")
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == summary["minio"]
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}


def test_a_kubeconfig_file_is_passed_as_a_secret(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nusers: [{name: u, user: {token: s3cr3t}}]\n")
    recorder, _ = render(kubeconfig=str(kubeconfig))
    (provider,) = recorder.of_type("pulumi:providers:kubernetes")
    assert is_secret(provider["kubeconfig"]) and "s3cr3t" in provider["kubeconfig"]["value"]


def test_a_missing_kubeconfig_file_is_a_clear_error(tmp_path):
    from stacks.k8s.provider import kubeconfig_text

    with pytest.raises(pulumi.RunError, match=r"kubernetes.kubeconfig: no such file: .*/nowhere"):
        kubeconfig_text(str(tmp_path / "nowhere"))


def test_the_grafana_dashboards_are_a_config_map_for_the_sidecar(default):
    recorder, _ = default
    maps = recorder.named("kubernetes:core/v1:ConfigMap")
    board = maps["mlops-validation-dashboards"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(board["data"]) == {"node.json", "predictors.json", "slurm.json"}
    for text in board["data"].values():
        panels = json.loads(text)["panels"]
        assert panels and all(t["expr"] for p in panels for t in p["targets"])
