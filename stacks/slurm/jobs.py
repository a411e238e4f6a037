"""The one place that asks SLURM about a job: `scontrol show job -o`, and `sacct` once the controller has purged it.

Plain Python, no Pulumi: the SLURM probe (stacks/slurm/probe.py) and the Oumi launch (stacks/oumi/launch.py) pass
their own way of running a command on the login node (`Connection.run`, or ssh through Oumi's master connection).
The parsing of SLURM's answers is the submit script's (workloads/slurm_submit.py, stdlib only, since it runs *on*
the login node): one parser for both sides.
"""
from __future__ import annotations

import shlex
import subprocess
from typing import Callable

from stacks.slurm.remote import ClusterError
# re-exported: the probe, the Oumi launch and the tests take them from here
from workloads.slurm_submit import TERMINAL, elapsed_seconds, epoch_seconds, parse_scontrol, succeeded  # noqa: F401

# run(script) -> CompletedProcess with text stdout/stderr; it must not raise on a non-zero exit.
Runner = Callable[[str], subprocess.CompletedProcess]


def _state(value: str) -> str:
    return (value or "UNKNOWN").split()[0].rstrip("+")  # sacct writes "CANCELLED by 0", "CANCELLED+"


def job_record(run: Runner, job_id: str, where: str = "the cluster") -> dict:
    """SLURM's view of the job, times as epoch seconds: state, exit code, node, reason, work dir, stdout path,
    submit/start/end, run time. Asks scontrol, then sacct (a site with slurmdbd, or the jobcomp file here)."""
    j = shlex.quote(job_id)
    out = run(f"SLURM_TIME_FORMAT=%s scontrol show job -o {j}")
    f = parse_scontrol(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    if not f:  # purged from the controller (MinJobAge)
        acct = run(f"SLURM_TIME_FORMAT=%s sacct -X -n -P -j {j} "
                   "-o State,ExitCode,NodeList,Elapsed,Submit,Start,End,WorkDir")
        parts = (acct.stdout.strip().splitlines() or [""])[0].split("|") if acct.returncode == 0 else []
        if len(parts) < 4 or not parts[0]:
            raise ClusterError(f"SLURM job {job_id} is unknown to scontrol and sacct on {where}: "
                               f"{(out.stderr or acct.stderr or '').strip()}")
        parts += [""] * (8 - len(parts))
        f = dict(zip(("JobState", "ExitCode", "NodeList", "RunTime", "SubmitTime", "StartTime", "EndTime",
                      "WorkDir"), parts))
    submit, start, end = (epoch_seconds(f.get(k)) for k in ("SubmitTime", "StartTime", "EndTime"))
    node = f.get("NodeList", "")
    return {"job_id": job_id, "state": _state(f.get("JobState", "")), "exit_code": f.get("ExitCode", ""),
            "node": "" if node in ("(null)", "None assigned") else node, "reason": f.get("Reason", ""),
            "run_time": f.get("RunTime", ""), "work_dir": f.get("WorkDir", ""), "stdout": f.get("StdOut", ""),
            "submit_time": submit, "start_time": start, "end_time": end,
            "submit_to_start_seconds": start - submit if submit is not None and start is not None else None,
            "run_seconds": end - start if start is not None and end is not None else None}


def job_status(run: Runner, job_id: str, where: str = "the cluster") -> dict:
    """The short form the SLURM probe uses: state, exit_code, node, run_time, reason."""
    r = job_record(run, job_id, where)
    return {k: r[k] for k in ("state", "exit_code", "node", "run_time", "reason")}
