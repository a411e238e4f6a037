"""MLOPS-4.1: CPU inference. MLOPS-1.1's model published to MinIO and served by a KServe predictor that fetches it
by its s3:// URI (on 127.0.0.1), under a locust load test at fixed concurrency levels and a fixed rate: latency of
the successful requests, errors as their own figure, uptime that counts failed inferences, cold start and model
load, and malformed requests that must get 4xx. With a `kubernetes` section, the InferenceServices' readiness,
cold start and autoscaling on the cluster join the same figures."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.local.load_generator import LoadTest, LoadTestArgs
from stacks.tasks import Measured, Task, devices
from stacks.tasks.fixtures import MNIST_NAME, kubernetes, mnist_predictor
from validation.plots import Plot, serving_latency


class CpuInference(Task):
    name = "mlops_4_1"
    spec = "MLOPS-4.1"
    title = "MLOPS-4.1 CPU inference (MNIST, KServe)"
    uses = ("mlops_1_1",)  # its model
    plots = (Plot("cpu_serving_latency.png", serving_latency()),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        if "mlops_1_1" not in settings.tasks and not settings.serving.cpu.storage_uri:
            return "serves MLOPS-1.1's model: add mlops_1_1 to tasks, or set serving.cpu.storageUri"
        return None

    def build(self, run) -> Measured:
        s, predictor = run.settings, mnist_predictor(run)
        load = LoadTest("serving-mnist-load", LoadTestArgs(
            predictor=predictor, example="mnist-v1", model_name=MNIST_NAME,
            stages=s.option("serving.cpu.stages"), stage_seconds=s.option("serving.cpu.stage_seconds")))
        metrics = served(load.result, predictor, kubernetes(run), MNIST_NAME)
        return Measured(metrics=metrics, observed=metrics.apply(lambda m: devices(predictor=m)), done=[load])


def served(load: pulumi.Output[dict], predictor, cluster, model: str) -> pulumi.Output[dict]:
    """A predictor's task metrics: the load test's figures, its cold start and model load, and the cluster's."""
    summary = cluster.summary if cluster is not None else None
    return pulumi.Output.all(load, predictor.cold_start_seconds, predictor.load_metrics, predictor.sync,
                             predictor.storage_uri, summary, predictor.url).apply(
        lambda v: {**serving_metrics(*v[:5]), "predictor_url": v[6],
                   **(kubernetes_figures(v[5], model) if v[5] is not None else {})})


def serving_metrics(load: dict, cold_start: float, loaded: dict, sync: dict, storage_uri: str) -> dict:
    """One predictor's figures: the load test's plus its cold start and model load time."""
    return {**load, "cold_start_seconds": cold_start, "model_load_seconds": loaded.get("model_load_seconds"),
            "model_download_seconds": loaded.get("download_seconds"), "storage_uri": storage_uri,
            "sync_seconds": sync.get("sync_seconds"), "model_bytes": sync.get("bytes") or loaded.get("model_bytes"),
            "device": loaded.get("device", "cpu"), "device_name": loaded.get("device_name", "cpu"),
            "predictor": {k: v for k, v in loaded.items() if k not in ("pid", "process_started_at")}}


def kubernetes_figures(summary: dict, model: str) -> dict:
    """The cluster's figures for one model, the worst over its InferenceServices (one a deployment mode): a figure
    that one service could not measure is None (missing, which fails), its reason kept in `kubernetes`."""
    measured = summary.get("measurements")
    services = {name: m for name, m in measured.items() if m.get("model") == model} \
        if isinstance(measured, dict) else {}

    def worst(key: str) -> Optional[float]:
        values = [m.get(key) for m in services.values()]
        return max(values) if values and all(isinstance(v, (int, float)) for v in values) else None

    return {"k8s_ready_seconds": worst("readiness_seconds"), "k8s_cold_start_seconds": worst("cold_start_seconds"),
            "autoscaling_seconds": worst("autoscaling_seconds"),
            "kubernetes": {"context": summary.get("context"), "namespace": summary.get("namespace"),
                           "services": services, "gpu_nodes": summary.get("gpu_nodes"),
                           "not_measured": {n: m.get("not_measured") for n, m in services.items()
                                            if m.get("not_measured")} or
                           ({} if services else {"all": measured if isinstance(measured, str)
                                                 else f"no InferenceService serves {model}"})}}
