"""The pure logic behind the cluster measurements and the GPU check (the API calls need a cluster)."""
import pytest

from stacks.k8s.gpu import GpuCheckError, allocatable_gpus, check_gpus
from stacks.k8s.measure import (not_ready_reason, pod_start_seconds, ramp_concurrency, readiness_seconds,
                                ready_pods, request_target, scale_up_seconds)


def isvc(conditions, created="2026-11-28T20:00:00Z"):
    return {"metadata": {"name": "mnist-raw", "creationTimestamp": created},
            "status": {"url": "http://mnist-raw.mlops.example.com", "conditions": conditions}}


def pod(ready: str, created="2026-11-28T20:00:00Z", at="2026-11-28T20:00:12Z", deleting=False):
    meta = {"name": "p", "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T20:05:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": at}]}}


def test_readiness_from_the_ready_condition():
    ready = isvc([{"type": "PredictorReady", "status": "True", "lastTransitionTime": "2026-11-28T20:00:20Z"},
                  {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T20:00:41Z"}])
    assert readiness_seconds(ready) == 41.0


def test_not_ready_has_no_readiness_and_says_why():
    waiting = isvc([{"type": "PredictorReady", "status": "False", "reason": "RevisionMissing",
                     "message": "Configuration is waiting for a Revision"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-28T20:00:41Z"}])
    assert readiness_seconds(waiting) is None
    assert not_ready_reason(waiting) == ("PredictorReady=False (RevisionMissing: Configuration is waiting for a "
                                         "Revision); Ready=False")
    assert not_ready_reason({"metadata": {}, "status": None}) == "no status conditions yet"


def test_ready_pods_skips_unready_and_terminating():
    assert ready_pods([pod("True"), pod("False"), pod("True", deleting=True)]) == 1


def test_pod_start_is_the_slowest_ready_pod():
    pods = [pod("True", at="2026-11-28T20:00:12Z"), pod("True", at="2026-11-28T20:00:25Z"), pod("False")]
    assert pod_start_seconds(pods) == 25.0
    assert pod_start_seconds([pod("False")]) is None


def test_scale_up_time_counts_from_the_load_start():
    observations = [(99.0, 3), (100.0, 1), (130.0, 1), (147.5, 2), (160.0, 3)]
    assert scale_up_seconds(observations, start=100.0, baseline=1) == 47.5
    assert scale_up_seconds(observations, start=100.0, baseline=3) is None  # never above the baseline


def test_ramp_rises_linearly_then_holds():
    assert [ramp_concurrency(t, 100, 33) for t in (0, 25, 50, 99.9, 100, 500)] == [1, 9, 17, 32, 33, 33]


def test_request_target_direct_or_through_the_ingress():
    url = "http://mnist-serverless.mlops.example.com"
    assert request_target(url, None, "mnist-serverless") == (
        "http://mnist-serverless.mlops.example.com/v1/models/mnist-serverless:predict", {})
    assert request_target(url, "http://10.0.0.5:80", "mnist-serverless") == (
        "http://10.0.0.5:80/v1/models/mnist-serverless:predict", {"Host": "mnist-serverless.mlops.example.com"})


def test_kubernetes_figures_of_a_task_are_the_worst_of_its_services():
    from stacks.tasks.mlops_4_1 import kubernetes_figures

    summary = {"measurements": {
        "mnist-raw": {"model": "mnist", "mode": "RawDeployment", "readiness_seconds": 20.0, "cold_start_seconds": 9.0,
                      "autoscaling_seconds": 70.0, "not_measured": {}},
        "mnist-serverless": {"model": "mnist", "mode": "Serverless", "readiness_seconds": 35.0,
                             "cold_start_seconds": 14.0, "autoscaling_seconds": None,
                             "not_measured": {"autoscaling_seconds": "no pod beyond the baseline 1"}},
        "smollm2-raw": {"model": "smollm2", "readiness_seconds": 99.0, "cold_start_seconds": 50.0}}}
    figures = kubernetes_figures(summary, "mnist")
    assert figures["k8s_ready_seconds"] == 35.0 and figures["k8s_cold_start_seconds"] == 14.0
    # a service whose scale-up never came makes the task's figure missing, with the reason kept beside it
    assert figures["autoscaling_seconds"] is None
    assert "no pod beyond" in figures["kubernetes"]["not_measured"]["mnist-serverless"]["autoscaling_seconds"]
    assert kubernetes_figures({"measurements": "disabled (measurement.enabled)"}, "mnist")["autoscaling_seconds"] is None


def node(name, gpus=None, labels=None, unschedulable=False):
    allocatable = {"cpu": "64"} if gpus is None else {"cpu": "64", "nvidia.com/gpu": str(gpus)}
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": allocatable}}


def test_allocatable_gpus_of_matching_schedulable_nodes():
    nodes = [node("gpu-1", 8, {"nvidia.com/gpu.present": "true"}), node("cpu-1", None, {}),
             node("gpu-2", 0, {"nvidia.com/gpu.present": "true"}),
             node("gpu-3", 8, {"nvidia.com/gpu.present": "true"}, unschedulable=True)]
    assert allocatable_gpus(nodes, {"nvidia.com/gpu.present": "true"}) == {"gpu-1": 8, "gpu-2": 0}
    assert allocatable_gpus(nodes, {}) == {"gpu-1": 8, "cpu-1": 0, "gpu-2": 0}


def test_gpu_check_fails_clearly_without_gpus():
    with pytest.raises(GpuCheckError, match="no schedulable node in context 'ctx' matches"):
        check_gpus({}, 1, {"nvidia.com/gpu.present": "true"}, "ctx")
    with pytest.raises(GpuCheckError, match="has 1 allocatable nvidia.com/gpu"):
        check_gpus({"gpu-2": 0, "cpu-1": 0}, 1, {}, "ctx")
    with pytest.raises(GpuCheckError, match="has 4 allocatable"):
        check_gpus({"gpu-1": 2}, 4, {}, "ctx")
    check_gpus({"gpu-1": 8, "gpu-2": 0}, 4, {}, "ctx")  # one node with enough is enough
