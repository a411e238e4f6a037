"""Monitoring (Prometheus/Grafana) that watches the platform, measured: Prometheus, Alertmanager, the node
exporter and the SLURM exporter on 127.0.0.1 (stacks/monitoring/) scrape the predictors, MinIO, the node and
the scheduler from the start of the run. After every other task is done, `workloads.monitoring_check` measures
that every scrape target is up, the expected series exist with fresh samples, every rule loaded, each Grafana panel's
query (charts/grafana/) returns data, requests sent to the MNIST predictor are counted, and that a predictor
stopped (SIGSTOP) fires PredictorDown in Alertmanager, which resolves once it is continued, and a SLURM job made to
fail fires SlurmJobFailures, which resolves when the rule's window has passed: each time measured.
"""
from __future__ import annotations

import json
from typing import Optional

import pulumi
import yaml

from stacks.local.process import LocalRun, REPO_ROOT
from stacks.monitoring import Monitoring, MonitoringArgs, ScrapeTarget
from stacks.tasks import Measured, Task
from stacks.tasks.fixtures import LLM_NAME, MNIST_NAME
from validation.plots import Plot, alert_timeline

DASHBOARDS = sorted(str(p) for p in (REPO_ROOT / "charts" / "grafana").glob("*.json"))
PREDICTOR_TASKS = ("mlops_4_1", "mlops_4_2", "mlops_5_1")
TRAFFIC_REQUESTS = 50


def predictor_series(model: str) -> list[str]:
    return [f'up{{job="predictors", model_name="{model}"}}', f'request_predict_seconds_count{{model_name="{model}"}}',
            f'predictor_requests_total{{model_name="{model}"}}']


class PlatformMonitoring(Task):
    name = "monitoring"
    # The spec's component; sorts after the MLOPS rows, so it is built last and its fault hits a quiet platform.
    spec = "Monitoring (Prometheus/Grafana)"
    title = "Monitoring: Prometheus, Alertmanager, exporters, alert rules, dashboards"
    uses = PREDICTOR_TASKS  # the predictors it watches and stops
    plots = (Plot("monitoring_alert_timeline.png", alert_timeline()),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        if not any(t in settings.tasks for t in PREDICTOR_TASKS):
            return "monitoring stops a predictor to see its alert: add mlops_4_1 (or mlops_4_2, mlops_5_1) to tasks"
        return None

    def build(self, run) -> Measured:
        s = run.settings
        serving = s.serving.base_port
        targets, series = [], []
        mnist, llm = run.made("mnist_predictor"), run.provided("mlops_4_2", "predictor")
        if mnist is not None:
            targets.append(ScrapeTarget("predictors", f"127.0.0.1:{serving + 3}", {"model_name": MNIST_NAME}))
            series += predictor_series(MNIST_NAME)
        if llm is not None:
            targets.append(ScrapeTarget("predictors", f"127.0.0.1:{serving + 4}", {"model_name": LLM_NAME}))
            series += predictor_series(LLM_NAME)
        if run.made("serving") is not None and not s.serving.minio.endpoint:  # the MinIO this stack runs
            targets.append(ScrapeTarget("minio", f"127.0.0.1:{serving}", metrics_path="/minio/v2/metrics/cluster"))
            series += ['up{job="minio"}', 'minio_s3_requests_total{job="minio"}']
        series += ['up{job="node"}', 'node_cpu_seconds_total{job="node"}', 'node_memory_MemAvailable_bytes{job="node"}',
                   'up{job="prometheus"}', 'alertmanager_alerts{job="alertmanager"}']
        # The SLURM exporter runs where SLURM's commands reach the cluster: this machine on the embedded default. A
        # site runs workloads/slurm_exporter.py on its login node; this stack does not watch its scheduler then.
        slurm_conf = run.hpc.slurm_conf
        if slurm_conf is not None:
            series += ['slurm_up{job="slurm"}', 'slurm_jobs{job="slurm"}', 'slurm_node_up{job="slurm"}',
                       'slurm_job_failures_total{job="slurm"}', 'slurm_job_queue_wait_seconds_count{job="slurm"}']
            if s.hpc.gpus_per_node:
                series += ['slurm_gres_configured{job="slurm", gres="gpu"}',
                           'slurm_gres_allocated{job="slurm", gres="gpu"}']

        stack = Monitoring("monitoring", MonitoringArgs(
            state_dir=s.monitoring_state_dir(run.stack), base_port=s.monitoring.base_port,
            scrape_interval_s=s.monitoring.scrape_interval_seconds, slurm_conf=slurm_conf, targets=targets))
        watched = mnist or llm
        model = MNIST_NAME if mnist is not None else LLM_NAME
        spec = pulumi.Output.all(watched.daemon.pid, watched.url, slurm_conf).apply(lambda v: json.dumps({
            "series": series, "rules": sum(len(group["rules"]) for text in stack.rules.values()
                                           for group in yaml.safe_load(text)["groups"]),
            "dashboards": DASHBOARDS, "interval_s": s.monitoring.scrape_interval_seconds,
            "timeout_s": s.monitoring.alert_timeout_seconds,
            "traffic": {"url": v[1], "model": MNIST_NAME, "requests": TRAFFIC_REQUESTS} if mnist is not None else None,
            "fault": {"pid": v[0], "alert": "PredictorDown", "labels": {"model_name": model}},
            "job_fault": {"alert": "SlurmJobFailures", "slurm_conf": v[2], "partition": s.hpc.partition}
            if v[2] else None}))
        # After everything built before (the load tests above all): the fault must not hit a task still measuring.
        done_before = run.after(*run.built)
        check = LocalRun("monitoring-check", {
            "name": "monitoring check", "module": "workloads.monitoring_check",
            "args": spec.apply(lambda text: ["--prometheus", stack.prometheus_url,
                                             "--alertmanager", stack.alertmanager_url, "--spec", text]),
            "prometheus": stack.prometheus.id, "timeout_s": 900},
            pulumi.ResourceOptions(depends_on=[*stack.daemons, watched, *done_before]))
        metrics = check.result.apply(lambda r: {**r, "scrape_interval_seconds": s.monitoring.scrape_interval_seconds,
                                                "prometheus_url": stack.prometheus_url,
                                                "alertmanager_url": stack.alertmanager_url})
        return Measured(metrics=metrics, done=[check])
