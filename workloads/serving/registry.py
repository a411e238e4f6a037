"""MLOPS-5.1 registration: log the trained TorchScript model to the MLflow tracking server and register it.

    python -m workloads.serving.registry --tracking-uri http://127.0.0.1:PORT --model model.pt --name mnist-cnn \
        [--metrics-json metrics.json] [--alias champion] --out registration.json

registration_seconds is the wall time of log_model + model version creation, as a user's training script would
see it. `--serialization-format pickle` (the default here) keeps it well under a second; MLflow 3's own default,
pt2 (torch.export), needs an input example and takes ~8 s on two cores (shared/notes/ml-stack.md). The server
proxies artifacts (mlflow-artifacts:/), so this client needs no S3 credentials.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)

from workloads.metrics_io import sha256_file, write_json_atomic  # noqa: E402


def register(tracking_uri: str, model_path: Path, name: str, experiment: str, alias: str,
             serialization_format: str, training_metrics: dict) -> dict:
    import mlflow
    import torch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    model = torch.jit.load(str(model_path), map_location="cpu")
    mlflow.set_experiment(experiment)
    example = None
    if serialization_format == "pt2":  # torch.export needs a concrete input
        example = torch.zeros(1, 1, 28, 28).numpy()
    numeric = {k: float(v) for k, v in training_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with mlflow.start_run(run_name=f"{name}-registration") as run:
        mlflow.log_metrics(numeric)
        mlflow.log_params({"model_sha256": sha256_file(model_path), "source": str(model_path)})
        started = time.perf_counter()
        # Requirements named, not inferred: inference re-imports the model in a subprocess (9 s of the 9.4 s
        # log_model took here without them; 0.3 s with).
        info = mlflow.pytorch.log_model(model, name="model", serialization_format=serialization_format,
                                        input_example=example, registered_model_name=name,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        registration_seconds = time.perf_counter() - started
    client = MlflowClient()
    version = info.registered_model_version
    client.set_registered_model_alias(name, alias, version)
    started = time.perf_counter()
    loaded = mlflow.pytorch.load_model(f"models:/{name}@{alias}", map_location="cpu")
    load_seconds = time.perf_counter() - started
    with torch.no_grad():
        same = bool(torch.equal(loaded(torch.zeros(1, 1, 28, 28)), model(torch.zeros(1, 1, 28, 28))))
    return {"registered_model": name, "version": int(version), "alias": alias, "run_id": run.info.run_id,
            "model_uri": info.model_uri, "artifact_uri": client.get_model_version(name, version).source,
            "serialization_format": serialization_format, "registration_seconds": round(registration_seconds, 3),
            "registry_load_seconds": round(load_seconds, 3), "registry_model_matches": same,
            "mlflow_version": mlflow.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="log and register a TorchScript model in MLflow")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--experiment", default="mlops-validation")
    p.add_argument("--alias", default="champion")
    p.add_argument("--serialization-format", choices=["pickle", "pt2"], default="pickle")
    p.add_argument("--metrics-json", type=Path, help="the training job's metrics.json, logged with the run")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not args.model.is_file():
        print(f"error: no model file at {args.model}", file=sys.stderr)
        return 2
    training = json.loads(args.metrics_json.read_text()) if args.metrics_json else {}
    result = register(args.tracking_uri, args.model, args.name, args.experiment, args.alias,
                      args.serialization_format, training)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
