"""MLOPS-1.2 / 2.2 on the stack: how the two runs are compared, and the checks made before anything starts."""
import shutil

import pytest

from stacks.slurm.staging import preflight
from stacks.tasks.fixtures import SFT_FILES
from stacks.tasks.mlops_1_2 import single_gpu_metrics
from stacks.tasks.mlops_2_2 import compare
from validation.config import REPO_ROOT, ConfigError, parse
from validation.targets import evaluate

H200 = {"gpu": "NVIDIA H200", "gpus_per_node": 2, "kubernetes": False}
NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}

DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def run(seconds, world, **extra):
    return {"train_seconds": seconds, "world_size": world, "global_batch_size": 32, "steps": 200, "seq_len": 512,
            "seed": 0, "heldout_loss_before": 1.38, "heldout_loss_after": 0.66, "heldout_loss_dropped": True,
            "device": "cuda", "device_name": "NVIDIA H200", "optimizer_steps": 200, "samples_trained": 6400,
            "tokens_trained": 1_500_000, **extra}


def test_speedup_and_efficiency_come_from_the_train_times():
    m = compare(run(90.0, 1), run(50.0, 2, gpu_utilization={"mean_percent": 75.0}))
    assert m["speedup"] == pytest.approx(1.8) and m["scaling_efficiency"] == pytest.approx(0.9)
    assert m["same_work"] is True and m["gpu_utilization_mean_percent"] == 75.0
    verdicts = {r["id"]: r["status"] for r in evaluate("mlops_2_2", m, {"device": "cuda"}, H200)}
    assert verdicts["llm_speedup"] == "pass" and verdicts["llm_speedup_goal"] == "fail"


def test_same_work_is_what_the_trainers_counted_not_their_arguments():
    # 2026-12-01: the same arguments, but the 2-rank run counted half the tokens (rank 0's only): not comparable
    m = compare(run(90.0, 1, tokens_trained=1973), run(12.3, 2, tokens_trained=949))
    assert m["same_work"] is False
    verdicts = {r["id"]: r["status"] for r in evaluate("mlops_2_2", m, {"device": "cpu"}, NO_GPU)}
    assert verdicts["llm_same_work"] == "fail" and verdicts["llm_scaling_efficiency_sane"] == "fail"
    assert compare(run(90.0, 1), run(50.0, 2, tokens_trained=1_510_000))["same_work"] is True  # within 2 %
    assert compare(run(90.0, 1), run(50.0, 2, optimizer_steps=100))["same_work"] is False
    assert compare(run(90.0, 1), run(50.0, 2, samples_trained=None))["same_work"] is None


def test_a_gpu_stack_whose_two_gpu_run_fell_back_to_cpu_fails():
    m = compare(run(90.0, 1), run(50.0, 2, device="cpu", device_name="Intel Xeon"))
    verdicts = {r["id"]: r for r in evaluate("mlops_2_2", m, {"device": "cpu", "jobs": {
        "1gpu": {"device": "cuda"}, "2gpu": {"device": "cpu", "device_name": "Intel Xeon"}}}, H200)}
    assert verdicts["llm_speedup"]["status"] == "fail" and "2gpu" in verdicts["llm_speedup"]["reason"]


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
    assert smoke.option("llm.max_steps") == 4 and smoke.llm.trainer == "oumi"
    assert parse({"profile": "full"}).option("llm.seq_len") is None  # the workload's default
    assert parse({"llm": {"maxSteps": 7}}).option("llm.max_steps") == 7


@pytest.mark.parametrize("raw, named", [
    ({"llm": {"globalBatchSize": 5}}, "globalBatchSize must be even"),
    ({"llm": {"trainer": "deepspeed"}}, "mlops-validation:llm.trainer"),
    ({"hpc": {"gpusPerNode": 1}}, "tasks: mlops_2_1 needs 2 GPUs on one node, but hpc.gpusPerNode is 1"),
    ({"hpc": {"gpusPerNode": 1}, "tasks": ["mlops_2_2"]}, "tasks: mlops_2_2 needs 2 GPUs on one node"),
])
def test_bad_llm_settings_are_refused_with_the_key(raw, named):
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert named in str(err.value)
