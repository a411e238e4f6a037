"""MLOPS-5.1: train → register → sync → deploy. MLOPS-1.1's training job, its model logged and registered in an
MLflow tracking server (SQLite, artifacts in MinIO), published to MinIO and deployed as the MNIST predictor; each
stage as measured, and the pipeline time as their sum."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.local.mlflow import MlflowServer, MlflowServerArgs, ModelRegistration, ModelRegistrationArgs
from stacks.tasks import Measured, Task
from stacks.tasks.fixtures import mnist_predictor, serving_base


class TrainRegisterDeploy(Task):
    name = "mlops_5_1"
    spec = "MLOPS-5.1"
    title = "MLOPS-5.1 Train → register → sync → deploy"
    uses = ("mlops_1_1", "mlops_4_1")  # the trained model; the predictor's load test first

    @classmethod
    def check(cls, settings) -> Optional[str]:
        if "mlops_1_1" not in settings.tasks:
            return "registers and deploys MLOPS-1.1's model: add mlops_1_1 to tasks"
        return None

    def build(self, run) -> Measured:
        base, predictor = serving_base(run), mnist_predictor(run)
        model, job = run.provided("mlops_1_1", "model"), run.provided("mlops_1_1", "job")
        mlflow = MlflowServer("serving-mlflow", MlflowServerArgs(
            state_dir=base.state_dir, port=base.base_port + 2, minio=base.minio), base.options())
        registration = ModelRegistration("serving-registration", ModelRegistrationArgs(
            server=mlflow, model_path=model.apply(lambda m: m["path"]), model_sha256=model.apply(lambda m: m["sha256"]),
            metrics_json=job.job_dir.apply(lambda d: f"{d}/metrics.json"),
            serialization_format=run.settings.serving.registration_format),
            base.options(*run.after(*self.uses)))
        metrics = pulumi.Output.all(registration.result, predictor.sync, predictor.cold_start_seconds,
                                    job.elapsed_seconds, predictor.storage_uri, mlflow.tracking_uri).apply(
            lambda v: pipeline_metrics(*v))
        return Measured(metrics=metrics, done=[registration])


def pipeline_metrics(registration: dict, sync: dict, deployment_seconds: float, train_seconds: Optional[float],
                     storage_uri: str, tracking_uri: str) -> dict:
    """Each stage as measured, and the pipeline time as the sum of the stages it ran."""
    stages = {"train_job_seconds": train_seconds, "registration_seconds": registration["registration_seconds"],
              "sync_seconds": sync.get("sync_seconds"), "deployment_seconds": deployment_seconds}
    measured = [v for v in stages.values() if isinstance(v, (int, float))]
    return {**stages, "pipeline_seconds": round(sum(measured), 3) if len(measured) == len(stages) else None,
            "pipeline_note": "sum of the measured stages: the MLOPS-1.1 training job, MLflow registration, "
                             "publishing the model to MinIO, the predictor's start until ready",
            "registry": registration, "storage_uri": storage_uri, "tracking_uri": tracking_uri}
