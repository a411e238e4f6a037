import pytest

from validation import plots
from validation.plots import Plot
from validation.report import render
from validation.targets import task_result

NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}
H200 = {"gpu": "NVIDIA H200", "gpus_per_node": 2, "kubernetes": False}
ON_CPU = {"device": "cpu", "device_name": "AMD EPYC"}


def _task(name, title, *task_plots):
    return type(name, (), {"name": name, "title": title, "plots": tuple(task_plots)})


# A fake registry, as stacks.tasks.TASKS will be: report order, titles, plots.
REGISTRY = (
    _task("storage", "Shared storage (BeeGFS at a site)", Plot("storage_throughput.png", plots.storage_throughput())),
    _task("mlops_1_1", "MLOPS-1.1 Single-GPU MNIST training", Plot("mnist_loss.png", plots.loss("MNIST", "epoch"))),
    _task("mlops_2_2", "MLOPS-2.2 Multi-GPU SmolLM2 fine-tuning (1 vs 2 GPUs)",
          Plot("smollm_scaling.png", plots.scaling("SmolLM2 (Oumi)", "logged step"))),
    _task("mlops_3_2", "MLOPS-3.2 Oumi evaluation: base vs fine-tuned",
          Plot("oumi_evaluation.png", plots.evaluation())),
    _task("mlops_4_1", "MLOPS-4.1 CPU inference (MNIST, KServe)",
          Plot("cpu_serving_latency.png", plots.serving_latency())),
    _task("slurm", "SLURM scheduler and GRES", Plot("slurm_latency.png", plots.submit_latency())),
)
MNIST = {"test_accuracy": 0.991, "reevaluated_accuracy": 0.991, "reevaluation_delta": 0.0, "train_seconds": 80.0,
         "device": "cpu", "device_name": "AMD EPYC", "loss_curve": [0.3, 0.05]}


def test_report_shows_verdicts_reasons_platform_hardware_and_plots(tmp_path):
    outputs = {
        "validation": {"stack": "t", "tasks": ["mlops_1_1"], "profile": "smoke", "hpc_target": "x"},
        "mlops_1_1": task_result("mlops_1_1", MNIST, {**ON_CPU, "jobs": {"train": ON_CPU}}, NO_GPU,
                                 job={"job_id": "3", "node": "vm", "gres_env": {"CUDA_VISIBLE_DEVICES": "0"}}),
        "_run": {"exit_code": 0, "pulumi_seconds": 12.0},
    }
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "**Verdict: PASS**" in text and "Why it is FAIL" not in text
    assert "## MLOPS-1.1 Single-GPU MNIST training" in text
    assert "not applicable — GPU target; the config declares no real GPU (`hpc.gpu`: none)" in text
    assert "Declared hardware (config): no real GPU (`hpc.gpu`: none;" in text
    assert "Hardware seen: cpu (AMD EPYC); job `train` cpu (AMD EPYC)" in text
    assert "SLURM job 3 on `vm`" in text and "CUDA_VISIBLE_DEVICES=0" in text
    # tasks of the registry that this stack does not enable are listed, and are no failure
    assert "| Shared storage (BeeGFS at a site) (`storage`) | not enabled in this stack's config (`tasks`) |" in text
    assert "![mnist_loss.png](mnist_loss.png)" in text and (tmp_path / "mnist_loss.png").stat().st_size > 1000


def test_gpu_site_whose_jobs_ran_on_cpu_renders_fail_naming_the_job(tmp_path):
    outputs = {"validation": {"tasks": ["mlops_1_1"]}, "_run": {"exit_code": 0},
               "mlops_1_1": task_result("mlops_1_1", {**MNIST, "gpu_utilization_mean_percent": 80.0},
                                        {**ON_CPU, "jobs": {"train": ON_CPU}}, H200)}
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "**Verdict: FAIL**" in text
    assert "declared GPU NVIDIA H200 (`hpc.gpu`), but job train ran on cpu (AMD EPYC)" in text
    assert "Declared hardware (config): GPU NVIDIA H200 (`hpc.gpu`), 2 a node" in text


@pytest.mark.parametrize("outputs", [{}, {"_run": {"exit_code": 1, "pulumi_seconds": 3.0}}])
def test_an_empty_outputs_file_renders_fail(tmp_path, outputs):
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "**Verdict: FAIL** — 0 targets met" in text
    assert "- no target passed: nothing was measured" in text
    assert "PASS" not in text and "not enabled" not in text and "do not say which tasks" in text


def test_enabled_task_without_output_renders_fail_and_is_listed_with_why(tmp_path):
    outputs = {"validation": {"tasks": ["mlops_1_1", "storage"]}, "_run": {"exit_code": 0},
               "mlops_1_1": task_result("mlops_1_1", MNIST, ON_CPU, NO_GPU)}
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "**Verdict: FAIL**" in text
    assert ("| Shared storage (BeeGFS at a site) (`storage`) | enabled, produced no output: its resources failed "
            "— see the pulumi log |") in text


