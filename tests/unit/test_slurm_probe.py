"""stacks/slurm/probe.py on canned SLURM answers: distinct devices among concurrent jobs, the visible device count,
and an over-request refused for the reason of GPUs (not any failure)."""
import re
import subprocess

import pytest

from stacks.slurm import probe as p

OLD_METRICS = {"slurm_version", "partition", "partition_state", "partition_nodes", "partition_gres",
               "connect_seconds", "jobs_submitted", "jobs_accepted", "jobs_completed", "submission_success_rate",
               "submit_to_start_median_seconds", "submit_to_start_p95_seconds", "submit_to_start_max_seconds",
               "submit_to_start_seconds", "gres_requested", "gres_env_fraction", "gres_devices_seen",
               "gres_overcommit_refused", "gres_overcommit_message"}
NEW_METRICS = {"gres_distinct_fraction", "gres_count_matches_fraction", "gres_overlaps", "gres_concurrent_pairs",
               "gres_max_concurrent", "gres_shared_pairs", "gres_jobs", "gres_wave_jobs", "gres_wave_completed",
               "gres_wave_hold_seconds", "gres_overcommit_reason"}


def job(start, end, cvd="0", job_gpus=None, host="vm"):
    return {"start": start, "end": end, "host": host, "cuda_visible_devices": cvd,
            "slurm_job_gpus": cvd if job_gpus is None else job_gpus, "gpus_on_node": str(len(cvd.split(",")))}


def test_probe_output_parsing():
    text = "started_at=100.25 host=vm cvd=1 job_gpus=1 gpus=1\nended_at=102.5\n"
    assert p.parse_probe_output(text) == {"start": 100.25, "end": 102.5, "host": "vm", "cuda_visible_devices": "1",
                                          "slurm_job_gpus": "1", "gpus_on_node": "1"}
    assert p.parse_probe_output("") ["start"] is None


def test_concurrent_jobs_on_distinct_devices():
    m = p.gres_isolation({"10": job(0, 2, "0"), "11": job(0.1, 2.1, "1"), "12": job(5, 6, "0")}, requested=1)
    assert m["gres_overlaps"] == [["10", "11"]] and m["gres_concurrent_pairs"] == 1 and m["gres_max_concurrent"] == 2
    assert m["gres_distinct_fraction"] == 1.0 and m["gres_shared_pairs"] == []
    assert m["gres_count_matches_fraction"] == 1.0
    assert [j["job_id"] for j in m["gres_jobs"]] == ["10", "11", "12"] and m["gres_jobs"][1]["slurm_job_gpus"] == "1"


def test_concurrent_jobs_sharing_a_device_are_caught():
    m = p.gres_isolation({"10": job(0, 2, "0"), "11": job(1, 3, "0")}, requested=1)
    assert m["gres_distinct_fraction"] == 0.0 and m["gres_shared_pairs"] == [["10", "11"]]


def test_a_job_after_another_on_the_same_device_is_no_overlap():
    m = p.gres_isolation({"10": job(0, 2, "0"), "11": job(2.0, 3, "0")}, requested=1)
    assert m["gres_overlaps"] == [] and m["gres_distinct_fraction"] is None  # nothing concurrent: not measured


def test_fenced_devices_are_compared_by_slurm_job_gpus_and_host():
    # with cgroup device fencing every job sees CUDA_VISIBLE_DEVICES=0; SLURM_JOB_GPUS names the node's GPU
    fenced = p.gres_isolation({"10": job(0, 2, "0", job_gpus="0"), "11": job(0, 2, "0", job_gpus="1")}, 1)
    assert fenced["gres_distinct_fraction"] == 1.0
    two_nodes = p.gres_isolation({"10": job(0, 2, "0", host="n1"), "11": job(0, 2, "0", host="n2")}, 1)
    assert two_nodes["gres_distinct_fraction"] == 1.0
    ranged = p.gres_isolation({"10": job(0, 2, "0,1", job_gpus="0-1"), "11": job(0, 2, "1", job_gpus="1")}, 1)
    assert ranged["gres_distinct_fraction"] == 0.0


def test_visible_count_must_equal_the_request():
    m = p.gres_isolation({"10": job(0, 1, "0,1"), "11": job(2, 3, "1"), "12": job(4, 5, "")}, requested=1)
    assert m["gres_count_matches_fraction"] == round(1 / 3, 4)
    assert p.gres_isolation({"10": job(0, 1, "")}, requested=0)["gres_count_matches_fraction"] is None


@pytest.mark.parametrize("message", [
    "sbatch: error: Batch job submission failed: Requested node configuration is not available",
    "sbatch: error: Invalid generic resource (gres) specification",
    "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification",
])
def test_overcommit_refused_for_its_gpus(message):
    v = p.overcommit_verdict(1, message, 0, "sbatch: Job 9 to start at 2026-12-01T10:00:00 using 1 processors")
    assert v["gres_overcommit_refused"] == 1 and v["gres_overcommit_reason"].startswith("GRES: ")


@pytest.mark.parametrize("message", [
    "sbatch: error: invalid partition specified: gpu",
    "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
    "ssh: connect to host 10.0.0.1 port 22: Connection refused",
    "",
])
def test_overcommit_refused_for_another_reason_does_not_count(message):
    v = p.overcommit_verdict(1, message, 0, "")
    assert v["gres_overcommit_refused"] == 0 and "another reason" in v["gres_overcommit_reason"]


def test_overcommit_accepted_or_refused_with_the_control_refused_too():
    assert p.overcommit_verdict(0, "123", 0, "")["gres_overcommit_refused"] == 0
    v = p.overcommit_verdict(1, "Requested node configuration is not available", 1,
                             "sbatch: error: Requested time limit is invalid (missing or exceeds some limit)")
    assert v["gres_overcommit_refused"] == 0 and "without --gres is refused too" in v["gres_overcommit_reason"]


