"""The platform's Grafana dashboards (charts/grafana/*.json, the same JSON the embedded monitoring task queries)
as one ConfigMap, labelled for the Grafana dashboard sidecar (kube-prometheus-stack's `grafana_dashboard: "1"`),
so a cluster's Grafana loads them; the Prometheus they read is the datasource the dashboard's variable selects."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import labels

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "charts" / "grafana"
SIDECAR_LABEL = {"grafana_dashboard": "1"}


def dashboards() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def dashboards_config_map(name: str, namespace: pulumi.Input[str],
                          opts: Optional[pulumi.ResourceOptions] = None) -> k8s.core.v1.ConfigMap:
    return k8s.core.v1.ConfigMap(name, k8s.core.v1.ConfigMapInitArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(name="mlops-validation-dashboards", namespace=namespace,
                                            labels={**labels("grafana-dashboards"), **SIDECAR_LABEL}),
        data=dashboards()), opts)
