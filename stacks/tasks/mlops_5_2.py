"""MLOPS-5.2: pipeline automation with no person in the loop. A controller process (workloads/serving/pipeline.py:
a router in front of the predictors and a watcher of MLflow's registry) serves MLOPS-5.1's champion; two SLURM jobs
train candidates, a good one (the same recipe, another seed) and a deliberately bad one (shuffled labels); the
scenario registers them under a running load test through the router, and the controller alone gates, promotes,
rolls out and rolls back. Measured: trigger-to-serving, failed requests during the rollout, the rejection, and the
rollback time after a fault injected into a rolled-out predictor."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.local.process import WORKLOADS_PYTHON, LocalDaemon, LocalRun
from stacks.tasks import Measured, Task, cli_flags
from stacks.tasks.fixtures import mlflow_server, serving_base
from stacks.tasks.mlops_1_1 import MNIST_FILES
from stacks.tasks.mlops_5_1 import ALIAS, REGISTERED_MODEL
from validation.plots import Plot, rollout

LOAD = "users=2,rate=20"  # the smoke profile's SLA stage of MLOPS-4.1, through the router


class PipelineAutomation(Task):
    name = "mlops_5_2"
    spec = "MLOPS-5.2"
    title = "MLOPS-5.2 Pipeline automation (gate, promotion, rollout, rollback)"
    data = {"mnist": MNIST_FILES}
    uses = ("mlops_5_1",)  # the champion it starts from
    plots = (Plot("pipeline_rollout.png", rollout()),)

    @classmethod
    def check(cls, settings) -> Optional[str]:
        if "mlops_5_1" not in settings.tasks:
            return "automates the pipeline MLOPS-5.1 sets up: add mlops_1_1 and mlops_5_1 to tasks"
        return None

    def build(self, run) -> Measured:
        s, base, mlflow, data = run.settings, serving_base(run), mlflow_server(run), run.dataset("mnist")
        after = pulumi.ResourceOptions(depends_on=run.after(*self.uses))  # not beside 5.1's or 4.1's measurements
        recipe = cli_flags(s, {"epochs": "mnist.epochs", "batch-size": "mnist.batch_size"})
        candidates = {
            "good": run.jobs.job("mlops-5-2-candidate", "workloads.mnist", data.path.apply(
                lambda d: f"--data-dir {d} --out-dir $JOB_DIR --seed 1{recipe}"), gpus=1, cpus=s.hpc.cpus_per_task,
                time_limit_minutes=s.hpc.job_timeout_minutes, data=[data.digest], opts=after),
            "bad": run.jobs.job("mlops-5-2-shuffled", "workloads.mnist", data.path.apply(
                lambda d: f"--data-dir {d} --out-dir $JOB_DIR --shuffle-labels --epochs 1 --max-train-samples 6000"),
                gpus=1, cpus=s.hpc.cpus_per_task, time_limit_minutes=s.hpc.job_timeout_minutes, data=[data.digest],
                opts=after)}
        ports = [base.base_port + 6, base.base_port + 7, base.base_port + 8]  # router, two predictors
        router = f"http://127.0.0.1:{ports[0]}"
        state = f"{base.state_dir}/pipeline"
        controller = LocalDaemon("pipeline-controller", {
            "name": "MLOPS-5.2 pipeline controller",
            "argv": pulumi.Output.all(mlflow.tracking_uri, data.path).apply(lambda v: [
                WORKLOADS_PYTHON, "-m", "workloads.serving.pipeline", "controller", "--tracking-uri", v[0],
                "--name", REGISTERED_MODEL, "--alias", ALIAS, "--artifacts-destination", mlflow.artifacts_destination,
                "--data-dir", v[1], "--router-port", str(ports[0]), "--backend-ports", f"{ports[1]},{ports[2]}",
                "--state-dir", state]),
            "secret_env": mlflow.client_env_with(base.minio.env), "ready_url": f"{router}/router/healthz",
            "ready_timeout_s": 300,
            "log_file": f"{base.state_dir}/logs/pipeline-controller.log",
            "ports": {str(p): "mlops-validation:serving.basePort" for p in ports},
            "make_dirs": [state], "remove_on_delete": [state],
        }, pulumi.ResourceOptions.merge(base.options(), after))
        scenario = LocalRun("pipeline-scenario", {
            "name": "MLOPS-5.2 scenario", "module": "workloads.serving.pipeline",
            "args": pulumi.Output.all(mlflow.tracking_uri, candidates["good"].metrics, candidates["bad"].metrics).apply(
                lambda v: ["scenario", "--router", router, "--tracking-uri", v[0], "--name", REGISTERED_MODEL,
                           "--good", v[1]["model"]["path"], "--bad", v[2]["model"]["path"], "--stage", LOAD]),
            "controller": controller.id, "timeout_s": 900, "secret_env": mlflow.client_env,
        }, pulumi.ResourceOptions(depends_on=[controller, *candidates.values()]))
        metrics = pulumi.Output.all(scenario.result, candidates["good"].metrics, candidates["bad"].metrics).apply(
            lambda v: automation_metrics(*v))
        return Measured(metrics=metrics, records={name: job.summary() for name, job in candidates.items()},
                        done=[scenario])


def automation_metrics(scenario: dict, good: dict, bad: dict) -> dict:
    """The scenario's figures, with what the candidates' own training jobs measured."""
    return {**scenario, "good_candidate_test_accuracy": good.get("test_accuracy"),
            "bad_candidate_test_accuracy": bad.get("test_accuracy"), "bad_candidate_shuffled": bad.get("shuffled_labels")}
