import pytest

from validation.config import ALL_TASKS
from validation.targets import Target, all_targets, evaluate, judge, summarize


def test_table_covers_every_spec_metric_row():
    spec_metrics = {t.metric for t in all_targets() if t.source == "spec"}
    for wording in ["Single GPU training time (MNIST)", "Single GPU training time (SmolLM)", "Multi-GPU speedup (2 GPUs)",
                    "GPU utilization", "Training accuracy (MNIST)", "Training accuracy (CIFAR-10)",
                    "CPU inference latency (P95)", "GPU inference latency (P95)", "GPU inference throughput",
                    "Autoscaling response time", "Cold start time", "Job submission success rate",
                    "Inference API uptime", "Model serving latency SLA (P95)", "End-to-end pipeline time",
                    "Model registration time", "Model sync time", "Deployment time"]:
        assert wording in spec_metrics


def test_tasks_of_this_stack_have_targets():
    for task in ALL_TASKS:
        assert evaluate(task, {}, {"device": "cpu"}), task


def _target(**kw):
    base = dict(id="t", metric="m", task="x", key="v", op="gt", threshold=0.95, unit="", applies_to="any", source="spec")
    return Target(**{**base, **kw})


@pytest.mark.parametrize("op, threshold, value, status", [
    ("gt", 0.95, 0.99, "pass"), ("gt", 0.95, 0.95, "fail"), ("ge", 0.99, 0.99, "pass"),
    ("lt", 300, 299.9, "pass"), ("lt", 300, 300, "fail"), ("le", 0, 0, "pass"),
    ("between", [1.7, 1.9], 1.8, "pass"), ("between", [1.7, 1.9], 1.95, "fail"),
])
def test_judge(op, threshold, value, status):
    assert judge(_target(op=op, threshold=threshold), {"v": value}, {"device": "cpu"})["status"] == status


def test_missing_metric_is_reported_not_skipped():
    row = judge(_target(), {}, {"device": "cpu"})
    assert row["status"] == "missing" and "'v'" in row["reason"]


def test_gpu_target_on_cpu_is_not_applicable_with_reason():
    row = judge(_target(applies_to="gpu"), {"v": 1.0}, {"device": "cpu", "device_name": "AMD EPYC"})
    assert row["status"] == "not_applicable" and "AMD EPYC" in row["reason"] and row["value"] == 1.0
    assert judge(_target(applies_to="gpu"), {"v": 1.0}, {"device": "cuda"})["status"] == "pass"
    assert judge(_target(applies_to="kubernetes"), {"v": 1.0}, {})["status"] == "not_applicable"


def test_summarize():
    rows = [{"status": "pass"}, {"status": "pass"}, {"status": "missing"}]
    assert summarize(rows) == {"pass": 2, "fail": 0, "not_applicable": 0, "missing": 1}
