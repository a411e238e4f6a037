"""`serving`: the embedded serving stack on 127.0.0.1 (MLOPS-4.1, 4.2, 5.1; stacks/local/)."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, model_validator

from validation.config.base import Section

SERVING_S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"
LOAD_STAGE = r"^users=[1-9][0-9]*(,rate=[0-9]+(\.[0-9]+)?)?$"


class ServingMinio(Section):
    # An existing MinIO (http://host:port) instead of starting one; its keys are then the secrets
    # servingMinioAccessKey / servingMinioSecretKey (on the embedded server they are optional: generated).
    endpoint: Optional[str] = Field(None, pattern=r"^https?://[^/\s]+$")
    binary: Optional[str] = None  # default: `minio` on PATH, else .tools/bin/minio (tools/bootstrap.sh)


class ServedModel(Section):
    # Serve a model already in MinIO (s3://bucket/key) instead of publishing the one this stack trained.
    storage_uri: Optional[str] = Field(None, pattern=SERVING_S3_URI)
    # Load-test stages, each users=N (closed loop) or users=N,rate=R (R requests/s in total); default: the profile's.
    stages: Optional[list[str]] = None
    stage_seconds: Optional[float] = Field(None, ge=2, le=600)

    @model_validator(mode="after")
    def _stages(self):
        for stage in self.stages or []:
            if not re.fullmatch(LOAD_STAGE, stage):
                raise ValueError(f"stages: {stage!r} is not users=N or users=N,rate=R")
        if self.stages is not None and not self.stages:
            raise ValueError("stages: give at least one stage")
        return self


class ServedLlm(ServedModel):
    # A Hugging Face model folder to serve; default: MLOPS-1.2's fine-tuned model when that task runs, else the
    # base SmolLM2 (python -m workloads.smollm prepare).
    model_dir: Optional[str] = None
    max_new_tokens: int = Field(8, ge=1, le=256)  # per load-test request
    max_batch_size: int = Field(8, ge=1, le=256)
    max_batch_delay_ms: float = Field(10.0, ge=0, le=1000)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Serving(Section):
    # MinIO on basePort (its console +1), MLflow +2, the MNIST predictor +3, the LLM predictor +4.
    base_port: int = Field(16900, ge=1024, le=65000)
    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>-serving
    minio: ServingMinio = ServingMinio()
    cpu: ServedModel = ServedModel()
    llm: ServedLlm = ServedLlm()
    registration_format: Literal["pickle", "pt2"] = "pickle"  # mlflow.pytorch.log_model serialization_format
    # The GPU of the machine that runs these predictors (the one running `pulumi up`), e.g. "NVIDIA H200"; "none"
    # (the default) where it has none. It decides where MLOPS-4.2's GPU targets apply, as hpc.gpu does for the jobs.
    gpu: Optional[str] = Field(None, min_length=1)

    @property
    def gpu_model(self) -> Optional[str]:
        return None if self.gpu in (None, "none") else self.gpu


