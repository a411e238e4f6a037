"""GPUs for the GPU model: the optional NVIDIA GPU Operator (a Helm release) and a check that the nodes the
GPU InferenceServices select advertise allocatable `nvidia.com/gpu`; without any it fails with a clear error
instead of leaving predictor pods Pending."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider
from validation.config import GPU_RESOURCE, GpuOperator


class GpuCheckError(RuntimeError):
    pass


# -- pure logic (unit-tested) ----------------------------------------------------------------------
def node_matches(node: dict, selector: dict) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def allocatable_gpus(nodes: list[dict], selector: dict) -> dict[str, int]:
    """Allocatable nvidia.com/gpu of each schedulable node that matches the selector."""
    found = {}
    for node in nodes:
        if not node_matches(node, selector) or node.get("spec", {}).get("unschedulable"):
            continue
        quantity = (node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
        found[node["metadata"]["name"]] = int(quantity)
    return found


def check_gpus(per_node: dict[str, int], gpus_per_pod: int, selector: dict, context: str) -> None:
    if not per_node:
        raise GpuCheckError(f"no schedulable node in context {context!r} matches gpuModel.nodeSelector {selector}")
    if max(per_node.values()) < gpus_per_pod:
        raise GpuCheckError(
            f"no node in context {context!r} matching {selector} has {gpus_per_pod} allocatable {GPU_RESOURCE} "
            f"(gpuModel.gpus); found {per_node}. Is the NVIDIA device plugin (GPU Operator) running?")


# -- the check as a resource -----------------------------------------------------------------------
class _GpuNodeCheckProvider(ReplacingProvider):
    settings_only = ("wait_seconds",)  # how long to wait for the GPUs: not what is checked

    def create(self, props):
        from kubernetes import client as kclient

        from stacks.k8s.kube_api import api_client, as_dict

        api = api_client(props["context"], props.get("kubeconfig"))
        core = kclient.CoreV1Api(api)
        deadline = time.monotonic() + props["wait_seconds"]
        while True:
            nodes = [as_dict(api, n) for n in core.list_node().items]
            per_node = allocatable_gpus(nodes, props["node_selector"])
            try:
                check_gpus(per_node, props["gpus_per_pod"], props["node_selector"], props["context"])
                break
            except GpuCheckError:
                if time.monotonic() > deadline:  # the GPU Operator's device plugin may still be starting
                    raise
                time.sleep(10)
        return CreateResult(f"gpu-check-{props['context']}", {**props, "gpu_nodes": per_node,
                                                               "total_gpus": sum(per_node.values())})


@dataclass
class GpuNodeCheckArgs:
    context: str
    kubeconfig: Optional[str]
    node_selector: dict
    gpus_per_pod: int
    wait_seconds: int = 0  # how long to wait for GPUs to appear (the GPU Operator installs its device plugin)


class GpuNodeCheck(Resource):
    gpu_nodes: pulumi.Output[dict]
    total_gpus: pulumi.Output[int]

    def __init__(self, name: str, args: GpuNodeCheckArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_GpuNodeCheckProvider(), name, {
            "context": args.context, "kubeconfig": args.kubeconfig, "node_selector": args.node_selector,
            "gpus_per_pod": args.gpus_per_pod, "wait_seconds": args.wait_seconds,
            "gpu_nodes": None, "total_gpus": None}, opts)


def gpu_operator_release(name: str, settings: GpuOperator, opts: pulumi.ResourceOptions) -> k8s.helm.v3.Release:
    return k8s.helm.v3.Release(name, k8s.helm.v3.ReleaseArgs(
        chart="gpu-operator", version=settings.chart_version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=settings.repository),
        namespace=settings.namespace, create_namespace=True, values=settings.values,
        wait_for_jobs=True, timeout=900), opts)


@dataclass
class GpuNodesArgs:
    context: str
    kubeconfig: Optional[str]
    operator: GpuOperator
    node_selector: dict
    gpus_per_pod: int


class GpuNodes(pulumi.ComponentResource):
    """The GPU Operator when asked for, then the allocatable-GPU check (which waits for the operator)."""

    def __init__(self, name: str, args: GpuNodesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:GpuNodes", name, None, opts)
        self.operator = None
        if args.operator.enabled:
            self.operator = gpu_operator_release(f"{name}-operator", args.operator, pulumi.ResourceOptions(parent=self))
        self.check = GpuNodeCheck(f"{name}-check", GpuNodeCheckArgs(
            context=args.context, kubeconfig=args.kubeconfig, node_selector=args.node_selector,
            gpus_per_pod=args.gpus_per_pod, wait_seconds=600 if self.operator else 0),
            pulumi.ResourceOptions(parent=self, depends_on=[self.operator] if self.operator else []))
        self.register_outputs({"gpu_nodes": self.check.gpu_nodes, "total_gpus": self.check.total_gpus})
