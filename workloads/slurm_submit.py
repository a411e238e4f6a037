#!/usr/bin/env python3
"""One SLURM batch job, driven from the login node: the create/update/delete command of the pulumi-command
resource in stacks/slurm/job.py.

    python3 slurm_submit.py submit --job-dir DIR [--script FILE | --script-b64 B64]   (default: the script on stdin)
                                   [--timeout S] [--poll S] [--no-metrics] [--watch-stdin]
    python3 slurm_submit.py show   --job-dir DIR
    python3 slurm_submit.py delete [--job-dir DIR]

`submit` writes the job script to DIR/job.sh, runs `sbatch --parsable`, polls `scontrol show job -o` (`sacct` once the
controller has purged the job) until the job ends, writes DIR/job_record.json and prints ONE JSON document on stdout:
the job record with the workload's metrics.json and the job_env.json the sbatch template writes (job_id, state,
exit_code, node, elapsed_seconds, submit_to_start_seconds, gres_env, metrics, job_dir, log_path, log_tail). A job
that did not complete exits 1 with one line naming the job id, state, exit code, node and log path, then the log's
tail, on stderr. Progress lines go to stderr as well. A job that can only wait because its nodes are down (SLURM's
reason says so, or it was requeued after a node failure: a killed slurmd) is cancelled after --nodes-down-grace
seconds and fails naming its id and the reason, instead of waiting out --timeout.

The job is cancelled (scancel) when this process gets SIGTERM, SIGINT or SIGHUP, when its parent (the login shell
or sshd session) goes away, when stderr can no longer be written (the connection dropped), or, with
--watch-stdin, when stdin closes. A forked guard process, detached from stdio, cancels it also when this process
is killed outright (SIGKILL, as Go's exec.CommandContext does on cancellation).

`show` reprints the saved document (the resource's update command: a change of the connection's key or time-outs
re-runs nothing). `delete` cancels the job if it is still queued or running and removes DIR; it takes the job id
from PULUMI_COMMAND_STDOUT when the provider passes it (local commands always; ssh only where sshd AcceptEnv allows
it), else from DIR/job_id. It exits non-zero, naming the path, when DIR exists and cannot be removed.

Standard library only, for the login node's own python3 (not the workloads' environment). The SLURM queries here
repeat stacks/slurm/jobs.py on purpose: this file is copied to the cluster and must stand alone there, the one
allowed exception to "one job-query module" (tests/unit/test_slurm_submit.py checks that the two agree).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
RECORD = "job_record.json"
JOB_ID_FILE = "job_id"
LOG_TAIL_LINES = 40
JOB_DIR_NAME = re.compile(r"^[A-Za-z0-9_.-]+-[0-9a-f]{8}$")


class SubmitError(Exception):
    """Ends the run with this one-line message (and an exit code)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    def __init__(self, why: str, code: int):
        super().__init__(why)
        self.why, self.code = why, code


# -- SLURM queries (stdlib twin of stacks/slurm/jobs.py) ----------------------------------------------------------
def sh(argv: list, timeout: float = 60, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} did not answer within {timeout:.0f} s")


