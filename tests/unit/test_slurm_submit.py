"""workloads/slurm_submit.py, the login-node side of a SLURM job resource, against a fake SLURM: sbatch, scontrol,
squeue, scancel and sacct are one small Python program on PATH that really runs the job script (bash) in the
background and keeps each job's state in a folder, so submit, wait, failure, cancel-on-signal and delete run as they
would on a login node, without SLURM."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stacks.slurm import jobs
from stacks.slurm.job import render_script

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "workloads" / "slurm_submit.py"
_spec = importlib.util.spec_from_file_location("slurm_submit", SUBMIT)  # the file as it runs on the login node
slurm_submit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slurm_submit)

FAKE_SLURM = r'''#!/usr/bin/env python3
import json, os, re, signal, subprocess, sys, time
STATE = os.environ["FAKE_SLURM"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}

def path(job): return os.path.join(STATE, f"{job}.json")
def load(job):
    try:
        with open(path(job)) as fh: return json.load(fh)
    except (OSError, ValueError): return None
def save(job, rec):
    tmp = f"{path(job)}.{os.getpid()}.part"
    with open(tmp, "w") as fh: json.dump(rec, fh)
    os.replace(tmp, path(job))
def clock(s):
    s = int(s); return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
def log(line):
    with open(os.path.join(STATE, "calls.log"), "a") as fh: fh.write(line + "\n")

def sbatch(args):
    script = args[-1]
    if os.environ.get("FAKE_SBATCH_ERROR"):
        sys.stderr.write(os.environ["FAKE_SBATCH_ERROR"] + "\n"); sys.exit(1)
    text = open(script).read()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    counter = os.path.join(STATE, "next_id")
    job = int(open(counter).read()) if os.path.exists(counter) else 100
    open(counter, "w").write(str(job + 1))
    out = opts.get("output", f"slurm-%j.out").replace("%j", str(job))
    save(job, {"state": "PENDING", "exit": "0:0", "submit": time.time(), "start": None, "end": None,
               "name": opts.get("job-name", "x"), "script": script, "out": out, "gres": opts.get("gres", "")})
    subprocess.Popen([sys.executable, __file__, "__run", str(job)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"sbatch {job}")
    print(job)

def run(job):
    time.sleep(float(os.environ.get("FAKE_PENDING_S", "0.2")))
    rec = load(job)
    if rec["state"] != "PENDING" or os.environ.get("FAKE_NODES_DOWN"): return
    gpus = rec["gres"].split(":")[-1] if rec["gres"] else ""
    env = {**os.environ, "SLURM_JOB_ID": str(job), "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1"}
    if gpus:
        env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, range(int(gpus)))), SLURM_JOB_GPUS="0",
                   SLURM_GPUS_ON_NODE=gpus)
    with open(rec["out"], "w") as out:
        proc = subprocess.Popen(["bash", rec["script"]], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=os.path.dirname(rec["script"]))
    rec.update(state="RUNNING", start=time.time(), pgid=proc.pid); save(job, rec)
    code = proc.wait()
    rec = load(job)
    if rec["state"] == "RUNNING":
        rec.update(state="COMPLETED" if code == 0 else "FAILED", exit=f"{code}:0", end=time.time()); save(job, rec)

def scontrol(args):
    job = args[-1]; rec = load(job)
    if rec is None or os.environ.get("FAKE_PURGED"):
        sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n"); sys.exit(1)
    ran = (rec["end"] or time.time()) - rec["start"] if rec["start"] else 0
    down = os.environ.get("FAKE_NODES_DOWN", "") if rec["state"] == "PENDING" else ""
    reason = "Nodes_required_for_job_are_DOWN,_DRAINED" if down == "reason" else "None"
    print(f"JobId={job} JobName={rec['name']} UserId=root(0) JobState={rec['state']} Reason={reason} "
          f"Restarts={1 if down == 'requeued' else 0} "
          f"ExitCode={rec['exit']} RunTime={clock(ran)} SubmitTime={int(rec['submit'])} "
          f"StartTime={int(rec['start']) if rec['start'] else 'Unknown'} EndTime={int(rec['end']) if rec['end'] else 'Unknown'} "
          f"NodeList={'fakenode' if rec['start'] else '(null)'} Command={rec['script']} StdOut={rec['out']}")

def squeue(args):
    rec = load(args[args.index("-j") + 1])
    if rec is None: sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n"); sys.exit(1)
    if rec["state"] not in TERMINAL: print(rec["state"])

def scancel(args):
    job = args[-1]; rec = load(job); log(f"scancel {job}")
    if rec is None or rec["state"] in TERMINAL: return
    rec.update(state="CANCELLED", exit="0:15", end=time.time()); save(job, rec)  # first, then the kill
    if rec.get("pgid"):
        try: os.killpg(rec["pgid"], signal.SIGKILL)
        except ProcessLookupError: pass

def sacct(args):
    rec = load(args[args.index("-j") + 1])
    if not os.environ.get("FAKE_SACCT") or rec is None:
        sys.stderr.write("sacct: error: accounting storage is disabled\n"); sys.exit(1)
    ran = (rec["end"] or time.time()) - (rec["start"] or time.time())
    fields = [rec["state"], rec["exit"], "fakenode", clock(ran)]
    if "-X" in args: fields.append(str(int(rec["submit"])))
    fields += [str(int(rec["start"] or 0)), str(int(rec["end"] or 0))]
    print("|".join(fields))

name = os.path.basename(sys.argv[0])
if sys.argv[1:2] == ["__run"]: run(int(sys.argv[2]))
else: {"sbatch": sbatch, "scontrol": scontrol, "squeue": squeue, "scancel": scancel, "sacct": sacct}[name](sys.argv[1:])
'''


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """PATH with the fake SLURM; returns a helper with the state folder and the job folder to use."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    fake = bin_dir / "fake_slurm.py"
    fake.write_text(FAKE_SLURM)
    fake.chmod(0o755)
    for tool in ("sbatch", "scontrol", "squeue", "scancel", "sacct"):
        (bin_dir / tool).symlink_to(fake)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))

    class Fake:
        root = tmp_path
        job_dir = tmp_path / "jobs" / "mnist-0123abcd"

        @staticmethod
        def job(job_id) -> dict:
            return json.loads((state / f"{job_id}.json").read_text())

        @staticmethod
        def calls() -> list:
            log = state / "calls.log"
            return log.read_text().splitlines() if log.exists() else []

    return Fake


