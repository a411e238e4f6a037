from validation.targets import task_result
from validation.verdict import NO_OUTPUT, overall

NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}
H200 = {"gpu": "NVIDIA H200", "gpus_per_node": 2, "kubernetes": False}
STORAGE_OK = {"cross_job_checksum_ok": True, "write_mb_per_s": 900.0}


def _outputs(tasks, **results):
    return {"validation": {"stack": "t", "tasks": tasks}, **results, "_run": {"exit_code": 0}}


def test_every_target_met_is_pass():
    v = overall(_outputs(["storage"], storage=task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU)))
    assert v["status"] == "PASS" and v["reasons"] == [] and v["counts"]["pass"] == 1
    assert v["platform"] == NO_GPU and v["tasks"]["storage"]["summary"]["pass"] == 1


def test_an_empty_outputs_file_is_fail():
    for empty in ({}, {"_run": {"exit_code": 0}}, [], None):
        v = overall(empty)
        assert v["status"] == "FAIL" and v["counts"]["pass"] == 0
        assert any("no target passed" in r for r in v["reasons"])
        assert any("`validation`" in r for r in v["reasons"])


def test_enabled_task_without_output_is_fail_and_says_why():
    v = overall(_outputs(["storage", "mlops_1_1"],
                         storage=task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU)))
    assert v["status"] == "FAIL" and v["not_run"] == {"mlops_1_1": NO_OUTPUT}
    assert "its resources failed — see the pulumi log" in NO_OUTPUT
    assert any(r.startswith("task mlops_1_1: enabled, produced no output") for r in v["reasons"])


def test_pulumi_up_failure_is_fail_even_when_every_target_passed():
    outputs = _outputs(["storage"], storage=task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU))
    outputs["_run"] = {"exit_code": 255}
    v = overall(outputs)
    assert v["status"] == "FAIL" and any("`pulumi up` exited 255" in r for r in v["reasons"])


def test_fail_and_missing_targets_are_fail_with_the_target_named():
    bad = overall(_outputs(["storage"], storage=task_result("storage", {"cross_job_checksum_ok": False},
                                                            {"device": "n/a"}, NO_GPU)))
    assert bad["status"] == "FAIL" and any("storage:storage_integrity fail" in r for r in bad["reasons"])
    gone = overall(_outputs(["storage"], storage=task_result("storage", {}, {"device": "n/a"}, NO_GPU)))
    assert gone["status"] == "FAIL" and gone["counts"]["missing"] == 1
    assert any("storage:storage_integrity missing" in r for r in gone["reasons"])


def test_nothing_judged_is_fail_not_pass_with_zero_targets_met():
    # a task with no rows in the table: every enabled task has its output, yet nothing was judged
    v = overall(_outputs(["toy"], toy=task_result("toy", {"x": 1}, {"device": "n/a"}, NO_GPU)))
    assert v["status"] == "FAIL" and v["reasons"] == ["no target passed: nothing was measured"]


def test_the_verdict_is_judged_again_from_the_raw_metrics():
    result = task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU)
    result["targets"] = [{**result["targets"][0], "status": "pass"}]
    result["metrics"] = {"cross_job_checksum_ok": False}  # edited outputs: a stored pass does not count
    assert overall(_outputs(["storage"], storage=result))["status"] == "FAIL"
    # and a verdict the stack recorded as fail stands
    stale = task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU)
    stale["targets"] = [{**stale["targets"][0], "status": "fail", "reason": "checksum differs"}]
    v = overall(_outputs(["storage"], storage=stale))
    assert v["status"] == "FAIL" and any("checksum differs" in r for r in v["reasons"])


def test_gpu_site_with_cpu_jobs_is_fail():
    metrics = {"train_seconds": 20.0, "test_accuracy": 0.995, "reevaluation_delta": 0.0,
               "gpu_utilization_mean_percent": 90.0}
    observed = {"device": "cpu", "device_name": "Intel Xeon", "jobs": {"train": {"device": "cpu",
                                                                                  "device_name": "Intel Xeon"}}}
    v = overall(_outputs(["mlops_1_1"], mlops_1_1=task_result("mlops_1_1", metrics, observed, H200)))
    assert v["status"] == "FAIL"
    assert any("mlops_1_1:mnist_train_time fail — declared GPU NVIDIA H200" in r and "job train ran on cpu" in r
               for r in v["reasons"])
    on_gpu = {"device": "cuda", "device_name": "NVIDIA H200"}
    assert overall(_outputs(["mlops_1_1"], mlops_1_1=task_result("mlops_1_1", metrics, on_gpu, H200)))[
        "status"] == "PASS"


def test_output_without_declared_platform_is_fail():
    result = task_result("storage", STORAGE_OK, {"device": "n/a"}, NO_GPU)
    del result["platform"]
    v = overall(_outputs(["storage"], storage=result))
    assert v["status"] == "FAIL" and "platform" in v["not_run"]["storage"]
    # the validation section may carry it for every task
    outputs = _outputs(["storage"], storage=result)
    outputs["validation"]["platform"] = NO_GPU
    assert overall(outputs)["status"] == "PASS"
