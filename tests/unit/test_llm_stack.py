"""MLOPS-1.2 / 2.2 on the stack: how the two runs are compared, and the checks made before anything starts."""
import shutil

import pytest

from stacks.tasks.llm import SFT_FILES, compare, single_gpu_metrics
from stacks.slurm.staging import preflight
from validation.config import REPO_ROOT, ConfigError, parse
from validation.targets import evaluate

DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def run(seconds, world, **extra):
    return {"train_seconds": seconds, "world_size": world, "global_batch_size": 32, "steps": 200, "seq_len": 512,
            "seed": 0, "heldout_loss_before": 1.38, "heldout_loss_after": 0.66, "heldout_loss_dropped": True,
            "device": "cuda", "device_name": "NVIDIA H200", **extra}


def test_speedup_and_efficiency_come_from_the_train_times():
    m = compare(run(90.0, 1), run(50.0, 2, gpu_utilization={"mean_percent": 75.0}))
    assert m["speedup"] == pytest.approx(1.8) and m["scaling_efficiency"] == pytest.approx(0.9)
    assert m["same_run_settings"] is True and m["gpu_utilization_mean_percent"] == 75.0
    verdicts = {r["id"]: r["status"] for r in evaluate("mlops_2_2", m, {"device": "cuda"})}
    assert verdicts["llm_speedup"] == "pass" and verdicts["llm_speedup_goal"] == "fail"


def test_runs_with_other_settings_are_not_comparable():
    m = compare(run(90.0, 1), run(50.0, 2, global_batch_size=64))
    assert m["same_run_settings"] is False
    assert {r["id"]: r["status"] for r in evaluate("mlops_2_2", m, {"device": "cpu"})}["llm_same_run_settings"] == "fail"


def test_model_saved_needs_a_path_and_a_checksum():
    assert single_gpu_metrics(run(1, 1, model={"path": "/s/m", "sha256": "ab"}))["model_saved"] is True
    assert single_gpu_metrics(run(1, 1, model=None))["model_saved"] is False


def test_missing_dataset_file_is_named_before_anything_starts(tmp_path):
    shutil.copy(DATASETS / "SHA256SUMS", tmp_path / "SHA256SUMS")
    (tmp_path / "sft" / "eval").mkdir(parents=True)
    for name in SFT_FILES[1:]:
        shutil.copy(DATASETS / "sft" / name, tmp_path / "sft" / name)
    with pytest.raises(FileNotFoundError, match=f"dataset file missing: {tmp_path}/sft/{SFT_FILES[0]}"):
        preflight(str(tmp_path), {"sft": SFT_FILES})


def test_llm_settings_come_from_the_profile_unless_set():
    smoke = parse({})
    assert smoke.llm_option("max_steps") == 4 and smoke.llm.trainer == "oumi"
    assert parse({"profile": "full"}).llm_option("max_steps") is None  # the workload's default
    assert parse({"llm": {"maxSteps": 7}}).llm_option("max_steps") == 7


@pytest.mark.parametrize("raw, named", [
    ({"llm": {"globalBatchSize": 5}}, "globalBatchSize must be even"),
    ({"llm": {"trainer": "deepspeed"}}, "mlops-validation:llm.trainer"),
    ({"hpc": {"gpusPerNode": 1}}, "hpc.gpusPerNode is 1, but task(s) mlops_2_1, mlops_2_2 need 2 GPUs"),
])
def test_bad_llm_settings_are_refused_with_the_key(raw, named):
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert named in str(err.value)
