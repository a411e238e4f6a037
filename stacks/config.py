"""The one place that reads `pulumi.Config`: raw values in, validated Settings (validation/config/) out. The keys
are the schema's: a section is read as an object, a plain value as a string."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_origin

import pulumi

from validation.config import ConfigError, Settings, parse

# key in Pulumi.<stack>.yaml -> whether it is a plain value (else an object: a section, a list)
KEYS = {field.alias or name: field.annotation is str or get_origin(field.annotation) is Literal
        for name, field in Settings.model_fields.items()}


@dataclass
class StackConfig:
    stack: str
    settings: Settings
    ssh_private_key: Optional[pulumi.Output[str]]  # a Pulumi secret; only for hpc.target = ssh
    # A Pulumi secret; only with a `kubernetes` section: MinIO's root password, also the S3 secret key KServe uses.
    k8s_minio_root_password: Optional[pulumi.Output[str]] = None
    # Pulumi secrets, optional: the embedded serving MinIO's keys (generated when unset), or an existing MinIO's.
    serving_minio_access_key: Optional[pulumi.Output[str]] = None
    serving_minio_secret_key: Optional[pulumi.Output[str]] = None


def _read(cfg: pulumi.Config, key: str, plain: bool):
    """One key's raw value; a section or list that is not one (e.g. `hpc: slurm`) is a ConfigError naming it."""
    if plain:
        return cfg.get(key)
    try:
        return cfg.get_object(key)
    except pulumi.ConfigTypeError:
        text = cfg.get(key) or ""
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise ConfigError(f"{cfg.name}:{key}: must be a section or a list, not the text {shown!r}") from None


def load() -> StackConfig:
    cfg = pulumi.Config()
    try:
        settings = parse({key: _read(cfg, key, plain) for key, plain in KEYS.items()})
    except ConfigError as exc:
        raise pulumi.RunError(f"config error: {exc}") from None
    key = None
    if settings.hpc.target == "ssh":
        key = cfg.get_secret("sshPrivateKey")
        if key is None:
            raise pulumi.RunError(f"config error: {cfg.name}:sshPrivateKey is required for hpc.target 'ssh' "
                                  f"(set it with: pulumi config set --secret sshPrivateKey < key-file)")
    minio_password = None
    if settings.kubernetes is not None:
        minio_password = cfg.get_secret("k8sMinioRootPassword")
        if minio_password is None:
            raise pulumi.RunError(f"config error: {cfg.name}:k8sMinioRootPassword is required with a kubernetes section "
                                  f"(set it with: pulumi config set --secret k8sMinioRootPassword <8+ characters>)")
    serving_keys = (cfg.get_secret("servingMinioAccessKey"), cfg.get_secret("servingMinioSecretKey"))
    if settings.serving.minio.endpoint and None in serving_keys:
        raise pulumi.RunError(f"config error: {cfg.name}:servingMinioAccessKey and servingMinioSecretKey are required "
                              f"with serving.minio.endpoint (pulumi config set --secret servingMinioSecretKey ...)")
    return StackConfig(stack=pulumi.get_stack(), settings=settings, ssh_private_key=key,
                       k8s_minio_root_password=minio_password,
                       serving_minio_access_key=serving_keys[0], serving_minio_secret_key=serving_keys[1])
