"""`oumi`: Oumi on the cluster over ssh (MLOPS-3.1, 3.2; stacks/oumi/)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from validation.config.base import Section


class Oumi(Section):
    # This machine's Python with oumi, which runs `oumi launch` (the "laptop"); default .venv-oumi.
    # The cluster side's is hpc.oumiPython.
    launcher_python: Optional[str] = None
    # A Hugging Face model folder already on the cluster's shared storage; default: the base SmolLM2 the stack
    # stages (stacks/tasks/fixtures.py llm_assets).
    base_model_dir: Optional[str] = None
    train_steps: Optional[int] = Field(None, ge=1, le=100000)  # MLOPS-3.1's short fine-tune
    eval_samples: Optional[int] = Field(None, ge=1, le=252)  # per eval set (the Self-Instruct set has 252)
    max_new_tokens: Optional[int] = Field(None, ge=16, le=4096)
    max_length: Optional[int] = Field(None, ge=16, le=8192)  # tokens per training record


