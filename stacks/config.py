"""The one place that reads `pulumi.Config`: raw values in, validated Settings (validation/config.py) out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from validation.config import ConfigError, Settings, parse

OBJECT_KEYS = ("tasks", "hpc", "storage", "slurmProbe", "mnist", "cifar")
KEYS = ("profile", "datasetsDir", *OBJECT_KEYS)


@dataclass
class StackConfig:
    stack: str
    settings: Settings
    ssh_private_key: Optional[pulumi.Output[str]]  # a Pulumi secret; only for hpc.target = ssh


def load() -> StackConfig:
    cfg = pulumi.Config()
    raw = {key: cfg.get_object(key) if key in OBJECT_KEYS else cfg.get(key)
           for key in KEYS}
    try:
        settings = parse(raw)
    except ConfigError as exc:
        raise pulumi.RunError(f"config error: {exc}") from None
    key = None
    if settings.hpc.target == "ssh":
        key = cfg.get_secret("sshPrivateKey")
        if key is None:
            raise pulumi.RunError(f"config error: {cfg.name}:sshPrivateKey is required for hpc.target 'ssh' "
                                  f"(set it with: pulumi config set --secret sshPrivateKey < key-file)")
    return StackConfig(stack=pulumi.get_stack(), settings=settings, ssh_private_key=key)
