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


def test_report_plots_llm_scaling_serving_stages_and_evaluation(tmp_path):
    scaling = {"loss_curve_1gpu": [1.7, 1.4], "loss_curve_2gpu": [1.7, 1.3], "world_size": 2, "speedup": 1.7,
               "train_seconds_1gpu": 78.0, "train_seconds_2gpu": 46.0, "device": "cuda"}
    serving = {"stages": [{"stage": "users=1", "p50_ms": 5, "p95_ms": 9, "p99_ms": 12, "throughput_rps": 300},
                          {"stage": "users=4", "p50_ms": 8, "p95_ms": 15, "p99_ms": 20, "throughput_rps": 400}],
               "p95_ms": 15, "device": "cpu"}
    evaluation = {"models": {"base": {"gsm8k_loss": 1.48, "self_instruct_rouge_l_f1": 0.2},
                             "finetuned": {"gsm8k_loss": 1.17, "self_instruct_rouge_l_f1": 0.32}}}
    outputs = {"validation": {"tasks": ["mlops_2_2", "mlops_4_1", "mlops_3_2"]},
               "mlops_2_2": task_result("mlops_2_2", scaling, {"device": "cuda"}),
               "mlops_4_1": task_result("mlops_4_1", serving, {"device": "cpu"}),
               "mlops_3_2": task_result("mlops_3_2", evaluation, {"device": "n/a"})}
    text = render(outputs, tmp_path)
    assert "MLOPS-2.2 Multi-GPU SmolLM2" in text and "MLOPS-3.2 Oumi evaluation" in text
    for name in ("smollm_scaling.png", "cpu_serving_latency.png", "oumi_evaluation.png"):
        assert f"![{name}]({name})" in text and (tmp_path / name).stat().st_size > 1000
