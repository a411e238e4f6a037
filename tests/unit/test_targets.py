import pytest

from validation.targets import Target, all_targets, evaluate, judge, load_targets, summarize, task_result

NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}  # the embedded default: GRES over fake devices
H200 = {"gpu": "NVIDIA H200", "gpus_per_node": 2, "kubernetes": False}
A100 = {"gpu": "NVIDIA A100-SXM4-80GB", "gpus_per_node": 2, "kubernetes": False}
K8S = {"gpu": None, "gpus_per_node": 0, "kubernetes": True}
ON_CPU = {"device": "cpu", "device_name": "Intel Xeon"}
ON_H200 = {"device": "cuda", "device_name": "NVIDIA H200"}


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
    from validation.config import task_names  # the task registry (stacks/tasks), which imports Pulumi
    for task in task_names():
        assert evaluate(task, {}, ON_CPU, NO_GPU), task
    assert {t.task for t in all_targets()} <= set(task_names())


def test_table_rows_the_issue_asks_for():
    by_id = {t.id: t for t in all_targets()}
    for rid in ("cifar_speedup", "llm_speedup"):
        assert (by_id[rid].op, by_id[rid].threshold) == ("ge", 1.7)
    for rid in ("cifar_scaling_efficiency_sane", "llm_scaling_efficiency_sane"):
        t = by_id[rid]
        assert (t.key, t.op, t.threshold, t.applies_to) == ("scaling_efficiency", "le", 1.0, "any")
    assert "llm_same_run_settings" not in by_id
    assert by_id["llm_same_work"].key == by_id["cifar_same_work"].key == "same_work"
    assert (by_id["cifar_same_work"].task, by_id["llm_same_work"].task) == ("mlops_2_1", "mlops_2_2")
    for rid in ("mnist_train_time_goal", "cifar_accuracy_goal", "llm_speedup_goal", "cifar_speedup_goal"):
        assert by_id[rid].applies_to == "gpu:h200", rid
    for prefix, task in (("cpu", "mlops_4_1"), ("gpu", "mlops_4_2")):
        assert (by_id[f"{prefix}_error_rate"].key, by_id[f"{prefix}_error_rate"].task) == ("error_rate", task)
        assert by_id[f"{prefix}_malformed_rejected"].key == "malformed_requests_4xx_fraction"
        for rid, key in ((f"{prefix}_autoscaling", "autoscaling_seconds"),
                         (f"k8s_{prefix}_cold_start", "k8s_cold_start_seconds"),
                         (f"k8s_{prefix}_ready", "k8s_ready_seconds")):
            assert (by_id[rid].key, by_id[rid].task, by_id[rid].applies_to) == (key, task, "kubernetes")
    assert by_id["gres_isolation"].key == "gres_distinct_fraction"
    assert by_id["gres_count_matches"].key == "gres_count_matches_fraction"
    assert "gres_overcommit_refused" in by_id
    presence = [t.id for t in all_targets() if t.op == "ge" and t.threshold == 0]
    assert presence == [], f"checks that cannot fail: {presence}"
    assert {by_id["oumi_eval_base_scored"].key, by_id["oumi_eval_finetuned_scored"].key} == \
        {"base_gsm8k_scored_fraction", "finetuned_gsm8k_scored_fraction"}


def _target(**kw):
    base = dict(id="t", metric="m", task="x", key="v", op="gt", threshold=0.95, unit="", applies_to="any",
                source="spec")
    return Target(**{**base, **kw})


@pytest.mark.parametrize("op, threshold, value, status", [
    ("gt", 0.95, 0.99, "pass"), ("gt", 0.95, 0.95, "fail"), ("ge", 0.99, 0.99, "pass"),
    ("lt", 300, 299.9, "pass"), ("lt", 300, 300, "fail"), ("le", 0, 0, "pass"),
    ("between", [1.7, 1.9], 1.8, "pass"), ("between", [1.7, 1.9], 1.95, "fail"),
    ("ge", 1, True, "pass"), ("ge", 1, False, "fail"), ("le", 0, False, "pass"),
])
def test_judge(op, threshold, value, status):
    assert judge(_target(op=op, threshold=threshold), {"v": value}, ON_CPU, NO_GPU)["status"] == status


