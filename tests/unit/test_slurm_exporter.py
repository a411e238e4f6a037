"""The SLURM exporter's reading of squeue / scontrol output and what it exports (workloads/slurm_exporter.py)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workloads.slurm_exporter import SlurmCollector, parse_jobs, parse_nodes

SQUEUE = """12|COMPLETED|2026-12-02T05:00:00|2026-12-02T05:00:02
13|FAILED|2026-12-02T05:00:00|2026-12-02T05:00:05
14|PENDING|2026-12-02T05:00:10|N/A
15|RUNNING|2026-12-02T05:00:10|2026-12-02T05:00:11
"""
# `scontrol show node --oneliner --details` of SLURM 22.05 (the embedded node's line, shortened)
SCONTROL = ("NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=2 CPUTot=4 CPULoad=0.5 Gres=gpu:2 GresDrain=N/A "
            "GresUsed=gpu:1(IDX:0) State=MIXED ThreadsPerCore=1 CfgTRES=cpu=4,mem=7000M,billing=4 AllocTRES=cpu=2\n"
            "NodeName=n2 CPUAlloc=0 CPUTot=4 Gres=gpu:h200:2(S:0-1) GresUsed=gpu:h200:0(IDX:N/A) State=IDLE+DRAIN "
            "CfgTRES=cpu=4 AllocTRES= Reason=maintenance window [root@2026-12-02]\n")


class Fake(SlurmCollector):
    def __init__(self, jobs: str, nodes: str = SCONTROL):
        super().__init__(clock=lambda: parse_jobs(SQUEUE)[2]["submit"] + 30)
        self.text = jobs, nodes

    def read(self):
        return parse_jobs(self.text[0]), parse_nodes(self.text[1])


def samples(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_jobs_by_state_failures_and_waits():
    collector = Fake(SQUEUE)
    got = samples(collector)
    assert got[("slurm_up", ())] == 1
    assert got[("slurm_jobs", (("state", "FAILED"),))] == 1
    assert got[("slurm_jobs", (("state", "TIMEOUT"),))] == 0  # every state exported
    assert got[("slurm_job_failures_total", ())] == 1
    assert got[("slurm_pending_wait_seconds_max", ())] == 30
    assert got[("slurm_job_queue_wait_seconds_count", ())] == 3  # the started ones
    assert got[("slurm_job_queue_wait_seconds_sum", ())] == 2 + 5 + 1
    assert got[("slurm_job_queue_wait_seconds_bucket", (("le", "2.0"),))] == 2
    # the same failed job seen again is not counted twice; a new one is
    collector.text = (SQUEUE + "16|TIMEOUT|2026-12-02T05:01:00|2026-12-02T05:01:00\n", SCONTROL)
    assert samples(collector)[("slurm_job_failures_total", ())] == 2


def test_nodes_gres_and_state():
    got = samples(Fake(SQUEUE))
    assert got[("slurm_node_up", (("node", "n1"), ("state", "mixed")))] == 1
    assert got[("slurm_node_up", (("node", "n2"), ("state", "idle+drain")))] == 0
    assert got[("slurm_gres_configured", (("gres", "gpu"), ("node", "n1")))] == 2
    assert got[("slurm_gres_allocated", (("gres", "gpu"), ("node", "n1")))] == 1
    assert got[("slurm_gres_allocated", (("gres", "gpu"), ("node", "n2")))] == 0
    assert got[("slurm_gres_configured", (("gres", "gpu"), ("node", "n2")))] == 2
    assert got[("slurm_node_cpus", (("kind", "allocated"), ("node", "n1")))] == 2


def test_a_scheduler_that_does_not_answer_is_slurm_up_0():
    class Down(SlurmCollector):
        def read(self):
            raise RuntimeError("squeue: error: Unable to contact slurm controller")

    got = samples(Down())
    assert got == {("slurm_up", ()): 0}
