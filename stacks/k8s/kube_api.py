"""The Kubernetes API as the dynamic providers (GPU check, measurements) see it: the `kubernetes` client for
the stack's context, and objects turned into plain camelCase dicts so that the logic on them is testable."""
from __future__ import annotations

import os
from datetime import datetime
from typing import Optional


def api_client(context: str, kubeconfig: Optional[str]):
    from kubernetes import config  # imported here: only a run against a real cluster needs it

    path = os.path.expanduser(kubeconfig) if kubeconfig else None
    return config.new_client_from_config(config_file=path, context=context)


def as_dict(client, obj) -> dict:
    """A client model object (V1Node, V1Pod, ...) as the API's JSON: camelCase keys, RFC 3339 times."""
    return client.sanitize_for_serialization(obj)


def timestamp(value: str) -> float:
    """An RFC 3339 time from the API ("2026-11-28T20:01:02Z") as POSIX seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