def test_spec_speedup_range_is_a_lower_bound_and_efficiency_above_one_is_a_fault():
    ddp = {"device": "cuda", "device_name": "NVIDIA H200",
           "jobs": {"1gpu": ON_H200, "2gpu": {**ON_H200, "ranks": [ON_H200, ON_H200]}}}
    verdicts = {r["id"]: r for r in evaluate("mlops_2_1", {"speedup": 1.95, "scaling_efficiency": 0.975}, ddp, H200)}
    assert verdicts["cifar_speedup"]["status"] == verdicts["cifar_speedup_goal"]["status"] == "pass"
    assert verdicts["cifar_scaling_efficiency_sane"]["status"] == "pass"
    faulty = {r["id"]: r for r in evaluate("mlops_2_2", {"speedup": 2.4, "scaling_efficiency": 1.2}, ddp, H200)}
    assert faulty["llm_scaling_efficiency_sane"]["status"] == "fail"
    # a fault on any hardware, the embedded default's included
    assert {r["id"]: r["status"] for r in evaluate("mlops_2_1", {"scaling_efficiency": 1.2}, ON_CPU, NO_GPU)}[
        "cifar_scaling_efficiency_sane"] == "fail"


def test_missing_metric_is_reported_not_skipped():
    row = judge(_target(), {}, ON_CPU, NO_GPU)
    assert row["status"] == "missing" and "'v'" in row["reason"] and "not produced" in row["reason"]
    assert judge(_target(), {"v": float("nan")}, ON_CPU, NO_GPU)["status"] == "missing"
    assert judge(_target(), {"v": "0.99"}, ON_CPU, NO_GPU)["status"] == "missing"
    # a stack that knows why a figure is absent says so; it stays a defect
    row = judge(_target(), {"v": None, "not_measured": {"v": "no scale-up within 180 s"}}, ON_CPU, NO_GPU)
    assert row["status"] == "missing" and "no scale-up within 180 s" in row["reason"]


def test_no_declared_gpu_makes_gpu_targets_not_applicable_naming_the_config_key():
    row = judge(_target(applies_to="gpu"), {"v": 1.0}, ON_CPU, NO_GPU)
    assert row["status"] == "not_applicable" and "`hpc.gpu`" in row["reason"] and row["value"] == 1.0
    row = judge(_target(applies_to="gpu:h200"), {"v": 1.0}, ON_CPU, NO_GPU)
    assert row["status"] == "not_applicable" and "`hpc.gpu`" in row["reason"]
    row = judge(_target(applies_to="kubernetes"), {"v": 1.0}, ON_CPU, NO_GPU)
    assert row["status"] == "not_applicable" and "`kubernetes`" in row["reason"]
    assert judge(_target(applies_to="kubernetes"), {"v": 1.0}, ON_CPU, K8S)["status"] == "pass"
    assert judge(_target(applies_to="kubernetes"), {}, ON_CPU, K8S)["status"] == "missing"


def test_declared_gpu_with_cpu_jobs_fails_naming_the_job_and_device():
    observed = {"device": "cpu", "device_name": "Intel Xeon", "jobs": {"1gpu": ON_CPU, "2gpu": ON_CPU}}
    row = judge(_target(applies_to="gpu"), {"v": 1.0}, observed, H200)
    assert row["status"] == "fail"
    assert "declared GPU NVIDIA H200" in row["reason"] and "job 1gpu ran on cpu (Intel Xeon)" in row["reason"]
    assert "job 2gpu ran on cpu (Intel Xeon)" in row["reason"]
    # one rank of the 2-GPU job on CPU is enough
    ranks = {"device": "cuda", "device_name": "NVIDIA H200",
             "jobs": {"2gpu": {**ON_H200, "ranks": [ON_H200, {"device": "cpu", "device_name": "AMD EPYC"}]}}}
    row = judge(_target(applies_to="gpu:h200"), {"v": 1.0}, ranks, H200)
    assert row["status"] == "fail" and "job 2gpu rank 1 ran on cpu (AMD EPYC)" in row["reason"]
    # no jobs: the task's own device
    row = judge(_target(applies_to="gpu"), {"v": 1.0}, ON_CPU, H200)
    assert row["status"] == "fail" and "ran on cpu (Intel Xeon)" in row["reason"]
    # even a missing metric fails with the fallback as the reason, never not-applicable
    assert judge(_target(applies_to="gpu"), {}, ON_CPU, H200)["status"] == "fail"
    # on the GPUs it is judged by its value
    assert judge(_target(applies_to="gpu"), {"v": 1.0}, ON_H200, H200)["status"] == "pass"
    assert judge(_target(applies_to="gpu"), {"v": 0.5}, ON_H200, H200)["status"] == "fail"
    # targets on any hardware are still judged by their values
    assert judge(_target(), {"v": 1.0}, ON_CPU, H200)["status"] == "pass"


