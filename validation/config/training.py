"""The training and platform-check sections' sizes (`mnist`, `cifar`, `llm`, `storage`, `slurmProbe`).
None everywhere means: the profile's value (validation/config/profiles.py), else the workload's own default."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from validation.config.base import Section

class Mnist(Section):
    epochs: Optional[int] = Field(None, ge=1, le=100)  # None: the workload's default
    batch_size: Optional[int] = Field(None, ge=1, le=65536)


class Cifar(Section):
    epochs: Optional[int] = Field(None, ge=1, le=200)
    global_batch_size: Optional[int] = Field(None, ge=2, le=65536)
    max_train_samples: Optional[int] = Field(None, ge=100, le=50000)


class Llm(Section):
    """MLOPS-1.2 / 2.2: SmolLM2-135M-Instruct fine-tuning. None: the profile's size (profiles.py)."""

    trainer: Literal["oumi", "torch"] = "oumi"  # torch: the plain PyTorch trainer, for sites without Oumi
    max_steps: Optional[int] = Field(None, ge=1, le=100000)
    global_batch_size: Optional[int] = Field(None, ge=2, le=4096)  # the same for 1 and 2 GPUs; even
    seq_len: Optional[int] = Field(None, ge=16, le=8192)
    eval_samples: Optional[int] = Field(None, ge=1, le=1319)  # held-out GSM8K test records
    lr: Optional[float] = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _even_batch(self) -> "Llm":
        if self.global_batch_size is not None and self.global_batch_size % 2:
            raise ValueError(f"globalBatchSize must be even: the 2-GPU run splits it in two "
                             f"(got {self.global_batch_size})")
        return self


class StorageCheck(Section):
    size_mb: Optional[int] = Field(None, ge=1, le=1024 * 1024)


class SlurmProbe(Section):
    jobs: Optional[int] = Field(None, ge=1, le=10000)


