"""Acceptance tests, generated from the targets table (validation/targets.yaml): for every task this stack
runs, each target is met, or is reported not applicable on the declared hardware with a reason naming the
config key that declares it absent. A metric the stack did not produce fails. The verdicts are recomputed
here from the raw metrics, what the jobs saw and the declared platform (validation/targets.py, the one judge),
and the overall verdict is validation/verdict.py's, the same the report shows.
"""
import pytest

from validation.targets import DECLARING_KEYS, all_targets, judge
from validation.verdict import NO_OUTPUT, overall

CONFIG_KEYS = tuple(f"`{key}`" for key in DECLARING_KEYS)


def _enabled(stack_outputs) -> list:
    return (stack_outputs.get("validation") or {}).get("tasks") or []


def _needs(stack_outputs, task):
    if task not in _enabled(stack_outputs):
        pytest.skip(f"task {task} is not enabled in this stack's config")
    assert isinstance(stack_outputs.get(task), dict), f"task {task}: {NO_OUTPUT}"
    return stack_outputs[task]


def test_overall_verdict_is_pass(stack_outputs):
    verdict = overall(stack_outputs)
    assert verdict["status"] == "PASS", "overall verdict FAIL:\n" + "\n".join(verdict["reasons"])


def test_every_enabled_task_has_an_output(stack_outputs):
    enabled = _enabled(stack_outputs)
    assert enabled, "the outputs name no enabled task (no `validation` section)"
    absent = [t for t in enabled if not isinstance(stack_outputs.get(t), dict) or "targets" not in stack_outputs[t]]
    assert not absent, f"enabled, produced no output (their resources failed — see the pulumi log): {absent}"


@pytest.mark.parametrize("target", all_targets(), ids=lambda t: f"{t.task}:{t.id}")
def test_target(target, stack_outputs):
    if target.task not in _enabled(stack_outputs):
        pytest.skip(f"task {target.task} is not enabled in this stack's config")
    result = stack_outputs.get(target.task)
    assert result, f"task {target.task} is enabled but the stack exported no output for it"
    assert "platform" in result, f"{target.task}'s output does not carry the declared platform"
    row = judge(target, result.get("metrics") or {}, result.get("hardware") or {}, result["platform"])
    recorded = next((r for r in result.get("targets", []) if r["id"] == target.id), None)
    assert recorded is not None, f"{target.task} did not report on {target.id}"
    assert recorded["status"] == row["status"], f"the stack judged {recorded}, the table judges {row}"
    if row["status"] == "not_applicable":
        assert any(key in row["reason"] for key in CONFIG_KEYS), row
        return
    why = row.get("reason") or f"measured {row.get('value')}, the spec wants {target.wanted}"
    assert row["status"] == "pass", f"{target.metric}: {row['status']} — {why}"


def test_not_applicable_targets_name_a_config_key(stack_outputs):
    for task in _enabled(stack_outputs):
        for row in (stack_outputs.get(task) or {}).get("targets", []):
            if row["status"] == "not_applicable":
                assert any(key in (row.get("reason") or "") for key in CONFIG_KEYS), (task, row)


def test_every_enabled_task_reported_on_every_target(stack_outputs):
    for task in _enabled(stack_outputs):
        ids = {r["id"] for r in (stack_outputs.get(task) or {}).get("targets", [])}
        assert ids == {t.id for t in all_targets() if t.task == task}, task


def test_outputs_hold_job_ids_gres_environment_and_storage_figures(stack_outputs):
    job = _needs(stack_outputs, "mlops_1_1")["job"]
    assert job["job_id"].isdigit() and job["state"] == "COMPLETED" and job["exit_code"] == "0:0"
    assert job["gres_env"]["SLURM_JOB_ID"] == job["job_id"]
    assert job["gres_env"]["CUDA_VISIBLE_DEVICES"] in {"0", "1"}  # one GPU through GRES
    storage = _needs(stack_outputs, "storage")["metrics"]
    assert storage["write_mb_per_s"] > 0 and storage["read_mb_per_s"] > 0 and storage["fs_type"]
    slurm = _needs(stack_outputs, "slurm")["metrics"]
    assert slurm["jobs_completed"] == slurm["jobs_submitted"] > 0
    assert set(slurm["gres_devices_seen"]) <= {"0", "1"}


def test_data_parallel_run_used_both_gpus_and_stayed_in_sync(stack_outputs):
    cifar = _needs(stack_outputs, "mlops_2_1")
    assert cifar["jobs"]["2gpu"]["gres_env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert cifar["jobs"]["2gpu"]["gres_env"]["SLURM_NTASKS"] == "2"
    m = cifar["metrics"]
    assert m["world_size"] == 2 and m["world_size_1gpu"] == 1
    assert m["backend"] == ("nccl" if m["device"] == "cuda" else "gloo")
    assert m["params_in_sync"] is True and m["max_param_divergence"] == 0
    assert m["speedup"] == round(m["train_seconds_1gpu"] / m["train_seconds_2gpu"], 3)


def test_cpu_run_says_so(stack_outputs):
    m = _needs(stack_outputs, "mlops_1_1")["metrics"]
    if m["device"] == "cpu":
        # (Pulumi drops null values from outputs: no GPU sampling means no gpu_utilization key.)
        assert "gloo" in stack_outputs["validation"]["note"] and m.get("gpu_utilization") is None
