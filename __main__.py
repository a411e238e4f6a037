"""mlops-validation: wires the stack's config to the validation components and exports what they measured.

Each task's output holds its metrics, where it ran and the verdict on each of the spec's targets
(validation/targets.yaml). `make up` turns the outputs into reports/<stack>/report.md.
"""
from pathlib import Path

import pulumi

from stacks import config
from stacks.tasks.mlops_2_1 import CIFAR_FILES, CifarDataParallel, CifarDataParallelArgs
from stacks.slurm.target import HpcTarget, HpcTargetArgs
from stacks.tasks.llm import SFT_FILES, LlmAssets, LlmFineTuning, LlmFineTuningArgs
from stacks.tasks.mlops_1_1 import MNIST_FILES, MnistTraining, MnistTrainingArgs
from stacks.slurm.job import WorkloadContext
from stacks.slurm.probe import SlurmProbe, SlurmProbeArgs
from stacks.slurm.staging import StagedDirectory, StagedDirectoryArgs, manifest, manifest_digest, preflight
from stacks.tasks.storage import StorageCheck
from validation.targets import task_result

WORKLOADS = Path(__file__).resolve().parent / "workloads"

cfg = config.load()
s = cfg.settings
# The data each enabled task stages, checked against SHA256SUMS before any daemon or job starts.
DATA_NEEDS = {"mlops_1_1": ("mnist", MNIST_FILES), "mlops_2_1": ("cifar10", CIFAR_FILES),
              **dict.fromkeys(("mlops_1_2", "mlops_2_2", "mlops_3_1", "mlops_3_2"), ("sft", SFT_FILES))}
try:
    preflight(s.datasets_dir, dict(DATA_NEEDS[t] for t in s.tasks if t in DATA_NEEDS))
except (OSError, ValueError) as exc:
    raise pulumi.RunError(f"dataset check failed: {exc}") from None
hpc = HpcTarget("hpc", HpcTargetArgs(settings=s, stack=cfg.stack, ssh_private_key=cfg.ssh_private_key))
code_files = manifest(WORKLOADS)
code = StagedDirectory("workloads-code", StagedDirectoryArgs(
    connection=hpc.connection, cluster_id=hpc.cluster_id, source=str(WORKLOADS),
    destination=hpc.root.apply(lambda r: f"{r}/code/workloads"), files=code_files))
ctx = WorkloadContext(
    connection=hpc.connection, cluster_id=hpc.cluster_id, root=hpc.root,
    code_dir=code.path.apply(lambda p: p.rsplit("/", 1)[0]), python=s.cluster_python(),
    partition=s.hpc.partition, gpus_per_node=s.hpc.gpus_per_node, cpus_per_task=s.hpc.cpus_per_task,
    container_image=s.hpc.container.image, code_version=manifest_digest(code_files))
no_gpu = {"device": "n/a"}  # platform checks: their targets hold on any hardware

if "slurm" in s.tasks:
    probe = SlurmProbe("slurm", SlurmProbeArgs(
        connection=hpc.connection, cluster_id=hpc.cluster_id, root=hpc.root, partition=s.hpc.partition,
        gpus_per_node=s.hpc.gpus_per_node, jobs=s.probe_jobs))
    pulumi.export("slurm", probe.metrics.apply(lambda m: task_result("slurm", m, no_gpu)))

if "storage" in s.tasks:
    storage = StorageCheck("storage", ctx, size_mb=s.storage_mb)
    pulumi.export("storage", pulumi.Output.all(storage.metrics, storage.writer.summary(), storage.reader.summary())
                  .apply(lambda v: task_result("storage", v[0], no_gpu, jobs={"write": v[1], "verify": v[2]})))

if "mlops_1_1" in s.tasks:
    mnist = MnistTraining("mlops-1-1", ctx, MnistTrainingArgs(
        datasets_dir=s.datasets_dir, epochs=s.mnist.epochs, batch_size=s.mnist.batch_size,
        time_limit_minutes=s.hpc.job_timeout_minutes))
    pulumi.export("mlops_1_1", pulumi.Output.all(mnist.metrics, mnist.job.summary(), mnist.staging).apply(
        lambda v: task_result("mlops_1_1", v[0], {"device": v[0].get("device"), "device_name": v[0].get("device_name")},
                              job=v[1], staging=v[2])))