def test_gpu_class_goal_is_judged_on_that_gpu_only():
    goal = _target(applies_to="gpu:h200")
    assert judge(goal, {"v": 1.0}, ON_H200, H200)["status"] == "pass"
    assert judge(goal, {"v": 0.5}, ON_H200, H200)["status"] == "fail"
    assert judge(goal, {"v": 1.0}, ON_H200, {**H200, "gpu": "nvidia h200 nvl"})["status"] == "pass"
    row = judge(goal, {"v": 0.5}, {"device": "cuda", "device_name": "NVIDIA A100"}, A100)
    assert row["status"] == "not_applicable" and "H200" in row["reason"] and "`hpc.gpu`" in row["reason"]
    # the spec's GPU targets (scope gpu) are judged on any declared GPU
    assert judge(_target(applies_to="gpu"), {"v": 0.5}, {"device": "cuda"}, A100)["status"] == "fail"


def test_real_table_on_a_gpu_site_whose_jobs_fell_back_to_cpu():
    metrics = {"train_seconds": 20.0, "test_accuracy": 0.99, "reevaluation_delta": 0.0,
               "gpu_utilization_mean_percent": 90.0}
    verdicts = {r["id"]: r for r in evaluate("mlops_1_1", metrics, {**ON_CPU, "jobs": {"train": ON_CPU}}, H200)}
    for rid in ("mnist_train_time", "mnist_train_time_goal", "mnist_gpu_utilization"):
        assert verdicts[rid]["status"] == "fail" and "job train ran on cpu (Intel Xeon)" in verdicts[rid]["reason"]
    assert verdicts["mnist_accuracy"]["status"] == "pass"
    in_image = {**metrics, "container_jobs_inside": 1.0}
    on_gpu = {r["id"]: r["status"] for r in evaluate("mlops_1_1", in_image, ON_H200, {**H200, "container": True})}
    assert set(on_gpu.values()) == {"pass"}


def test_task_result_records_hardware_platform_and_records():
    result = task_result("storage", {"cross_job_checksum_ok": True}, {"device": "n/a"}, NO_GPU,
                         jobs={"write": {"job_id": "1"}})
    assert result["hardware"] == {"device": "n/a"} and result["platform"] == NO_GPU
    assert result["jobs"] == {"write": {"job_id": "1"}}
    # storage_in_container: not applicable, the platform runs no containers
    assert result["summary"] == {"pass": 1, "fail": 0, "not_applicable": 1, "missing": 0}
    with pytest.raises(ValueError, match="platform"):
        task_result("storage", {}, {"device": "n/a"}, {})
    with pytest.raises(ValueError, match="targets"):
        task_result("storage", {}, {"device": "n/a"}, NO_GPU, targets=[])


def test_summarize():
    rows = [{"status": "pass"}, {"status": "pass"}, {"status": "missing"}]
    assert summarize(rows) == {"pass": 2, "fail": 0, "not_applicable": 0, "missing": 1}


ROW = "{id: a, metric: m, task: x, key: v, op: gt, threshold: 1, unit: s, applies_to: any, source: spec}"


@pytest.mark.parametrize("rows, error", [
    ([ROW.replace("applies_to: any", "applies_to: gpux")], r"row 1 \(id a\): unknown scope"),
    ([ROW.replace("applies_to: any", 'applies_to: "gpu:"')], "unknown scope"),
    ([ROW.replace("op: gt", "op: approx")], r"row 1 \(id a\): unknown op 'approx'"),
    ([ROW, ROW], r"row 2 \(id a\): duplicate id 'a'"),
    ([ROW.replace("op: gt, threshold: 1", "op: between, threshold: 1")], "between needs threshold"),
    ([ROW.replace("threshold: 1", "threshold: high")], "needs a number"),
    ([ROW.replace("source: spec", "source: folklore")], "unknown source"),
    ([ROW.replace("unit: s, ", "")], "missing field.*unit"),
    ([ROW.replace("unit: s", "unit: s, scale: 2")], "unknown field.*scale"),
])
def test_table_is_validated_on_load(tmp_path, rows, error):
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n" + "".join(f"  - {r}\n" for r in rows))
    with pytest.raises(ValueError, match=error):
        load_targets(path)


def test_table_loads_gpu_class_scopes(tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text(f"targets:\n  - {ROW.replace('applies_to: any', 'applies_to: gpu:h200')}\n")
    assert load_targets(path)[0].gpu_class == "h200"
