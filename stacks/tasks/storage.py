"""Shared storage (BeeGFS at a site), checked by two jobs: one writes a file and reads it back, the next
finds it from its own allocation and verifies the checksum."""
from __future__ import annotations

from typing import Optional

import pulumi

from stacks.slurm.job import WorkloadContext
from stacks.tasks import Measured, Task
from validation.plots import Plot, storage_throughput


class SharedStorage(Task):
    name = "storage"
    title = "Shared storage (BeeGFS at a site)"
    plots = (Plot("storage_throughput.png", storage_throughput()),)

    def build(self, run) -> Measured:
        check = StorageCheck("storage", run.jobs, size_mb=run.settings.option("storage.size_mb"))
        return Measured(metrics=check.metrics, records={"jobs": pulumi.Output.all(
            write=check.writer.summary(), verify=check.reader.summary())}, done=[check])


class StorageCheck(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: WorkloadContext, size_mb: int, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:StorageCheck", name, None, opts)
        folder = ctx.root.apply(lambda r: f"{r}/storage-check")
        child = pulumi.ResourceOptions(parent=self)
        self.writer = ctx.job(f"{name}-write", "workloads.storage_check",
                              folder.apply(lambda d: f"write --dir {d} --size-mb {size_mb} --out-dir $JOB_DIR"),
                              opts=child)
        self.reader = ctx.job(f"{name}-verify", "workloads.storage_check",
                              folder.apply(lambda d: f"verify --dir {d} --out-dir $JOB_DIR"),
                              opts=pulumi.ResourceOptions(parent=self, depends_on=[self.writer]))
        self.metrics: pulumi.Output[dict] = pulumi.Output.all(
            self.writer.metrics, self.reader.metrics, self.writer.node, self.reader.node).apply(
            lambda v: _combine(*v))
        self.register_outputs({"metrics": self.metrics})


def _combine(written: dict, verified: dict, writer_node: str, reader_node: str) -> dict:
    return {
        "fs_type": written.get("fs_type"), "mount_point": written.get("mount_point"),
        "file": written.get("path"), "bytes": written.get("bytes"),
        "write_mb_per_s": written.get("write_mb_per_s"), "read_mb_per_s": written.get("read_mb_per_s"),
        "cross_job_read_mb_per_s": verified.get("read_mb_per_s"),
        "writer_node": writer_node, "reader_node": reader_node, "same_node": writer_node == reader_node,
        "cross_job_checksum_ok": int(bool(written.get("checksum_ok")) and bool(verified.get("checksum_ok"))
                                     and written.get("sha256") == verified.get("sha256")),
    }
