"""mlops-validation: walks the enabled validation tasks (stacks/tasks/, one module a task) in dependency order and
exports what each measured, judged against the spec's targets (validation/targets.yaml). `make up` turns the
outputs into reports/<stack>/report.md."""
import pulumi

from stacks import config, tasks
from stacks.site import Run

run = Run.start(config.load())
s = run.settings
for task in tasks.build_order(s.tasks):
    pulumi.export(task.name, tasks.result(task, run.build(task), task.platform(s)))

if run.hpc.login is not None:  # the embedded login node, as a site stack would name it (the integration tests do)
    pulumi.export("embedded_login", pulumi.Output.all(run.hpc.login, run.hpc.login_known_hosts).apply(
        lambda v: {**v[0], "known_hosts_file": v[1]}))
    pulumi.export("embedded_ssh_private_key", pulumi.Output.secret(run.hpc.login_private_key))
if run.image is not None:  # hpc.container on the embedded cluster: the image the stack built, and how long it took
    pulumi.export("container_image", run.image.facts)
pulumi.export("validation", {
    "stack": run.stack, "profile": s.profile, "tasks": list(s.tasks), "platform": s.platform,
    "hpc_target": run.hpc.where, "cluster_id": run.hpc.cluster_id, "shared_storage": run.hpc.root,
    "note": ("embedded default: single-node SLURM on this machine; jobs see device nodes through GRES that are no "
             "GPUs (hpc.gpu: none), and train on CPU (gloo, not NCCL): GPU targets are not applicable here and "
             "are measured on H200s (docs/benchmarks.md)") if s.platform["gpu"] is None else "declared GPUs: "
            f"{s.hpc.gpus_per_node} x {s.platform['gpu']} a node; every GPU target is judged"})
