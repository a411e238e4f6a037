"""The explicit Kubernetes provider: every resource of the serving stack goes to the kubeconfig context the
stack names, never to whatever context happens to be current on the machine running `pulumi up`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s


def kubeconfig_text(path: Optional[str]) -> Optional[str]:
    """The kubeconfig file's text (None: let the provider use $KUBECONFIG or ~/.kube/config)."""
    if path is None:
        return None
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise pulumi.RunError(f"config error: kubernetes.kubeconfig: no such file: {file}")
    return file.read_text()


def cluster_provider(name: str, context: str, kubeconfig: Optional[str],
                     opts: Optional[pulumi.ResourceOptions] = None) -> k8s.Provider:
    text = kubeconfig_text(kubeconfig)
    return k8s.Provider(name, k8s.ProviderArgs(
        context=context,
        # A kubeconfig holds credentials (tokens, client keys): a secret in the state.
        kubeconfig=pulumi.Output.secret(text) if text is not None else None,
    ), opts)