# -- the whole probe against a canned login node ----------------------------------------------------------------------
class CannedLogin:
    """Answers the probe's remote scripts as a 2-GPU single-node cluster would (no ssh)."""

    where = "canned"

    def __init__(self, overcommit=(1, "sbatch: error: Batch job submission failed: Requested node configuration is "
                                      "not available"), shared_device=False):
        self.next_id, self.outputs, self.scripts = 100, {}, []
        self.overcommit, self.shared_device = overcommit, shared_device

    def _done(self, rc=0, out="", err=""):
        return subprocess.CompletedProcess("canned", rc, out, err)

    def run(self, script, timeout=60, check=True, stdin=None):
        self.scripts.append(script)
        if script.startswith("sinfo"):
            return self._done(out="slurm 22.05.8\nup 1 gpu:2\n")
        if "for i in $(seq" in script:
            count, hold = int(re.search(r"seq (\d+)", script).group(1)), " -J probe-gres " in script
            lines = []
            for i in range(count):
                job_id, self.next_id = str(self.next_id), self.next_id + 1
                t = 1000.0 + int(job_id)
                start, end = (t + 0.5, t + 2.5) if hold else (t + 0.3, t + 0.35)
                dev = "0" if (self.shared_device or not hold) else str(i % 2)
                self.outputs[job_id] = (f"started_at={start} host=vm cvd={dev} job_gpus={dev} gpus=1\n"
                                        f"ended_at={end}\n")
                lines.append(f"{job_id} {t} 0")
            return self._done(out="\n".join(lines) + "\n")
        if script.startswith("squeue"):
            return self._done()
        if "scontrol show job" in script:
            job_id = script.split()[-1]
            return self._done(out=f"JobId={job_id} JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:01 "
                                  f"NodeList=vm SubmitTime=1 StartTime=2 EndTime=3\n")
        if script.startswith("sbatch --parsable") and "--gres=gpu:3" in script:
            rc, msg = self.overcommit
            return self._done(rc=rc, out="555\n" if rc == 0 else "", err="" if rc == 0 else msg)
        if script.startswith("sbatch --test-only"):
            return self._done(err="sbatch: Job 9 to start at 2026-12-01T10:00:00 using 1 processors on nodes vm\n")
        return self._done()

    def read_file(self, path, timeout=60):
        return self.outputs.get(re.search(r"probe-(\d+)\.out", path).group(1))


def test_probe_exports_every_old_figure_and_the_new_gres_ones():
    login = CannedLogin()
    m = p.probe(login, "/shared/x", "debug", gpus_per_node=2, jobs=4, timeout_s=10, hold_seconds=2)
    assert OLD_METRICS | NEW_METRICS <= set(m)
    assert m["jobs_submitted"] == 4 and m["jobs_completed"] == 4 and m["submission_success_rate"] == 1.0
    assert m["submit_to_start_seconds"] == [0.3, 0.3, 0.3, 0.3]  # the burst only, not the wave that holds GPUs
    assert m["gres_wave_jobs"] == 2 and m["gres_wave_completed"] == 2
    assert m["gres_overlaps"] == [["104", "105"]] and m["gres_distinct_fraction"] == 1.0
    assert m["gres_count_matches_fraction"] == 1.0 and m["gres_env_fraction"] == 1.0
    assert m["gres_overcommit_refused"] == 1 and "Requested node configuration" in m["gres_overcommit_message"]
    assert any(s.startswith("sbatch --test-only") and "--gres" not in s for s in login.scripts)
    assert login.scripts[-1].startswith("rm -rf /shared/x/slurm-probe")


def test_probe_reports_shared_devices_and_an_overcommit_that_was_queued():
    login = CannedLogin(overcommit=(0, ""), shared_device=True)
    m = p.probe(login, "/shared/x", "debug", gpus_per_node=2, jobs=2, timeout_s=10)
    assert m["gres_distinct_fraction"] == 0.0 and m["gres_shared_pairs"] == [["102", "103"]]
    assert m["gres_overcommit_refused"] == 0 and "accepted" in m["gres_overcommit_reason"]
    assert any(s == "scancel 555" for s in login.scripts)  # the queued over-request is not left behind


def test_probe_without_gpus_runs_no_wave():
    m = p.probe(CannedLogin(), "/shared/x", "debug", gpus_per_node=0, jobs=2, timeout_s=10)
    assert m["gres_wave_jobs"] == 0 and m["gres_distinct_fraction"] is None and m["gres_requested"] == "none"


def test_one_gpu_node_jobs_one_after_the_other_share_nothing():

    m = p.gres_isolation({"10": job(0, 2, "0"), "11": job(2.5, 4, "0")}, requested=1, gpus_per_node=1)
    assert m["gres_distinct_fraction"] == 1.0 and m["gres_serialized"]
    # two jobs at once on the one GPU: shared
    m = p.gres_isolation({"10": job(0, 2, "0"), "11": job(1, 3, "0")}, requested=1, gpus_per_node=1)
    assert m["gres_distinct_fraction"] == 0.0 and not m["gres_serialized"]
    # one job only: nothing measured
    assert p.gres_isolation({"10": job(0, 2, "0")}, requested=1, gpus_per_node=1)["gres_distinct_fraction"] is None
    # several GPUs but no overlap: not measured either (the wave should have overlapped)
    assert p.gres_isolation({"10": job(0, 2, "0"), "11": job(3, 4, "1")}, 1, gpus_per_node=2)[
        "gres_distinct_fraction"] is None
