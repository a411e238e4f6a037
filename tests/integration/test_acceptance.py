"""Acceptance tests, generated from the targets table (validation/targets.yaml): for every task this stack
runs, each target is met, or is reported not applicable on this hardware with a reason. A metric the stack
did not produce fails. The verdicts are recomputed here from the raw metrics, not read off the outputs.
"""
import pytest

from validation.config import ALL_TASKS
from validation.targets import all_targets

TARGETS = [t for t in all_targets() if t.task in ALL_TASKS]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.task}:{t.id}")
def test_target(target, stack_outputs):
    if target.task not in stack_outputs["validation"]["tasks"]:
        pytest.skip(f"task {target.task} is not enabled in this stack's config")
    result = stack_outputs.get(target.task)
    assert result, f"task {target.task} is enabled but the stack exported no output for it"
    verdict = next(r for r in result["targets"] if r["id"] == target.id)
    reason = target.not_applicable_reason(result["hardware"])
    if reason:
        assert verdict["status"] == "not_applicable" and verdict["reason"], verdict
        return
    value = result["metrics"].get(target.key)
    assert isinstance(value, (int, float)), f"{target.task} did not produce {target.key!r}"
    assert target.holds(value), f"{target.metric}: measured {value}, the spec wants {target.wanted}"
    assert verdict["status"] == "pass", verdict


def test_every_enabled_task_reported_on_every_target(stack_outputs):
    for task in stack_outputs["validation"]["tasks"]:
        ids = {r["id"] for r in stack_outputs[task]["targets"]}
        assert ids == {t.id for t in all_targets() if t.task == task}


def test_outputs_hold_job_ids_gres_environment_and_storage_figures(stack_outputs):
    job = stack_outputs["mlops_1_1"]["job"]
    assert job["job_id"].isdigit() and job["state"] == "COMPLETED" and job["exit_code"] == "0:0"
    assert job["gres_env"]["SLURM_JOB_ID"] == job["job_id"]
    assert job["gres_env"]["CUDA_VISIBLE_DEVICES"] in {"0", "1"}  # one GPU through GRES
    storage = stack_outputs["storage"]["metrics"]
    assert storage["write_mb_per_s"] > 0 and storage["read_mb_per_s"] > 0 and storage["fs_type"]
    slurm = stack_outputs["slurm"]["metrics"]
    assert slurm["jobs_completed"] == slurm["jobs_submitted"] > 0
    assert set(slurm["gres_devices_seen"]) <= {"0", "1"}


def test_data_parallel_run_used_both_gpus_and_stayed_in_sync(stack_outputs):
    cifar = stack_outputs["mlops_2_1"]
    assert cifar["jobs"]["2gpu"]["gres_env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert cifar["jobs"]["2gpu"]["gres_env"]["SLURM_NTASKS"] == "2"
    m = cifar["metrics"]
    assert m["world_size"] == 2 and m["world_size_1gpu"] == 1
    assert m["backend"] == ("nccl" if m["device"] == "cuda" else "gloo")
    assert m["params_in_sync"] is True and m["max_param_divergence"] == 0
    assert m["speedup"] == round(m["train_seconds_1gpu"] / m["train_seconds_2gpu"], 3)


def test_cpu_run_says_so(stack_outputs):
    m = stack_outputs["mlops_1_1"]["metrics"]
    if m["device"] == "cpu":
        # (Pulumi drops null values from outputs: no GPU sampling means no gpu_utilization key.)
        assert "gloo" in stack_outputs["validation"]["note"] and m.get("gpu_utilization") is None