def test_report_fails_on_a_missing_metric(tmp_path):
    outputs = {"validation": {"tasks": ["storage"]}, "storage": task_result("storage", {}, {"device": "n/a"}, NO_GPU)}
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "**Verdict: FAIL**" in text and "❌ MISSING — metric 'cross_job_checksum_ok' was not produced" in text


def test_a_toy_task_added_through_the_registry_appears_with_its_title_and_plot(tmp_path):
    def bars(metrics, path):
        import matplotlib.pyplot as plt
        if "widgets" not in metrics:
            return False
        fig, ax = plt.subplots()
        ax.bar(["widgets"], [metrics["widgets"]])
        fig.savefig(path)
        plt.close(fig)
        return True

    toy = _task("toy_9_9", "TOY-9.9 Widgets counted", Plot("widgets.png", bars), Plot("never.png", bars))
    outputs = {"validation": {"tasks": ["toy_9_9", "storage"]}, "_run": {"exit_code": 0},
               "toy_9_9": task_result("toy_9_9", {"widgets": 3}, {"device": "n/a"}, NO_GPU),
               "storage": task_result("storage", {"cross_job_checksum_ok": True}, {"device": "n/a"}, NO_GPU)}
    text = render(outputs, tmp_path, tasks=REGISTRY + (toy,))
    assert "## TOY-9.9 Widgets counted" in text and "![widgets.png](widgets.png)" in text
    assert (tmp_path / "widgets.png").exists()
    assert "| widgets | 3 |" in text
    assert "**Verdict: PASS**" in text  # storage's target passed; the toy task has none
    assert text.index("## Shared storage") < text.index("## TOY-9.9")  # registry order
    # a plot whose data is absent is left out; one that raises is reported, not fatal
    outputs["toy_9_9"]["metrics"] = {}
    assert "never.png" not in render(outputs, tmp_path, tasks=REGISTRY + (toy,))
    broken = _task("toy_9_9", "TOY-9.9 Widgets counted", Plot("boom.png", lambda m, p: 1 / 0))
    text = render(outputs, tmp_path, tasks=(broken,))
    assert "(plot `boom.png` could not be drawn: ZeroDivisionError" in text


def test_report_plots_llm_scaling_serving_stages_evaluation_latency_and_storage(tmp_path):
    scaling = {"loss_curve_1gpu": [1.7, 1.4], "loss_curve_2gpu": [1.7, 1.3], "world_size": 2, "speedup": 1.7,
               "train_seconds_1gpu": 78.0, "train_seconds_2gpu": 46.0, "device": "cuda"}
    serving = {"stages": [{"stage": "users=1", "p50_ms": 5, "p95_ms": 9, "p99_ms": 12, "throughput_rps": 300},
                          {"stage": "users=4", "p50_ms": 8, "p95_ms": 15, "p99_ms": 20, "throughput_rps": 400}],
               "p95_ms": 15, "device": "cpu"}
    evaluation = {"models": {"base": {"gsm8k_loss": 1.48, "self_instruct_rouge_l_f1": 0.2, "gsm8k_samples": 8},
                             "finetuned": {"gsm8k_loss": 1.17, "self_instruct_rouge_l_f1": 0.32}}}
    outputs = {"validation": {"tasks": ["mlops_2_2", "mlops_4_1", "mlops_3_2", "slurm", "storage"]},
               "mlops_2_2": task_result("mlops_2_2", scaling, {"device": "cuda"}, H200),
               "mlops_4_1": task_result("mlops_4_1", serving, ON_CPU, NO_GPU),
               "mlops_3_2": task_result("mlops_3_2", evaluation, {"device": "n/a"}, NO_GPU),
               "slurm": task_result("slurm", {"submit_to_start_seconds": [0.5, 1.2]}, {"device": "n/a"}, NO_GPU),
               "storage": task_result("storage", {"write_mb_per_s": 900.0, "read_mb_per_s": 1200.0, "bytes": 1 << 24,
                                                  "fs_type": "beegfs"}, {"device": "n/a"}, NO_GPU)}
    text = render(outputs, tmp_path, tasks=REGISTRY)
    assert "MLOPS-2.2 Multi-GPU SmolLM2" in text and "MLOPS-3.2 Oumi evaluation" in text
    for name in ("smollm_scaling.png", "cpu_serving_latency.png", "oumi_evaluation.png", "slurm_latency.png",
                 "storage_throughput.png"):
        assert f"![{name}]({name})" in text and (tmp_path / name).stat().st_size > 1000


def test_plot_factories_draw_nothing_without_their_data(tmp_path):
    for draw in (plots.loss("x", "step"), plots.scaling("x", "step"), plots.submit_latency(),
                 plots.storage_throughput(), plots.serving_latency(), plots.evaluation()):
        assert draw({}, tmp_path / "p.png") is False
    assert not (tmp_path / "p.png").exists()
