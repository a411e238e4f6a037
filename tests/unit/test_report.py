from validation.report import render
from validation.targets import task_result


def test_report_shows_verdicts_reasons_and_plots(tmp_path):
    mnist = {"test_accuracy": 0.991, "reevaluated_accuracy": 0.991, "reevaluation_delta": 0.0, "train_seconds": 80.0,
             "device": "cpu", "device_name": "AMD EPYC", "loss_curve": [0.3, 0.05]}
    outputs = {
        "validation": {"stack": "t", "tasks": ["mlops_1_1", "storage"], "profile": "smoke", "hpc_target": "x"},
        "mlops_1_1": task_result("mlops_1_1", mnist, {"device": "cpu", "device_name": "AMD EPYC"},
                                 job={"job_id": "3", "node": "vm", "gres_env": {"CUDA_VISIBLE_DEVICES": "0"}}),
    }
    text = render(outputs, tmp_path)
    assert "**Verdict: PASS**" in text
    assert "not applicable — GPU target" in text and "AMD EPYC" in text
    assert "SLURM job 3 on `vm`" in text and "CUDA_VISIBLE_DEVICES=0" in text
    assert "Tasks with no output (their resources failed):** storage" in text
    assert (tmp_path / "mnist_loss.png").stat().st_size > 1000


def test_report_fails_on_a_missing_metric(tmp_path):
    outputs = {"validation": {"tasks": ["storage"]},
               "storage": task_result("storage", {}, {"device": "n/a"})}
    assert "**Verdict: FAIL**" in render(outputs, tmp_path)