def parse_scontrol(line: str) -> dict:
    fields: dict = {}
    for token in line.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def elapsed_seconds(run_time: str) -> float:
    days, _, clock = run_time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def epoch_seconds(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value not in (None, "", "Unknown", "None") else None
    except ValueError:
        return None


def job_record(job_id: str) -> Optional[dict]:
    """SLURM's view of the job (epoch times), or None when neither scontrol nor sacct knows it."""
    env = {**os.environ, "SLURM_TIME_FORMAT": "%s"}
    out = sh(["scontrol", "show", "job", "-o", job_id], env=env)
    f = parse_scontrol(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    if not f:  # purged from the controller (MinJobAge): accounting (slurmdbd), else the jobcomp file
        for argv, keys in (
                (["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode,NodeList,Elapsed,Submit,Start,End"],
                 ("JobState", "ExitCode", "NodeList", "RunTime", "SubmitTime", "StartTime", "EndTime")),
                (["sacct", "-c", "-n", "-P", "-j", job_id, "-o", "State,ExitCode,NodeList,Elapsed,Start,End"],
                 ("JobState", "ExitCode", "NodeList", "RunTime", "StartTime", "EndTime"))):
            acct = sh(argv, env=env)
            parts = (acct.stdout.strip().splitlines() or [""])[0].split("|") if acct.returncode == 0 else []
            if len(parts) >= 4 and parts[0]:
                f = dict(zip(keys, parts + [""] * (len(keys) - len(parts))))
                break
    if not f:
        return None
    submit, start, end = (epoch_seconds(f.get(k)) for k in ("SubmitTime", "StartTime", "EndTime"))
    node = f.get("NodeList", "")
    return {"state": (f.get("JobState") or "UNKNOWN").split()[0].rstrip("+"), "exit_code": f.get("ExitCode", ""),
            "node": "" if node in ("(null)", "None assigned") else node, "reason": f.get("Reason", ""),
            "restarts": int(f["Restarts"]) if f.get("Restarts", "").isdigit() else 0,
            "run_time": f.get("RunTime", ""), "submit_time": submit, "start_time": start, "end_time": end}


# Reasons SLURM gives a job that cannot run because its nodes failed or are down (a job it requeued after a node
# failure says so with Restarts > 0, at first with no reason at all).
NODES_DOWN = re.compile(r"NodeDown|NodeFail|ReqNodeNotAvail|Nodes_required_for_job_are_DOWN|launch_failed", re.I)


def stuck_on_nodes(record: dict) -> bool:
    """Whether the job waits only because its nodes are down (it would wait for as long as they are)."""
    if record["state"] != "PENDING":
        return False
    return bool(NODES_DOWN.search(record.get("reason") or "")) or record.get("restarts", 0) > 0


def active(job_id: str) -> bool:
    """Whether SLURM still has the job queued or running."""
    out = sh(["squeue", "-h", "-j", job_id, "-o", "%T"])
    states = out.stdout.split() if out.returncode == 0 else []
    return bool(states) and not all(s in TERMINAL for s in states)


def cancel(job_id: str, wait_s: float = 30.0) -> Optional[dict]:
    """scancel the job and wait (bounded) until SLURM says it ended; returns its last record."""
    sh(["scancel", job_id])
    deadline = time.monotonic() + wait_s
    record = None
    while time.monotonic() < deadline:
        record = job_record(job_id)
        if record is None or record["state"] in TERMINAL:
            break
        time.sleep(0.5)
    return record


# -- files in the job folder -------------------------------------------------------------------------------------
def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.part"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def document(job_dir: str, record: dict) -> dict:
    """What `submit` and `show` print: the record, the job's environment (GRES) and its metrics."""
    env = _read_json(os.path.join(job_dir, "job_env.json")) or {}
    started = epoch_seconds(str(env.pop("started_at", "")))
    submitted = record.get("submitted_at")
    if started is not None and submitted is not None:
        to_start = round(started - submitted, 3)
    else:
        to_start = record.get("slurm_submit_to_start_seconds")
    metrics = _read_json(os.path.join(job_dir, "metrics.json")) if record.get("metrics_file", True) else None
    # hpc.container: what the job measured of the image (container_env.json) and what the workload's own process saw
    # inside it (container.json, workloads/container_facts.py)
    container = _read_json(os.path.join(job_dir, "container_env.json"))
    if container is not None:
        container["inside"] = _read_json(os.path.join(job_dir, "container.json"))
    return {"job_id": record["job_id"], "name": record.get("name", ""), "state": record["state"],
            "exit_code": record["exit_code"], "node": record["node"], "reason": record.get("reason", ""),
            "elapsed_seconds": record.get("elapsed_seconds"), "submit_to_start_seconds": to_start,
            "gres_env": env, "metrics": metrics or {}, "job_dir": job_dir, "log_path": record["log_path"],
            "log_tail": log_tail(record["log_path"]), "container": container}


def failure_message(record: dict) -> str:
    return (f"SLURM job {record['job_id']} ({record.get('name') or '?'}) ended {record['state']} with exit code "
            f"{record['exit_code'] or '?'} on {record['node'] or 'no node'}"
            f"{' (' + record['reason'] + ')' if record.get('reason') not in (None, '', 'None') else ''}; "
            f"log {record['log_path']}")


def succeeded(record: dict) -> bool:
    return record.get("state") == "COMPLETED" and str(record.get("exit_code", "")).startswith("0:")


# -- the guard: cancels the job if this process dies without saying so ---------------------------------------------
def start_guard(job_id: str, job_dir: str) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: no stdio (it must not hold the ssh channel or the provider's pipes open), own session
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # forked while the parent blocks signals
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        while os.getppid() == parent:
            time.sleep(0.5)
        if not os.path.exists(os.path.join(job_dir, RECORD)):
            record = cancel(job_id)
            _write_json(os.path.join(job_dir, "guard_cancelled.json"),
                        {"job_id": job_id, "at": time.time(), "state": (record or {}).get("state")})
    finally:
        os._exit(0)


def stop_guard(pid: Optional[int]) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- modes -------------------------------------------------------------------------------------------------------
def _raise_on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name, 128 + signum)


def _say(text: str) -> None:
    """A progress line on stderr; a write that fails means the connection is gone."""
    try:
        sys.stderr.write(f"slurm_submit: {text}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        raise Interrupted("stderr closed (connection dropped)", 141) from None


def _script_text(args) -> str:
    if args.script_b64:
        return base64.b64decode(args.script_b64).decode()
    if args.script and args.script != "-":
        with open(args.script) as fh:
            return fh.read()
    if args.watch_stdin:
        raise SubmitError("--watch-stdin needs the script in --script FILE or --script-b64")
    return sys.stdin.read()


def _clear(job_dir: str) -> None:
    """A folder left by an earlier attempt of the same job (same inputs): cancel what ran there, start afresh."""
    old = _read_json(os.path.join(job_dir, RECORD)) or {}
    old_id = old.get("job_id") or _read_file(os.path.join(job_dir, JOB_ID_FILE))
    if old_id and active(old_id):
        cancel(old_id)
    _remove(job_dir)


def _read_file(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _remove(job_dir: str) -> None:
    if not os.path.lexists(job_dir):
        return
    if not JOB_DIR_NAME.match(os.path.basename(os.path.normpath(job_dir))):
        raise SubmitError(f"refusing to remove {job_dir}: not a job folder (<name>-<8 hex>)")
    try:
        shutil.rmtree(job_dir)
    except OSError as exc:
        raise SubmitError(f"cannot remove the job folder {job_dir}: {exc.strerror or exc}") from None
    if os.path.lexists(job_dir):
        raise SubmitError(f"cannot remove the job folder {job_dir}: it is still there")


def submit(args) -> int:
    job_dir = os.path.abspath(args.job_dir)
    script = _script_text(args)
    name = args.name or os.path.basename(job_dir).rsplit("-", 1)[0]
    parent = os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    job_id, guard, state = None, None, None
    try:
        _clear(job_dir)
        os.makedirs(job_dir)
        path = os.path.join(job_dir, "job.sh")
        with open(path, "w") as fh:
            fh.write(script)
        os.chmod(path, 0o755)
        # No signal may land between sbatch accepting the job and this process knowing its id.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            submitted_at = time.time()
            out = sh(["sbatch", "--parsable", path], timeout=120)
            if out.returncode != 0:
                raise SubmitError(f"sbatch refused {path}: {(out.stderr or out.stdout).strip()}")
            job_id = out.stdout.strip().splitlines()[-1].split(";")[0]
            with open(os.path.join(job_dir, JOB_ID_FILE), "w") as fh:
                fh.write(job_id + "\n")
            guard = start_guard(job_id, job_dir)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        _say(f"job {job_id} submitted ({name}), folder {job_dir}")
        deadline = time.monotonic() + args.timeout
        last_said, unknown, record, stuck_since = time.monotonic(), 0, None, None
        while True:
            record = job_record(job_id)
            if record is None:
                unknown += 1
                if unknown > 10:
                    raise SubmitError(f"SLURM job {job_id} is unknown to scontrol and sacct")
            else:
                unknown = 0
                stuck_since = (stuck_since or time.monotonic()) if stuck_on_nodes(record) else None
                if stuck_since and time.monotonic() - stuck_since > args.nodes_down_grace:
                    why = record["reason"] if record["reason"] not in ("", "None") else "no reason given"
                    cancel(job_id)
                    raise SubmitError(
                        f"SLURM job {job_id} ({name}) cannot run: its nodes are down "
                        f"({'requeued ' + str(record['restarts']) + 'x after a node failure, ' if record['restarts'] else ''}"
                        f"{why}) for {args.nodes_down_grace:.0f} s; cancelled it. Folder {job_dir}", code=4)
                if record["state"] != state or time.monotonic() - last_said > args.heartbeat:
                    state, last_said = record["state"], time.monotonic()
                    _say(f"job {job_id} {state}{' on ' + record['node'] if record['node'] else ''}"
                         f"{' (' + record['reason'] + ')' if record['reason'] not in ('', 'None') else ''}")
                if record["state"] in TERMINAL:
                    break
            if time.monotonic() > deadline:
                cancel(job_id)
                raise SubmitError(f"SLURM job {job_id} ({name}) still {state or 'unknown'} after "
                                  f"{args.timeout:.0f} s; cancelled it. Folder {job_dir}", code=3)
            if os.getppid() != parent:
                raise Interrupted("its parent process went away (connection dropped)", 129)
            if args.watch_stdin:
                ready, _, _ = select.select([sys.stdin], [], [], args.poll)
                if ready and not os.read(sys.stdin.fileno(), 4096):
                    raise Interrupted("stdin closed (connection dropped)", 129)
            else:
                time.sleep(args.poll)
        log_path = os.path.join(job_dir, f"slurm-{job_id}.out")
        full = {"job_id": job_id, "name": name, "state": record["state"], "exit_code": record["exit_code"],
                "node": record["node"], "reason": record["reason"],
                "elapsed_seconds": elapsed_seconds(record["run_time"]) if record["run_time"] else None,
                "submitted_at": submitted_at, "slurm_submit_time": record["submit_time"],
                "slurm_start_time": record["start_time"], "slurm_end_time": record["end_time"],
                "slurm_submit_to_start_seconds": (record["start_time"] - record["submit_time"]
                                                  if record["start_time"] and record["submit_time"] else None),
                "job_dir": job_dir, "log_path": log_path, "metrics_file": not args.no_metrics}
        _write_json(os.path.join(job_dir, RECORD), full)
        stop_guard(guard)
        guard = None
        return _print(job_dir, full)
    except Interrupted as why:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a second signal must not stop the cancel
            signal.signal(sig, signal.SIG_IGN)
        if job_id:
            last = cancel(job_id)
            _write_json(os.path.join(job_dir, RECORD), {
                "job_id": job_id, "name": name, "state": (last or {}).get("state", "CANCELLED"),
                "exit_code": (last or {}).get("exit_code", ""), "node": (last or {}).get("node", ""),
                "reason": f"cancelled by slurm_submit: {why.why}", "job_dir": job_dir,
                "log_path": os.path.join(job_dir, f"slurm-{job_id}.out")})
        _try_say(f"interrupted ({why.why}); {'cancelled job ' + job_id if job_id else 'nothing was submitted'}")
        return why.code
    except BaseException:
        if job_id and not os.path.exists(os.path.join(job_dir, RECORD)):
            cancel(job_id)  # whatever went wrong here, no job of ours keeps running unwatched
        raise
    finally:
        stop_guard(guard)


def _try_say(text: str) -> None:
    try:
        _say(text)
    except Interrupted:
        pass


def _print(job_dir: str, record: dict) -> int:
    doc = document(job_dir, record)
    if not succeeded(record):
        sys.stderr.write(failure_message(record) + "\n")
        if doc["log_tail"]:
            sys.stderr.write(f"last lines of {record['log_path']}:\n{doc['log_tail']}\n")
        return 1
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    return 0


def show(args) -> int:
    job_dir = os.path.abspath(args.job_dir)
    record = _read_json(os.path.join(job_dir, RECORD))
    if record is None:
        raise SubmitError(f"no job record at {os.path.join(job_dir, RECORD)}: the job folder was removed or never "
                          "finished; replace the resource (pulumi up --replace) to run the job again")
    return _print(job_dir, record)


def delete(args) -> int:
    previous = {}
    try:
        previous = json.loads(os.environ.get("PULUMI_COMMAND_STDOUT") or "{}")
    except ValueError:
        pass
    job_dir = os.path.abspath(args.job_dir or previous.get("job_dir") or "")
    if not (args.job_dir or previous.get("job_dir")):
        raise SubmitError("delete: no --job-dir and no job folder in PULUMI_COMMAND_STDOUT")
    job_id = (previous.get("job_id") if previous.get("job_dir") in (None, job_dir) else None) \
        or (_read_json(os.path.join(job_dir, RECORD)) or {}).get("job_id") \
        or _read_file(os.path.join(job_dir, JOB_ID_FILE))
    if job_id and active(job_id):
        record = cancel(job_id)
        sys.stderr.write(f"slurm_submit: cancelled job {job_id} ({(record or {}).get('state', '?')})\n")
    _remove(job_dir)
    return 0


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_submit.py", description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("submit")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--name")
    p.add_argument("--script", help="the job script's file; '-' or nothing: stdin")
    p.add_argument("--script-b64", help="the job script, base64")
    p.add_argument("--timeout", type=float, default=3600, help="queue wait + run, seconds; then scancel")
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between progress lines on stderr")
    p.add_argument("--nodes-down-grace", type=float, default=60.0,
                   help="seconds a job may wait on down nodes (or after a requeue for a node failure); then scancel")
    p.add_argument("--no-metrics", action="store_true", help="the job writes no metrics.json")
    p.add_argument("--watch-stdin", action="store_true", help="stdin stays open; its end cancels the job")
    for mode in ("show", "delete"):
        q = modes.add_parser(mode)
        q.add_argument("--job-dir", required=(mode == "show"))
    args = parser.parse_args(argv)
    try:
        return {"submit": submit, "show": show, "delete": delete}[args.mode](args)
    except SubmitError as exc:
        sys.stderr.write(f"slurm_submit: {exc}\n")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
