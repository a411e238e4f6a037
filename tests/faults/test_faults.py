"""Faults injected for real into the embedded default (the fault suite's small stack, conftest.py): each ends in a
clear failure naming what failed, or a recovery, within a bounded time, and loses nothing. In order: a first `up`
whose slurmd is killed mid-job, its re-run; an `up` interrupted by Ctrl-C then SIGKILL while a job runs, its re-run;
an `up` killed halfway, then `pulumi destroy`."""
import json
import os
import re
import signal
import time

from tests.faults.conftest import PORTS, STACK, STATE_ROOT, interrupt, record
from tests.integration.conftest import outputs, run, stack, wait_for_no_leftovers

BOUND_S = 300  # no fault may take longer than this to show: a hang is a failure


def _converged_and_intact(fault_stack) -> dict:
    """The stack is up, a preview shows nothing left to do, no pending operation, the data intact by checksum."""
    preview = run(["pulumi", "preview", "--expect-no-changes", "--non-interactive", "--stack", STACK], timeout=600)
    assert preview.returncode == 0, preview.stdout[-3000:]
    assert fault_stack.pending_operations() == []
    storage = outputs(STACK)["storage"]["metrics"]
    assert storage["cross_job_checksum_ok"] == 1, storage  # the file one job wrote, another verified
    return storage


def test_slurmd_killed_mid_job_fails_naming_the_job_and_a_rerun_completes(fault_stack):
    up = fault_stack.start_up()
    job_id = fault_stack.wait_for_running_job(up)
    slurmd = fault_stack.daemon_pid("slurmd")
    killed_at = time.monotonic()
    os.kill(slurmd, signal.SIGKILL)
    up.wait(timeout=BOUND_S)
    detect_s = time.monotonic() - killed_at
    text = fault_stack.output(up)
    assert up.returncode != 0, text[-3000:]
    named = re.search(r"SLURM job (\d+) \((\S+)\) cannot run: its nodes are down", text)
    assert named, text[-3000:]
    assert named.group(1) == job_id or int(named.group(1)) > int(job_id), (job_id, named.group(0))
    named_job = f"{named.group(1)} ({named.group(2)})"
    assert not any(state in ("RUNNING", "PENDING") for state in fault_stack.jobs().values())  # cancelled, none left

    started = time.monotonic()
    again = stack("up", STACK, timeout=900)
    recover_s = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-3000:]
    _converged_and_intact(fault_stack)
    record("slurmd killed (SIGKILL) mid-job",
           f"slurmd killed while job {job_id} ran; SLURM marked the node down, job {named_job} could only wait on it "
           f"and was cancelled; `pulumi up` failed naming it ('cannot run: its nodes are down'); the re-run "
           f"restarted the daemons (the cluster resource saw slurmd gone) and completed",
           detect_s, recover_s, "none (storage check: checksum across jobs ok)")


def test_up_interrupted_by_ctrl_c_then_sigkill_leaves_nothing_and_a_rerun_converges(fault_stack):
    down = stack("down", STACK, timeout=600)  # from scratch, so that the jobs run again
    assert down.returncode == 0, down.stdout[-3000:]
    up = fault_stack.start_up()
    job_id = fault_stack.wait_for_running_job(up)
    interrupted_at = time.monotonic()
    interrupt(up, (signal.SIGINT, signal.SIGKILL))
    deadline, orphans, jobs = time.monotonic() + 90, None, None
    while time.monotonic() < deadline:  # the submit script notices the lost connection, its guard cancels
        orphans, jobs = fault_stack.orphans(), fault_stack.jobs()
        if not orphans and not jobs:
            break
        time.sleep(0.5)
    detect_s = time.monotonic() - interrupted_at
    assert orphans == [] and jobs == {}, (orphans, jobs)
    ended = fault_stack.job_state(job_id)

    started = time.monotonic()
    again = stack("up", STACK, timeout=900)
    recover_s = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-3000:]
    _converged_and_intact(fault_stack)
    record("`pulumi up` interrupted: Ctrl-C, then SIGKILL 3 s later, while a job runs",
           f"job {job_id} ended {ended} and no pulumi, provider or submit process left within the time shown; the "
           f"re-run cleared the lock, left no pending operation and converged (preview: no changes)",
           detect_s, recover_s, "none (storage check: checksum across jobs ok)")


def test_destroy_after_a_partial_up_removes_everything(fault_stack):
    down = stack("down", STACK, timeout=600)
    assert down.returncode == 0, down.stdout[-3000:]
    up = fault_stack.start_up()
    job_id = fault_stack.wait_for_running_job(up)
    interrupt(up, (signal.SIGKILL,))  # the cluster is up, code and data staged, a job half done
    deadline = time.monotonic() + 60
    while fault_stack.jobs() and time.monotonic() < deadline:  # the reaper ends the plugins, the job is cancelled
        time.sleep(0.5)
    ended = fault_stack.job_state(job_id)
    started = time.monotonic()
    destroyed = stack("down", STACK, timeout=600)
    destroy_s = time.monotonic() - started
    assert destroyed.returncode == 0, destroyed.stdout[-3000:]
    left = wait_for_no_leftovers([str(fault_stack.state_dir), str(STATE_ROOT / f"{STACK}-serving")], PORTS)
    assert left == [] and not fault_stack.state_dir.exists(), left
    assert fault_stack.orphans() == []
    resources = json.loads(run(["pulumi", "stack", "export", "--stack", STACK], check=True).stdout)
    assert [r["type"] for r in resources["deployment"].get("resources") or []
            if r["type"] != "pulumi:pulumi:Stack" and not r["type"].startswith("pulumi:providers:")] == []
    record("`pulumi destroy` after an `up` killed (SIGKILL) mid-job",
           f"job {job_id} ended {ended}; destroy removed the cluster, its daemons, the staged code and data and the "
           f"job folders; no process, port, folder or resource left",
           None, destroy_s, "n/a (everything removed on purpose)")
