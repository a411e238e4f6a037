"""MLOPS-5.1: train → register → sync → deploy, lineage-true. MLOPS-1.1's SLURM job leaves the model on shared
storage with its own predictions on fixed inputs; the model is logged to MLflow (its artifacts uploaded to MinIO:
the sync), registered and given the alias `champion`; the deployment resolves `models:/mnist-cnn@champion` to that
version's S3 URI and starts a KServe predictor that fetches it from MinIO (never the job's file); the served file's
sha256 must be the trained file's, and its answers on the fixed inputs the job's own. Each stage is timed."""
from __future__ import annotations

import datetime
from typing import Optional

import pulumi

from stacks.local.mlflow import AliasResolution, ModelRegistration, ModelRegistrationArgs
from stacks.local.model_server import Predictor, PredictorArgs
from stacks.local.process import LocalRun
from stacks.tasks import Measured, Task, devices
from stacks.tasks.fixtures import mlflow_server, serving_base

REGISTERED_MODEL, ALIAS, SERVED_NAME = "mnist-cnn", "champion", "mnist-champion"


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
        base, mlflow = serving_base(run), mlflow_server(run)
        model, job = run.provided("mlops_1_1", "model"), run.provided("mlops_1_1", "job")
        registration = ModelRegistration("serving-registration", ModelRegistrationArgs(
            server=mlflow, model_path=model.apply(lambda m: m["path"]), model_sha256=model.apply(lambda m: m["sha256"]),
            name=REGISTERED_MODEL, metrics_json=job.job_dir.apply(lambda d: f"{d}/metrics.json"),
            serialization_format=run.settings.serving.registration_format),
            base.options(*run.after(*self.uses)))
        resolved = AliasResolution("serving-champion", mlflow, registration, REGISTERED_MODEL, ALIAS, base.options())
        predictor = Predictor("serving-mnist-registry", PredictorArgs(
            kind="mnist", model_name=SERVED_NAME, minio=base.minio, state_dir=base.state_dir, port=base.base_port + 5,
            storage_uri=resolved.result.apply(lambda r: r["storage_uri"]),
            extra_args=resolved.result.apply(lambda r: ["--model-file", r["model_file"]]), ready_timeout_s=120),
            base.options())
        lineage = LocalRun("serving-lineage", {
            "name": "lineage check of the served champion", "module": "workloads.serving.lineage",
            "args": pulumi.Output.all(predictor.url, job.metrics).apply(lambda v: [
                "--url", v[0], "--model-name", SERVED_NAME, "--data-dir", v[1]["data_dir"],
                "--predictions", v[1]["predictions"]["path"]]),
            "predictor": predictor.daemon.id, "timeout_s": 300}, base.options())
        metrics = pulumi.Output.all(job.metrics, job.elapsed_seconds, registration.result, resolved.result,
                                    predictor.cold_start_seconds, predictor.load_metrics, lineage.result,
                                    mlflow.tracking_uri).apply(
            lambda v: pipeline_metrics(*v, destination=mlflow.artifacts_destination))
        # Its GPU goal (the pipeline on one GPU) is judged on the device the training stage ran on.
        return Measured(metrics=metrics, observed=job.metrics.apply(lambda m: devices(training=m)), done=[lineage],
                        provides={"registered_model": REGISTERED_MODEL, "alias": ALIAS, "registration": registration})


def pipeline_metrics(training: dict, train_seconds: Optional[float], registration: dict, resolved: dict,
                     cold_start: float, served: dict, lineage: dict, tracking_uri: str, destination: str) -> dict:
    """Each stage as measured, the pipeline time as their sum, and the lineage: the served version is the one the
    alias names, its file the trained file, its answers the training job's."""
    resolve = resolved.get("resolve_seconds")
    stages = {"train_job_seconds": train_seconds, "sync_seconds": registration.get("sync_seconds"),
              "registration_seconds": registration.get("registration_seconds"),
              "deployment_seconds": round(resolve + cold_start, 3)
              if isinstance(resolve, (int, float)) and isinstance(cold_start, (int, float)) else None,
              "verification_seconds": lineage.get("verify_seconds")}
    measured = [v for v in stages.values() if isinstance(v, (int, float))]
    trained = (training.get("model") or {}).get("sha256")
    started = training.get("started_at")
    wall = None
    if started and lineage.get("verified_at"):
        wall = round(lineage["verified_at"] - datetime.datetime.fromisoformat(started).timestamp(), 1)
    return {**stages, "pipeline_seconds": round(sum(measured), 3) if len(measured) == len(stages) else None,
            "pipeline_note": "sum of the measured stages: the MLOPS-1.1 training job, logging the model to MLflow "
                             "(its artifacts uploaded to MinIO), registering it and setting the alias, resolving "
                             "the alias and starting the predictor until ready (fetching from MinIO), the lineage "
                             "check; pipeline_wall_seconds is the clock from the job's start to the check, waits "
                             "between the stack's steps included",
            "pipeline_wall_seconds": wall,
            "served_sha256_matches": bool(trained) and served.get("model_sha256") == trained
            and resolved.get("registered_sha256") == trained,
            "alias_resolves_to_registered_version": resolved.get("version") == registration.get("version"),
            # fetched from the registry's artifact store, not from the job's folder on shared storage
            "served_from_registry": str(resolved.get("storage_uri", "")).startswith(f"{destination}/"),
            "predictions_match_fraction": lineage.get("predictions_match_fraction"),
            "max_logit_abs_diff": lineage.get("max_logit_abs_diff"),
            "trained_sha256": trained, "served_sha256": served.get("model_sha256"),
            "storage_uri": resolved.get("storage_uri"), "tracking_uri": tracking_uri,
            "registry": registration, "resolved": resolved, "lineage": lineage,
            "predictor": {k: v for k, v in served.items() if k not in ("pid", "process_started_at")}}