def script(job_dir: Path, command: str, gres="gpu:1") -> str:
    return render_script("mnist", str(job_dir), command, "debug", gres, 1, 1, 5)


def submit(job_dir: Path, text: str, *extra: str, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), "submit", "--job-dir", str(job_dir), "--poll", "0.1",
                           *extra], input=text, capture_output=True, text=True, timeout=timeout, env=env)


def start(job_dir: Path, text: str, *extra: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """The submit script in the background, the job script as base64 (its stdin is free)."""
    return subprocess.Popen([sys.executable, str(SUBMIT), "submit", "--job-dir", str(job_dir), "--poll", "0.1",
                             "--script-b64", _b64(text), *extra], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_running(fake, job_dir: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        id_file = job_dir / "job_id"
        if id_file.exists() and id_file.read_text().strip():
            job_id = id_file.read_text().strip()
            if fake.job(job_id)["state"] == "RUNNING":
                return job_id
        time.sleep(0.05)
    raise AssertionError("the fake job never ran")


def wait_state(fake, job_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while fake.job(job_id)["state"] != wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {fake.job(job_id)['state']}, not {wanted}"
        time.sleep(0.05)


# -- submit, wait, the printed document -------------------------------------------------------------------------
def test_a_completed_job_prints_its_record_metrics_and_gres_env(slurm):
    out = submit(slurm.job_dir, script(slurm.job_dir, """echo '{"accuracy": 0.97}' > metrics.json\necho trained"""))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    # the fields run_job returned before (and SbatchJob exports)
    assert {"job_id", "state", "exit_code", "node", "elapsed_seconds", "submit_to_start_seconds", "gres_env",
            "metrics", "job_dir", "log_path", "log_tail"} <= set(doc)
    assert doc["state"] == "COMPLETED" and doc["exit_code"] == "0:0" and doc["node"] == "fakenode"
    assert doc["metrics"] == {"accuracy": 0.97}
    assert doc["gres_env"]["CUDA_VISIBLE_DEVICES"] == "0" and doc["gres_env"]["SLURM_JOB_ID"] == doc["job_id"]
    assert "started_at" not in doc["gres_env"] and 0 <= doc["submit_to_start_seconds"] < 10
    assert doc["job_dir"] == str(slurm.job_dir) and doc["log_path"] == f"{slurm.job_dir}/slurm-{doc['job_id']}.out"
    assert "trained" in doc["log_tail"] and isinstance(doc["elapsed_seconds"], (int, float))
    record = json.loads((slurm.job_dir / "job_record.json").read_text())
    assert record["job_id"] == doc["job_id"] and record["state"] == "COMPLETED"
    assert (slurm.job_dir / "job.sh").read_text().startswith("#!/bin/bash\n")
    assert f"job {doc['job_id']} COMPLETED on fakenode" in out.stderr  # progress: stderr, not the JSON


def test_the_script_can_come_as_base64_or_a_file(slurm, tmp_path):
    import base64
    text = script(slurm.job_dir, "true", gres=None)
    out = submit(slurm.job_dir, "", "--script-b64", base64.b64encode(text.encode()).decode(), "--no-metrics")
    assert out.returncode == 0 and json.loads(out.stdout)["metrics"] == {}
    (tmp_path / "job.sh").write_text(text)
    out = submit(slurm.job_dir, "", "--script", str(tmp_path / "job.sh"))
    assert out.returncode == 0 and json.loads(out.stdout)["gres_env"]["CUDA_VISIBLE_DEVICES"] == ""


def test_a_failed_job_exits_nonzero_naming_id_state_exit_code_node_and_log(slurm):
    out = submit(slurm.job_dir, script(slurm.job_dir, "echo 'CUDA error: boom' >&2\nexit 3"))
    assert out.returncode == 1 and out.stdout == ""
    line = next(l for l in out.stderr.splitlines() if l.startswith("SLURM job"))
    job_id = (slurm.job_dir / "job_id").read_text().strip()
    assert line == (f"SLURM job {job_id} (mnist) ended FAILED with exit code 3:0 on fakenode; "
                    f"log {slurm.job_dir}/slurm-{job_id}.out")
    assert "CUDA error: boom" in out.stderr  # the log tail
    assert slurm.job_dir.is_dir()  # left for inspection


def test_sbatch_refusal_is_one_line_with_slurms_reason(slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "sbatch: error: Batch job submission failed: Invalid generic resource "
                                            "(gres) specification")
    out = submit(slurm.job_dir, script(slurm.job_dir, "true"))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"slurm_submit: sbatch refused {slurm.job_dir}/job.sh: sbatch: error: Batch job "
                                  "submission failed: Invalid generic resource (gres) specification")


def test_a_job_past_its_timeout_is_cancelled(slurm):
    out = submit(slurm.job_dir, script(slurm.job_dir, "sleep 60"), "--timeout", "1")
    assert out.returncode == 3 and "after 1 s; cancelled it" in out.stderr
    job_id = (slurm.job_dir / "job_id").read_text().strip()
    assert f"scancel {job_id}" in slurm.calls() and slurm.job(job_id)["state"] == "CANCELLED"


@pytest.mark.parametrize("how", ["reason", "requeued"])
def test_a_job_waiting_on_down_nodes_is_cancelled_and_fails_naming_it(slurm, monkeypatch, how):
    monkeypatch.setenv("FAKE_NODES_DOWN", how)  # slurmd gone: the job pends (requeued) for as long as it is
    started = time.monotonic()
    out = submit(slurm.job_dir, script(slurm.job_dir, "echo never"), "--nodes-down-grace", "1")
    job_id = (slurm.job_dir / "job_id").read_text().strip()
    assert out.returncode == 4 and time.monotonic() - started < 20
    assert f"SLURM job {job_id} (mnist) cannot run: its nodes are down" in out.stderr
    assert ("requeued 1x after a node failure" in out.stderr) == (how == "requeued")
    assert slurm.job(job_id)["state"] == "CANCELLED"


def test_a_rerun_of_the_same_job_starts_from_a_clean_folder(slurm):
    assert submit(slurm.job_dir, script(slurm.job_dir, "echo '{\"a\": 1}' > metrics.json")).returncode == 0
    (slurm.job_dir / "stale.txt").write_text("from the first attempt")
    out = submit(slurm.job_dir, script(slurm.job_dir, "true"))
    assert out.returncode == 0 and json.loads(out.stdout)["metrics"] == {}
    assert not (slurm.job_dir / "stale.txt").exists()


# -- cancel when interrupted ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_cancels_the_job(slurm, sig):
    proc = start(slurm.job_dir, script(slurm.job_dir, "sleep 60"))
    job_id = wait_running(slurm, slurm.job_dir)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert f"interrupted ({signal.Signals(sig).name}); cancelled job {job_id}" in err
    assert slurm.job(job_id)["state"] == "CANCELLED" and f"scancel {job_id}" in slurm.calls()
    record = json.loads((slurm.job_dir / "job_record.json").read_text())
    assert record["state"] == "CANCELLED" and signal.Signals(sig).name in record["reason"]


def test_stdin_closing_cancels_the_job_with_watch_stdin(slurm):
    proc = start(slurm.job_dir, script(slurm.job_dir, "sleep 60"), "--watch-stdin", stdin=subprocess.PIPE)
    job_id = wait_running(slurm, slurm.job_dir)
    proc.stdin.close()  # what a dropped ssh connection does to the remote command's stdin
    proc.wait(timeout=30)
    assert "stdin closed" in proc.stderr.read()
    assert proc.returncode == 129 and slurm.job(job_id)["state"] == "CANCELLED"


def test_the_parent_going_away_cancels_the_job(slurm):
    """The login shell / sshd session dies (connection lost): the script sees its parent change."""
    cmd = (f"{sys.executable} {SUBMIT} submit --job-dir {slurm.job_dir} --poll 0.1 "
           f"--script-b64 {_b64(script(slurm.job_dir, 'sleep 60'))} 2>/dev/null & wait")
    shell = subprocess.Popen(["bash", "-c", cmd], start_new_session=True)
    job_id = wait_running(slurm, slurm.job_dir)
    shell.kill()
    shell.wait()
    wait_state(slurm, job_id, "CANCELLED")


def test_sigkill_of_the_submit_process_is_covered_by_its_guard(slurm):
    """Go's exec.CommandContext kills the command with SIGKILL on cancellation; the guard process cancels then."""
    proc = start(slurm.job_dir, script(slurm.job_dir, "sleep 60"))
    job_id = wait_running(slurm, slurm.job_dir)
    proc.kill()
    proc.communicate(timeout=10)
    wait_state(slurm, job_id, "CANCELLED")
    deadline = time.monotonic() + 10
    while not (slurm.job_dir / "guard_cancelled.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_guard_does_not_outlive_a_normal_run_or_hold_its_output_open(slurm):
    started = time.monotonic()
    out = submit(slurm.job_dir, script(slurm.job_dir, "true"), timeout=30)  # communicate() waits for EOF on stdout
    assert out.returncode == 0 and time.monotonic() - started < 15
    job_id = json.loads(out.stdout)["job_id"]
    assert [c for c in slurm.calls() if c == f"scancel {job_id}"] == []


# -- show and delete ----------------------------------------------------------------------------------------------
def test_show_reprints_the_same_document_without_running_anything(slurm):
    out = submit(slurm.job_dir, script(slurm.job_dir, "echo '{\"loss\": 0.1}' > metrics.json"))
    calls = slurm.calls()
    again = subprocess.run([sys.executable, str(SUBMIT), "show", "--job-dir", str(slurm.job_dir)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(out.stdout)
    assert slurm.calls() == calls  # no sbatch, no scontrol


def test_show_without_a_record_fails_naming_the_path(slurm):
    out = subprocess.run([sys.executable, str(SUBMIT), "show", "--job-dir", str(slurm.job_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"no job record at {slurm.job_dir}/job_record.json" in out.stderr


def _delete(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), "delete", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_delete_removes_the_folder_of_a_finished_job(slurm):
    assert submit(slurm.job_dir, script(slurm.job_dir, "true")).returncode == 0
    out = _delete("--job-dir", str(slurm.job_dir))
    assert out.returncode == 0 and not slurm.job_dir.exists()
    assert not [c for c in slurm.calls() if c.startswith("scancel")]
    assert _delete("--job-dir", str(slurm.job_dir)).returncode == 0  # already gone: nothing to do


def test_delete_cancels_a_job_still_running_found_through_pulumi_command_stdout(slurm):
    proc = start(slurm.job_dir, script(slurm.job_dir, "sleep 60"))
    job_id = wait_running(slurm, slurm.job_dir)
    os.kill(proc.pid, signal.SIGSTOP)  # the submitting side is stuck; its job keeps running
    try:
        env = {**os.environ, "PULUMI_COMMAND_STDOUT": json.dumps({"job_id": job_id, "job_dir": str(slurm.job_dir)})}
        out = _delete(env=env)
        assert out.returncode == 0, out.stderr
        assert slurm.job(job_id)["state"] == "CANCELLED" and not slurm.job_dir.exists()
        assert f"cancelled job {job_id}" in out.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_delete_finds_the_job_id_in_the_folder_when_no_stdout_is_passed(slurm):
    slurm.job_dir.mkdir(parents=True)
    (slurm.job_dir / "job.sh").write_text(script(slurm.job_dir, "sleep 60"))
    job_id = subprocess.run(["sbatch", "--parsable", str(slurm.job_dir / "job.sh")], capture_output=True,
                            text=True).stdout.strip()
    (slurm.job_dir / "job_id").write_text(job_id + "\n")
    wait_running(slurm, slurm.job_dir)
    assert _delete("--job-dir", str(slurm.job_dir)).returncode == 0
    assert slurm.job(job_id)["state"] == "CANCELLED" and not slurm.job_dir.exists()


def test_delete_fails_naming_the_path_when_the_folder_cannot_be_removed(slurm, monkeypatch, capsys):
    slurm.job_dir.mkdir(parents=True)

    def refuse(path, *a, **kw):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(slurm_submit.shutil, "rmtree", refuse)
    assert slurm_submit.main(["delete", "--job-dir", str(slurm.job_dir)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"slurm_submit: cannot remove the job folder {slurm.job_dir}: Permission denied"


def test_delete_refuses_a_folder_that_is_no_job_folder(slurm, tmp_path):
    out = _delete("--job-dir", str(tmp_path))
    assert out.returncode == 2 and "not a job folder" in out.stderr and tmp_path.exists()


# -- the job record, and agreement with stacks/slurm/jobs.py --------------------------------------------------------
def test_job_record_falls_back_to_sacct_when_the_controller_purged_the_job(slurm, monkeypatch):
    assert submit(slurm.job_dir, script(slurm.job_dir, "exit 2")).returncode == 1
    job_id = (slurm.job_dir / "job_id").read_text().strip()
    monkeypatch.setenv("FAKE_PURGED", "1")
    assert slurm_submit.job_record(job_id) is None  # scontrol forgot it and accounting is disabled
    monkeypatch.setenv("FAKE_SACCT", "1")
    rec = slurm_submit.job_record(job_id)
    assert rec["state"] == "FAILED" and rec["exit_code"] == "2:0" and rec["node"] == "fakenode"
    run = lambda cmd: subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)  # noqa: E731
    shared = jobs.job_record(run, job_id)
    assert {k: shared[k] for k in ("state", "exit_code", "node")} == {k: rec[k] for k in ("state", "exit_code", "node")}
    assert shared["submit_time"] == rec["submit_time"] and shared["start_time"] == rec["start_time"]


@pytest.mark.parametrize("line", [
    "JobId=7 JobName=probe UserId=root(0) JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:01:05 "
    "NodeList=vm Command=(null) TresPerNode=gres:gpu:1 SubmitTime=100 StartTime=103 EndTime=168",
    "JobId=8 JobState=PENDING Reason=Resources ExitCode=0:0 RunTime=00:00:00 NodeList=(null) JobState=X",
])
def test_the_submit_script_parses_as_the_shared_module_does(line):
    assert slurm_submit.parse_scontrol(line) == jobs.parse_scontrol(line)
    for clock in ("00:01:05", "1-02:00:00", "03:07"):
        assert slurm_submit.elapsed_seconds(clock) == jobs.elapsed_seconds(clock)
    assert slurm_submit.TERMINAL == jobs.TERMINAL


def test_the_submit_script_imports_nothing_outside_the_standard_library():
    import ast
    tree = ast.parse(SUBMIT.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


def _b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()
