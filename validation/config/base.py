"""What every config section shares: camelCase keys in Pulumi.<stack>.yaml, unknown keys refused, one error type."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

PROJECT = "mlops-validation"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


class Section(BaseModel):
    # camelCase keys in Pulumi.<stack>.yaml, snake_case in Python; unknown keys are typos, so refuse them.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