if "mlops_2_1" in s.tasks:
    cifar = CifarDataParallel("mlops-2-1", ctx, CifarDataParallelArgs(
        datasets_dir=s.datasets_dir, epochs=s.cifar_epochs, global_batch_size=s.cifar.global_batch_size,
        max_train_samples=s.cifar.max_train_samples, time_limit_minutes=s.hpc.job_timeout_minutes))
    pulumi.export("mlops_2_1", pulumi.Output.all(cifar.metrics, cifar.single.summary(), cifar.double.summary()).apply(
        lambda v: task_result("mlops_2_1", v[0], {"device": v[0].get("device"), "device_name": v[0].get("device_name")},
                              jobs={"1gpu": v[1], "2gpu": v[2]})))

# The LLM tasks' inputs (SFT data, base SmolLM2) and the fine-tuned model, for the tasks that use them.
llm_assets = llm_tuning = None
if {"mlops_1_2", "mlops_2_2"} & set(s.tasks):
    llm_assets = LlmAssets("smollm2", ctx, s.datasets_dir)
    llm_tuning = LlmFineTuning("mlops-1-2", ctx, llm_assets, LlmFineTuningArgs(
        trainer=s.llm.trainer, oumi_python=s.cluster_oumi_python(), two_gpus="mlops_2_2" in s.tasks,
        **{k: s.llm_option(k) for k in ("max_steps", "global_batch_size", "seq_len", "eval_samples", "lr")},
        time_limit_minutes=s.hpc.job_timeout_minutes))
    hardware = lambda m: {"device": m.get("device"), "device_name": m.get("device_name")}  # noqa: E731
    if "mlops_1_2" in s.tasks:
        pulumi.export("mlops_1_2", pulumi.Output.all(llm_tuning.single_gpu, llm_tuning.single.summary(),
                                                     llm_assets.base_model).apply(
            lambda v: task_result("mlops_1_2", v[0], hardware(v[0]), job=v[1], base_model=v[2])))
    if "mlops_2_2" in s.tasks:
        pulumi.export("mlops_2_2", pulumi.Output.all(llm_tuning.two_gpus, llm_tuning.single.summary(),
                                                     llm_tuning.double.summary()).apply(
            lambda v: task_result("mlops_2_2", v[0], hardware(v[0]), jobs={"1gpu": v[1], "2gpu": v[2]})))

if {"mlops_3_1", "mlops_3_2"} & set(s.tasks):
    # Oumi's CLI on this machine reaches the cluster over ssh as a laptop would (stacks/oumi_launch.py).
    from stacks.oumi.evaluation import OumiEvaluation, OumiEvaluationArgs
    from stacks.oumi.launch import OumiLaunch, OumiLaunchArgs, OumiSiteArgs
    if llm_assets is None and not s.oumi.base_model_dir:
        llm_assets = LlmAssets("smollm2", ctx, s.datasets_dir)
    base_model_dir = s.oumi.base_model_dir or llm_assets.base_model_dir
    oumi_site = OumiSiteArgs(
        connection=hpc.connection, cluster_id=hpc.cluster_id, root=hpc.root, stack=cfg.stack,
        state_dir=s.state_dir(cfg.stack), datasets_dir=s.datasets_dir, launcher_python=s.oumi_launcher_python(),
        cluster_python=s.cluster_oumi_python(), partition=s.hpc.partition,
        gres="gpu:1" if s.hpc.gpus_per_node else None, cpus=s.hpc.cpus_per_task,
        container_image=s.hpc.container.image, time_limit_minutes=s.hpc.job_timeout_minutes,
        # smoke on shared CPU cores: one intra-op thread is several times faster than two (docs/benchmarks.md)
        env={"OMP_NUM_THREADS": "1"} if s.profile == "smoke" else {})
    after_llm = pulumi.ResourceOptions(depends_on=[llm_tuning] if llm_tuning is not None else [])  # one LLM job at a time
    oumi_launch = None
    if "mlops_3_1" in s.tasks:
        oumi_launch = OumiLaunch("mlops-3-1", oumi_site, OumiLaunchArgs(
            base_model_dir=base_model_dir, steps=s.oumi_option("train_steps"),
            max_length=s.oumi_option("max_length")), after_llm)
        pulumi.export("mlops_3_1", oumi_launch.metrics.apply(lambda m: task_result("mlops_3_1", m, no_gpu)))
    if "mlops_3_2" in s.tasks:
        # The fine-tuned model: MLOPS-1.2's when it runs, else MLOPS-3.1's short Oumi fine-tune.
        finetuned = llm_tuning.model_dir if llm_tuning is not None and "mlops_1_2" in s.tasks else \
            oumi_launch.model_dir if oumi_launch is not None else None
        oumi_eval = OumiEvaluation("mlops-3-2", oumi_site, OumiEvaluationArgs(
            base_model_dir=base_model_dir, finetuned_model_dir=finetuned,
            samples=s.oumi_option("eval_samples"), max_new_tokens=s.oumi_option("max_new_tokens")),
            pulumi.ResourceOptions(depends_on=[r for r in (llm_tuning, oumi_launch) if r is not None]))
        pulumi.export("mlops_3_2", oumi_eval.metrics.apply(lambda m: task_result("mlops_3_2", m, no_gpu)))

