"""Monitoring of the platform on 127.0.0.1, as Pulumi resources (stacks/local/process.py's LocalDaemon): Debian's
Prometheus, Alertmanager and node exporter, and this project's SLURM exporter (workloads/slurm_exporter.py).

Prometheus' config is generated here: it scrapes the KServe predictors' /metrics, MinIO's cluster metrics, the node
exporter, the SLURM exporter, itself and Alertmanager, evaluates the rule files of monitoring/rules/ (copied into
its state folder, so a changed rule restarts it) and sends its alerts to Alertmanager, whose one receiver has no
integration: the validation reads the alerts from Alertmanager's API. Ports from monitoring.basePort: Prometheus
+0, Alertmanager +1, the node exporter +2, the SLURM exporter +3. Alertmanager's cluster (gossip) listener, which
binds every interface by default, is switched off.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
import yaml

from stacks.local.process import REPO_ROOT, WORKLOADS_PYTHON, LocalDaemon, ServingError, StateDir

RULES_DIR = REPO_ROOT / "monitoring" / "rules"
PORT_KEY = "mlops-validation:monitoring.basePort"


def rule_files() -> dict[str, str]:
    """The alert rule files (not their unit tests), by name."""
    return {p.name: p.read_text() for p in sorted(RULES_DIR.glob("*.yml")) if not p.name.endswith("_test.yml")}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ServingError(f"{name} not found: tools/bootstrap.sh installs Debian's prometheus, "
                           "prometheus-alertmanager and prometheus-node-exporter")
    return found


@dataclass
class ScrapeTarget:
    job: str  # the `job` label
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def prometheus_config(targets: list[ScrapeTarget], alertmanager: str, rules: list[str], interval_s: float) -> str:
    """prometheus.yml: one scrape job a `job` label, every target on 127.0.0.1."""
    jobs: dict[str, dict] = {}
    for t in targets:
        job = jobs.setdefault(t.job, {"job_name": t.job, "metrics_path": t.metrics_path, "static_configs": []})
        job["static_configs"].append({"targets": [t.address], **({"labels": t.labels} if t.labels else {})})
    interval = f"{int(interval_s * 1000)}ms"
    return yaml.safe_dump({
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": rules,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": list(jobs.values())}, sort_keys=False)


def alertmanager_config() -> str:
    """One route, one receiver without integrations (the validation reads Alertmanager's API), no waiting."""
    return yaml.safe_dump({
        "route": {"receiver": "validation", "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "validation"}]}, sort_keys=False)


@dataclass
class MonitoringArgs:
    state_dir: str
    base_port: int
    scrape_interval_s: float
    slurm_conf: Optional[pulumi.Input[str]]  # the cluster the SLURM exporter reads (SLURM_CONF); None: no exporter
    targets: list[ScrapeTarget]  # the platform's own endpoints (predictors, MinIO)


class Monitoring(pulumi.ComponentResource):
    prometheus_url: str
    alertmanager_url: str
    targets: list[ScrapeTarget]  # everything Prometheus scrapes
    rules: dict[str, str]

    def __init__(self, name: str, args: MonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:monitoring:Monitoring", name, None, opts)
        state, port = args.state_dir, args.base_port
        folder = StateDir(f"{name}-state", state, pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, depends_on=[folder])
        logs = f"{state}/logs"
        address = {part: f"127.0.0.1:{port + i}" for i, part in
                   enumerate(("prometheus", "alertmanager", "node", "slurm"))}
        self.prometheus_url, self.alertmanager_url = (f"http://{address['prometheus']}",
                                                      f"http://{address['alertmanager']}")

        node = LocalDaemon(f"{name}-node-exporter", {
            "name": "node exporter",
            "argv": [binary("prometheus-node-exporter"), f"--web.listen-address={address['node']}"],
            "ready_url": f"http://{address['node']}/metrics", "ready_timeout_s": 30,
            "log_file": f"{logs}/node-exporter.log", "ports": {str(port + 2): PORT_KEY}}, child)
        exporters = [node]
        if args.slurm_conf is not None:
            exporters.append(LocalDaemon(f"{name}-slurm-exporter", {
                "name": "SLURM exporter",
                "argv": [WORKLOADS_PYTHON, "-m", "workloads.slurm_exporter", "--port", str(port + 3)],
                "env": pulumi.Output.from_input(args.slurm_conf).apply(lambda c: {"SLURM_CONF": c}),
                "ready_url": f"http://{address['slurm']}/metrics", "ready_timeout_s": 60,
                "log_file": f"{logs}/slurm-exporter.log", "ports": {str(port + 3): PORT_KEY}}, child))
        am_config = f"{state}/alertmanager.yml"
        alertmanager = LocalDaemon(f"{name}-alertmanager", {
            "name": "Alertmanager",
            "argv": [binary("prometheus-alertmanager"), f"--config.file={am_config}",
                     f"--storage.path={state}/alertmanager", f"--web.listen-address={address['alertmanager']}",
                     "--cluster.listen-address="],
            "files": {am_config: alertmanager_config()},
            "ready_url": f"{self.alertmanager_url}/-/ready", "ready_timeout_s": 30,
            "log_file": f"{logs}/alertmanager.log", "ports": {str(port + 1): PORT_KEY}}, child)

        self.rules = rule_files()
        self.targets = [*args.targets, ScrapeTarget("node", address["node"]),
                        *([ScrapeTarget("slurm", address["slurm"])] if args.slurm_conf is not None else []),
                        ScrapeTarget("prometheus", address["prometheus"]),
                        ScrapeTarget("alertmanager", address["alertmanager"])]
        config = f"{state}/prometheus.yml"
        rules = {f"{state}/rules/{n}": text for n, text in self.rules.items()}
        self.prometheus = LocalDaemon(f"{name}-prometheus", {
            "name": "Prometheus",
            "argv": [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={state}/prometheus",
                     f"--web.listen-address={address['prometheus']}", "--storage.tsdb.retention.time=2d"],
            "files": {config: prometheus_config(self.targets, address["alertmanager"], list(rules),
                                                args.scrape_interval_s), **rules},
            "ready_url": f"{self.prometheus_url}/-/ready", "ready_timeout_s": 60,
            "log_file": f"{logs}/prometheus.log", "ports": {str(port): PORT_KEY}},
            pulumi.ResourceOptions(parent=self, depends_on=[folder, alertmanager]))
        self.daemons = [*exporters, alertmanager, self.prometheus]
        self.register_outputs({"prometheus": self.prometheus_url, "alertmanager": self.alertmanager_url})
