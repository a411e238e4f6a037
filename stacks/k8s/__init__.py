"""The serving stack on a real Kubernetes cluster (a `kubernetes` section in Pulumi.<site>.yaml)."""
from stacks.k8s.serving import KubernetesServing, KubernetesServingArgs

__all__ = ["KubernetesServing", "KubernetesServingArgs"]