if {"mlops_4_1", "mlops_4_2", "mlops_5_1"} & set(s.tasks):
    # The embedded serving stack on 127.0.0.1 (stacks/serving.py): MinIO, MLflow, KServe predictors, locust.
    from stacks.local.serving import EmbeddedServing, EmbeddedServingArgs
    trained = "mlops_1_1" in s.tasks
    serving = EmbeddedServing("serving", EmbeddedServingArgs(
        settings=s, stack=cfg.stack, minio_access_key=cfg.serving_minio_access_key,
        minio_secret_key=cfg.serving_minio_secret_key,
        mnist_model=mnist.metrics.apply(lambda m: m["model"]) if trained else None,
        mnist_job_dir=mnist.job.job_dir if trained else None,
        mnist_job_seconds=mnist.job.elapsed_seconds if trained else None,
        # MLOPS-4.2 serves MLOPS-1.2's fine-tuned model when that task runs, else the base SmolLM2.
        llm_model_dir=llm_tuning.model_dir if llm_tuning is not None and "mlops_1_2" in s.tasks else None))
    served_on = lambda m: {"device": m.get("device"), "device_name": m.get("device_name"), "kubernetes": False}  # noqa: E731
    for task, result in (("mlops_4_1", serving.cpu), ("mlops_4_2", serving.llm), ("mlops_5_1", serving.pipeline)):
        if task in s.tasks:
            pulumi.export(task, result.apply(
                lambda m, t=task: task_result(t, m, no_gpu if t == "mlops_5_1" else served_on(m))))
    pulumi.export("serving", serving.summary)

if s.kubernetes is not None:
    # A real cluster's serving stack (stacks/k8s/): MinIO, MLflow, KServe InferenceServices and their readiness,
    # cold-start and autoscaling figures; imported here so that stacks without a cluster never load it.
    from stacks.k8s import KubernetesServing, KubernetesServingArgs
    k8s_serving = KubernetesServing("k8s-serving", KubernetesServingArgs(
        settings=s.kubernetes, minio_root_password=cfg.k8s_minio_root_password))
    pulumi.export("kubernetes_serving", k8s_serving.summary)

if hpc.login is not None:
    pulumi.export("embedded_login", pulumi.Output.all(hpc.login, hpc.login_known_hosts).apply(
        lambda v: {**v[0], "known_hosts_file": v[1]}))
    pulumi.export("embedded_ssh_private_key", pulumi.Output.secret(hpc.login_private_key))

pulumi.export("validation", {
    "stack": cfg.stack, "profile": s.profile, "tasks": list(s.tasks), "hpc_target": hpc.where,
    "cluster_id": hpc.cluster_id, "shared_storage": hpc.root,
    "note": ("embedded default: single-node SLURM on this machine; jobs see fake GPU device nodes through GRES "
             "and train on CPU (gloo, not NCCL); GPU targets are reported not applicable and measured on H200s "
             "in docs/benchmarks.md") if s.hpc.target == "embedded" else "site cluster"})
