"""mlops-validation: wires the stack's config to the validation components and exports what they measured.

Each task's output holds its metrics, where it ran and the verdict on each of the spec's targets
(validation/targets.yaml). `make up` turns the outputs into reports/<stack>/report.md.
"""
from pathlib import Path

import pulumi

from stacks import config
from stacks.cifar import CifarDataParallel, CifarDataParallelArgs
from stacks.hpc import HpcTarget, HpcTargetArgs
from stacks.mnist import MnistTraining, MnistTrainingArgs
from stacks.sbatch_job import WorkloadContext
from stacks.slurm_probe import SlurmProbe, SlurmProbeArgs
from stacks.staging import StagedDirectory, StagedDirectoryArgs, manifest, manifest_digest
from stacks.storage_check import StorageCheck
from validation.targets import task_result

WORKLOADS = Path(__file__).resolve().parent / "workloads"

cfg = config.load()
s = cfg.settings
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
