"""Names and labels the serving stack's modules share (one place, so a test can find every object)."""
from __future__ import annotations

PART_OF = {"app.kubernetes.io/part-of": "mlops-validation"}
S3_SECRET = "s3-credentials"
SERVICE_ACCOUNT = "kserve-s3"
MINIO = "minio"
MLFLOW = "mlflow"
MLFLOW_AUTH_SECRET = "mlflow-auth"  # the MLflow admin's credentials and its Flask key
MLFLOW_AUTH_CONFIG = "mlflow-auth-config"  # the auth app's basic_auth.ini (no secret in it)
MINIO_API_PORT = 9000
MINIO_CONSOLE_PORT = 9001
MLFLOW_PORT = 5000
PREDICTOR_PORT = 8080  # KServe's default container port for a predictor
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri's objects
IS_LABEL = "serving.kserve.io/inferenceservice"  # KServe puts it on every predictor pod
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
# The config keeps the modes' familiar names; KServe 0.16 renamed them (the old names are deprecated aliases),
# and its webhook validates cpu/memory scaling only for "Standard" with autoscalerClass "hpa"
# (kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go, validateAutoScalingCompExtension).
KSERVE_MODE = {"RawDeployment": "Standard", "Serverless": "Knative"}
MODE_SUFFIX = {"RawDeployment": "raw", "Serverless": "serverless"}


def labels(component: str) -> dict:
    return {**PART_OF, "app.kubernetes.io/name": component}


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"
