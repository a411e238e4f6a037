"""MLOPS-3.1: Oumi reaches the site's SLURM cluster over ssh as a user's laptop would, and `pulumi up` launches a
job there with `oumi launch up`, waits for it, and brings back its status, log and output files.

The laptop side is this machine: the stack writes a per-stack ssh config (a Host entry with the login node's
host, port, user, known hosts and the key, the key a Pulumi secret written 0600 only for the launch), a site file
and an OUMI_EXTRA_DEPS_FILE naming workloads/oumi_cloud.py, which registers the `mlops_slurm` cloud (Oumi's own
slurm client and cluster, pointed at that ssh config; the site's partition, GRES and Apptainer image). Nothing
is written to ~/.ssh. The ssh master connection (ControlMaster) that Oumi's client reuses is opened by the stack
(that is the connect time), has a ControlPersist bound, and is closed at the end of every create and delete,
success or failure; `ssh_master_closed` is checked on the master *process* (its pid, from `ssh -O check` when it
was opened, gone from /proc), not on its socket file, which closing removes either way.

Job files (configs, data) travel in Oumi's working_dir (rsync); results are written to a folder on shared storage
and copied back to reports/<stack>/oumi/<name>/ with their sha256 checked against the cluster's.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pulumi
import yaml
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider

from stacks.slurm import jobs
from stacks.slurm.jobs import TERMINAL, succeeded
from stacks.slurm.remote import ClusterError, ClusterUnreachable, Connection, removal_script
from stacks.slurm.staging import sha256_file

REPO = Path(__file__).resolve().parents[2]
CLOUD_MODULE = REPO / "workloads" / "oumi_cloud.py"
EVAL_MODULE = REPO / "workloads" / "oumi_eval.py"
TRAIN_CONFIG = REPO / "workloads" / "oumi" / "smollm2_sft.yaml"
CLOUD = "mlops_slurm"
RETRIEVE_MAX_BYTES = 20 * 1024 * 1024  # bigger outputs (model weights) stay on shared storage, listed with sha256


# -- the laptop side: ssh config, site file, master connection ----------------------------------------------------
@dataclass(frozen=True)
class OumiSite:
    """Files in `folder` that make Oumi reach one login node: an ssh Host entry and the mlops_slurm site."""

    folder: Path
    alias: str  # the ssh Host entry's name
    user: str

    @property
    def cluster(self) -> str:
        return f"{self.user}@{self.alias}"

    @property
    def ssh_config(self) -> Path:
        return self.folder / "ssh_config"

    @property
    def key_file(self) -> Path:
        return self.folder / "id"

    @property
    def control_path(self) -> Path:  # short: a unix socket path must stay under 108 bytes
        return self.folder / "cm"

    @property
    def site_file(self) -> Path:
        return self.folder / "site.json"

    @property
    def deps_file(self) -> Path:
        return self.folder / "oumi_extra_deps.txt"

    @property
    def master_pid_file(self) -> Path:  # the master process's pid, recorded when it was opened
        return self.folder / "master.pid"

    def ssh(self, *args: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-S", str(self.control_path), *args]

    def env(self) -> dict:
        """Environment of the `oumi` commands run here."""
        return {**os.environ, "OUMI_EXTRA_DEPS_FILE": str(self.deps_file), "MLOPS_OUMI_SITE": str(self.site_file),
                "DO_NOT_TRACK": "1", "COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}


def ssh_config_text(alias: str, conn: Connection, key_file: Path) -> str:
    """The Host entry a user would put in ~/.ssh/config for the login node (here in a per-stack file)."""
    lines = [f"Host {alias}", f"  HostName {conn.host}", f"  Port {conn.port}", f"  User {conn.user}",
             f"  IdentityFile {key_file}", "  IdentitiesOnly yes", "  BatchMode yes",
             f"  ConnectTimeout {conn.connect_timeout}", "  ServerAliveInterval 15", "  ServerAliveCountMax 4",
             "  LogLevel ERROR"]
    if conn.known_hosts:
        lines += [f"  UserKnownHostsFile {conn.known_hosts}", "  StrictHostKeyChecking yes"]
    else:
        lines += ["  StrictHostKeyChecking accept-new"]
    return "\n".join(lines) + "\n"


def write_site(folder: Path, alias: str, conn: Connection, partition: str, gres: Optional[str],
               apptainer_image: Optional[str] = None, apptainer_binds: Optional[list] = None) -> OumiSite:
    if conn.kind != "ssh":
        raise ClusterError("Oumi reaches the cluster over ssh only: set hpc.embedded.submitVia: ssh "
                           "(or hpc.target: ssh)")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    site = OumiSite(folder=folder, alias=alias, user=conn.user)
    if conn.private_key:
        fd = os.open(site.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(conn.private_key.rstrip("\n") + "\n")
    site.ssh_config.write_text(ssh_config_text(alias, conn, site.key_file))
    site.site_file.write_text(json.dumps({
        "clusters": [site.cluster], "ssh_config": str(site.ssh_config), "control_path": str(site.control_path),
        "partition": partition, "gres": gres, "apptainer_image": apptainer_image,
        "apptainer_binds": apptainer_binds or []}, indent=2))
    site.deps_file.write_text(f"{CLOUD_MODULE}\n")
    return site


def open_master(site: OumiSite, where: str, persist_s: int) -> float:
    """Open the ssh master connection Oumi's client will reuse; returns the seconds it took (the connect time).
    ControlPersist bounds its life even if this process dies before closing it."""
    close_master(site)  # a master left by an interrupted run would hide a wrong key
    site.master_pid_file.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(site.ssh("-f", "-N", "-M", "-o", f"ControlPersist={persist_s}", site.cluster),
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise ClusterUnreachable(f"oumi: cannot reach the cluster at {where} over ssh: no answer within 120 s") from None
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"ssh exited {proc.returncode}"
        raise ClusterUnreachable(f"oumi: cannot reach the cluster at {where} over ssh: {last}")
    pid = master_check(site)
    if pid is not None:
        site.master_pid_file.write_text(f"{pid}\n")
    return seconds


_MASTER_PID = re.compile(r"pid=(\d+)")


def master_check(site: OumiSite) -> Optional[int]:
    """`ssh -O check`: the master's pid while one answers on the control socket, else None."""
    if not site.ssh_config.exists() or not site.control_path.exists():
        return None
    proc = subprocess.run(site.ssh("-O", "check", site.cluster), capture_output=True, text=True, timeout=30)
    found = _MASTER_PID.search(proc.stderr + proc.stdout)
    return int(found.group(1)) if proc.returncode == 0 and found else None


def process_alive(pid: Optional[int]) -> bool:
    """Whether the process runs (a zombie, or a pid no longer there, does not)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def recorded_master_pid(site: OumiSite) -> Optional[int]:
    try:
        return int(site.master_pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_master_process(site: OumiSite, pid: Optional[int]) -> bool:
    """`pid` runs and is this site's ssh master (its command line names the control socket): a pid the system has
    since given to another process is not."""
    if not process_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(site.control_path).encode() in argv


def master_alive(site: OumiSite) -> bool:
    """The master process recorded when it was opened still runs, or a master answers on the control socket."""
    return is_master_process(site, recorded_master_pid(site)) or master_check(site) is not None


def close_master(site: OumiSite) -> None:
    """`ssh -O exit`, then wait for the master process itself to end (TERM, then KILL, if it does not)."""
    pid = master_check(site) or recorded_master_pid(site)
    if site.ssh_config.exists() and site.control_path.exists():
        subprocess.run(site.ssh("-O", "exit", site.cluster), capture_output=True, timeout=30)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and is_master_process(site, pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if not is_master_process(site, pid):
                break
            time.sleep(0.1)
        if not is_master_process(site, pid):
            break
    for _ in range(20):  # the master removes its socket as it exits
        if not site.control_path.exists():
            break
        time.sleep(0.1)
    site.control_path.unlink(missing_ok=True)


def master_closed(site: OumiSite, pid: Optional[int]) -> bool:
    """Measured after the close: the master process is gone and nothing answers on the control socket."""
    return pid is not None and not is_master_process(site, pid) and master_check(site) is None


def remote(site: OumiSite, script: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """A bash script on the login node through the same ssh config and master connection Oumi uses."""
    try:
        proc = subprocess.run(site.ssh(site.cluster, "bash -c " + shlex.quote(script)), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"oumi: command on {site.cluster} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise ClusterError(f"oumi: command on {site.cluster} exited {proc.returncode}: "
                           f"{script.strip().splitlines()[0][:100]}\n{proc.stderr.strip()[-1500:]}")
    return proc


# -- one launch ---------------------------------------------------------------------------------------------------
def job_config(name: str, user: str, working_dir: Path, run: str, cpus: int, time_limit_minutes: int,
               envs: dict) -> dict:
    """An Oumi JobConfig for the mlops_slurm cloud."""
    return {"name": name, "user": user, "num_nodes": 1, "working_dir": str(working_dir),
            "resources": {"cloud": CLOUD, "cpus": str(cpus)},
            "envs": {"DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **envs},
            "setup": f"#SBATCH --time={time_limit_minutes}\n", "run": run}


_QUEUED = re.compile(r"Job (\S+) queued on cluster")
_FINISHED = re.compile(r"Job (\S+) finished with status (\S+)")


def parse_launch_output(text: str) -> dict:
    """Job id and final status from `oumi launch up`'s console output."""
    queued, finished = _QUEUED.search(text), _FINISHED.search(text)
    return {"job_id": queued.group(1) if queued else None, "oumi_status": finished.group(2) if finished else None}


def launch_up(site: OumiSite, launcher_python: str, job_file: Path, log_file: Path, timeout_s: float) -> dict:
    """`oumi launch up` (waits for the job, tails its log into log_file). Killed with its children on timeout."""
    argv = [launcher_python, "-m", "oumi", "launch", "up", "-c", str(job_file), "--cluster", site.cluster,
            "--output-filepath", str(log_file)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=site.env(),
                            cwd=str(job_file.parent), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    return {**parse_launch_output(out), "returncode": proc.returncode, "timed_out": timed_out,
            "seconds": round(time.monotonic() - started, 2), "output": out}


def job_record(site: OumiSite, job_id: str) -> dict:
    """SLURM's view of the job (epoch times): state, exit code, submit/start/end, where it ran from
    (stacks/slurm/jobs.py, through the same ssh config and master connection Oumi uses)."""
    try:
        return jobs.job_record(lambda script: remote(site, script, check=False), job_id, site.cluster)
    except ClusterError as exc:
        raise ClusterError(f"oumi: {exc}") from None


def wait_until_done(site: OumiSite, job_id: str, deadline: float, poll_s: float = 2.0) -> dict:
    while True:
        record = job_record(site, job_id)
        if record["state"] in TERMINAL or time.monotonic() > deadline:
            return record
        time.sleep(poll_s)


def remote_listing(site: OumiSite, folder: str) -> list[dict]:
    """Every file under the remote folder with its size and sha256, computed on the cluster."""
    q = shlex.quote(folder)
    out = remote(site, f"cd {q} && find . -type f -printf '%s %P\\n' | sort -k2 && echo --- && "
                       f"find . -type f -print0 | sort -z | xargs -0 -r sha256sum", timeout=600).stdout
    sizes_part, _, sums_part = out.partition("---\n")
    sizes = {}
    for line in sizes_part.splitlines():
        size, name = line.split(" ", 1)
        sizes[name] = int(size)
    files = []
    for line in sums_part.splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.removeprefix("./")
        files.append({"name": name, "bytes": sizes.get(name), "sha256": digest})
    return files


def retrieve(site: OumiSite, remote_dir: str, local_dir: Path, max_bytes: int = RETRIEVE_MAX_BYTES) -> list[dict]:
    """Copy the folder's files up to max_bytes back with rsync (through the same ssh config), and check each one's
    sha256 against the cluster's. Larger files stay on shared storage and are listed with their remote sha256."""
    files = remote_listing(site, remote_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    small = [f for f in files if (f["bytes"] or 0) <= max_bytes]
    if small:
        list_file = local_dir.parent / f".{local_dir.name}.files"
        list_file.write_text("".join(f["name"] + "\n" for f in small))
        shell = " ".join(shlex.quote(a) for a in site.ssh())
        proc = subprocess.run(["rsync", "-a", "--files-from", str(list_file), "-e", shell,
                               f"{site.cluster}:{remote_dir.rstrip('/')}/", str(local_dir) + "/"],
                              capture_output=True, text=True, timeout=600)
        list_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise ClusterError(f"oumi: rsync of {remote_dir} from {site.cluster} failed: {proc.stderr.strip()[-1500:]}")
    for f in files:
        path = local_dir / f["name"]
        f["retrieved"] = f in small and path.is_file()
        f["intact"] = f["retrieved"] and sha256_file(path) == f["sha256"]
        if f["retrieved"]:
            f["local_path"] = str(path)
    return files


def fetch_file(site: OumiSite, remote_path: str, local_path: Path) -> Optional[str]:
    out = remote(site, f"cat {remote_path}", check=False, timeout=120)  # remote_path may hold $HOME
    if out.returncode != 0:
        return None
    local_path.parent.mkdir(parents=True, exist_ok=True)
    local_path.write_text(out.stdout)
    return out.stdout


def leftovers(remote_root: Optional[str], out_dir: Optional[str], work_dir: Optional[str],
              job_id: Optional[str]) -> list[tuple[str, str]]:
    """What one launch leaves on the cluster, each as (path, the folder it must lie in), both shell words: the
    output folder under <root>/oumi, Oumi's copy of the working folder (scontrol's WorkDir, so never trusted as it
    is) under ~/oumi_launcher, and the job's log under ~/oumi_slurm_logs."""
    found = []
    if out_dir and remote_root:
        found.append((shlex.quote(out_dir), shlex.quote(f"{remote_root}/oumi")))
    if work_dir:
        found.append((shlex.quote(work_dir), '"$HOME"/oumi_launcher'))
    if job_id:
        found.append((f'"$HOME"/oumi_slurm_logs/{shlex.quote(job_id + ".out")}', '"$HOME"/oumi_slurm_logs'))
    return found


def cleanup_remote(site: OumiSite, job_id: Optional[str], removals: list[tuple[str, str]]) -> None:
    """Cancel the job if SLURM still has it queued or running, and remove what the launch left on the cluster
    (each path only inside its own folder); ClusterError naming every path that is still there."""
    script = ["rc=0"]
    if job_id:
        j = shlex.quote(job_id)
        script.append(f"if squeue -h -j {j} -o %i 2>/dev/null | grep -q .; then scancel {j} || rc=1; fi")
    script += [f"( {removal_script(path, root)} ) || rc=1" for path, root in removals]
    proc = remote(site, "\n".join(script + ["exit $rc"]), check=False, timeout=600)
    if proc.returncode != 0:
        why = "; ".join(proc.stderr.strip().splitlines()[-5:]) or f"exit {proc.returncode}"
        raise ClusterError(f"oumi: cleanup on {site.cluster} failed (job {job_id or '-'}): {why}")


@contextmanager
def connected(folder: Path, alias: str, conn: Connection, partition: str, gres: Optional[str],
              image: Optional[str], binds: list, persist_s: int) -> Iterator[tuple[OumiSite, float]]:
    """The site files and an open master connection; afterwards, whatever happened, the master is closed and
    the key file removed (nothing secret stays on disk, no ssh process stays behind)."""
    site = write_site(folder, alias, conn, partition, gres, image, binds)
    try:
        yield site, open_master(site, conn.where, persist_s)
    finally:
        close_master(site)
        site.key_file.unlink(missing_ok=True)


def run_launch(props: dict) -> dict:
    """Write the job, launch it through Oumi, wait, collect; raises with the log tail if the job did not complete."""
    conn = Connection.from_props(props["connection"])
    name, run_id = props["name"], uuid.uuid4().hex[:8]
    folder = Path(props["local_dir"])
    shutil.rmtree(folder, ignore_errors=True)
    work = folder / "work"
    work.mkdir(parents=True)
    for rel, text in props["job_files"].items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    for rel, src in props.get("copies", {}).items():  # data files travel with the job (Oumi's working_dir)
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, work / rel)
    out_dir = f"{props['remote_root']}/oumi/{name}-{run_id}"
    run = props["run"].replace("@OUT@", out_dir)
    for rel in list(props["job_files"]):  # configs may name the output folder too
        path = work / rel
        path.write_text(path.read_text().replace("@OUT@", out_dir))
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_config(f"{name}-{run_id}", conn.user, work, run, int(props["cpus"]),
                                                  int(props["time_limit_minutes"]),
                                                  {**(props.get("env") or {}), "MLOPS_OUT": out_dir})))
    report_dir = Path(props["report_dir"])
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    timeout_s = int(props["time_limit_minutes"]) * 60 + 300
    alias = f"mlops-oumi-{props['stack']}"
    with connected(folder / "ssh", alias, conn, props["partition"], props.get("gres"), props.get("container_image"),
                   props.get("binds") or [], persist_s=timeout_s + 300) as (site, connect_s):
        started = time.monotonic()
        launched = launch_up(site, props["launcher_python"], job_file, report_dir / "oumi_launch_logs.txt", timeout_s)
        (report_dir / "oumi_launch_console.txt").write_text(launched["output"])
        job_id = launched["job_id"]
        if job_id is None:
            tail = "\n".join(launched["output"].strip().splitlines()[-15:])
            raise ClusterError(f"oumi launch up ({name}) submitted no job (exit {launched['returncode']}"
                               f"{', timed out' if launched['timed_out'] else ''}):\n{tail}")
        # Oumi stops tailing (and returns) when the log file has not appeared after ~75 s, e.g. while the job
        # waits in the queue: then SLURM is asked until the job ends, within the same time limit.
        record = wait_until_done(site, job_id, started + timeout_s)
        # Measured from the job's final state, failed or not: 1 only for COMPLETED with exit code 0.
        job_completed = int(succeeded(record))
        remote_log = f"$HOME/oumi_slurm_logs/{job_id}.out"
        local_log = report_dir / f"slurm-{job_id}.out"
        slurm_log = fetch_file(site, remote_log, local_log) or ""
        # A failed launch is no resource, so `pulumi destroy` would never clean it: cancel and remove it now
        # (its log stays here, in the reports folder).
        left = leftovers(props["remote_root"], out_dir, record["work_dir"], job_id)
        failure, files = None, []
        if launched["timed_out"] or record["state"] not in TERMINAL:
            failure = (f"oumi: job {job_id} ({name}) did not end within {timeout_s} s (still {record['state']}); "
                       f"cancelled it. Log: {local_log}")
        elif not job_completed:
            tail = "\n".join(slurm_log.strip().splitlines()[-25:])
            failure = (f"oumi: SLURM job {job_id} ({name}) launched by `oumi launch up` ended "
                       f"{record['state']} with exit code {record['exit_code']} ({record['reason']}). "
                       f"Log {local_log}, last lines:\n{tail}")
        if failure:
            try:
                cleanup_remote(site, job_id, left)
            except ClusterError as exc:  # said with the failure, which stays the reason
                failure += f"\n{exc}"
        else:
            files = retrieve(site, out_dir, report_dir / "output")
        master_pid = recorded_master_pid(site)
        still_open = is_master_process(site, master_pid)
    closed = master_closed(site, master_pid)
    outs = {"job_id": job_id, "run_id": run_id, "out_dir": out_dir, "remote_work_dir": record["work_dir"],
            "connect_seconds": round(connect_s, 3), "oumi_launch_seconds": launched["seconds"],
            "oumi_status": launched["oumi_status"], "oumi_exit_code": launched["returncode"],
            "final_state": record["state"], "exit_code": record["exit_code"], "job_completed": job_completed,
            "submit_to_start_seconds": record["submit_to_start_seconds"], "run_seconds": record["run_seconds"],
            "files": files, "cluster": site.cluster, "master_pid": master_pid,
            "master_was_open": still_open, "ssh_master_closed": closed}
    # The figures, failed or not, beside the log in the reports folder.
    (report_dir / "launch_result.json").write_text(json.dumps({k: v for k, v in outs.items() if k != "files"},
                                                              indent=1))
    if failure:
        # A failed create exports nothing, so the measured figures travel in the error (and launch_result.json).
        raise ClusterError(f"{failure}\nmeasured: job_completed={job_completed} final_state={record['state']} "
                           f"exit_code={record['exit_code']} ssh_master_closed={int(closed)} "
                           f"(also in {report_dir / 'launch_result.json'})")
    return outs


def remove_launch(props: dict) -> None:
    """`pulumi destroy`: cancel the job if it is still there, remove its folders on the cluster and here. A
    cluster that cannot be reached, or a folder that cannot be removed, fails the destroy naming it (what a
    launch leaves on shared storage outlives the cluster's daemons)."""
    folder = Path(props["local_dir"])
    conn = Connection.from_props(props["connection"])
    job_id = props.get("job_id")
    try:
        with connected(folder / "ssh", f"mlops-oumi-{props['stack']}", conn, props["partition"], props.get("gres"),
                       None, [], persist_s=120) as (site, _):
            cleanup_remote(site, job_id, leftovers(props.get("remote_root"), props.get("out_dir"),
                                                   props.get("remote_work_dir"), job_id))
    except ClusterError as exc:  # `connected` has closed the master connection, whatever happened
        remove_local(folder, strict=False)
        left = [props.get("out_dir"), props.get("remote_work_dir")]
        raise ClusterError(f"{exc} (left on {conn.where}: {', '.join(p for p in left if p) or 'nothing named'})"
                           ) from None
    remove_local(folder)


# -- the Pulumi resource ------------------------------------------------------------------------------------------
def remove_local(folder: Path, strict: bool = True) -> None:
    """This launch's folder here, and its parents up to the stack's state folder when they are left empty;
    strict: an OSError naming the folder where it cannot be removed."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if strict:
            raise OSError(f"cannot remove {folder}: {exc.strerror or exc}") from None
    for parent in (folder.parent, folder.parent.parent):  # <state_dir>/oumi, <state_dir>
        try:
            parent.rmdir()
        except OSError:
            break


class _OumiLaunchProvider(ReplacingProvider):
    settings_only = ("connection",)

    def create(self, props: dict) -> CreateResult:
        try:
            outs = run_launch(props)
        except Exception:
            remove_local(Path(props["local_dir"]), strict=False)  # a failed create is no resource: destroy will not see it
            raise
        return CreateResult(id_=f"{props['name']}-{outs['run_id']}", outs={**props, **outs})

    def delete(self, _id: str, props: dict) -> None:
        remove_launch(props)


_OUTPUTS = ("job_id", "run_id", "out_dir", "remote_work_dir", "connect_seconds", "oumi_launch_seconds",
            "oumi_status", "oumi_exit_code", "final_state", "exit_code", "job_completed", "submit_to_start_seconds",
            "run_seconds", "files", "cluster", "master_pid", "master_was_open", "ssh_master_closed")
# An input can't also be listed as an output (the output's None would replace it); report_dir is both.
EXPORTED = (*_OUTPUTS, "report_dir")


class OumiLaunchedJob(Resource, module="mlops", name="OumiLaunchedJob"):
    job_id: pulumi.Output[str]
    out_dir: pulumi.Output[str]
    files: pulumi.Output[list]

    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_OumiLaunchProvider(), name, {**props, **dict.fromkeys(_OUTPUTS)}, opts)


@dataclass
class OumiSiteArgs:
    """Where Oumi jobs go and how they are reached; built once in __main__."""

    connection: pulumi.Input[dict]  # stacks/remote.py Connection fields; secret (the key)
    cluster_id: pulumi.Input[str]
    root: pulumi.Input[str]  # this stack's folder on shared storage
    stack: str
    state_dir: str  # this machine's folder for the stack (ssh config, job files)
    datasets_dir: str
    launcher_python: str  # the laptop side's python with oumi
    cluster_python: str  # the cluster side's python with oumi
    partition: str
    gres: Optional[str]
    cpus: int
    container_image: Optional[str] = None
    time_limit_minutes: int = 30
    env: dict = field(default_factory=dict)  # extra environment of the jobs (e.g. OMP_NUM_THREADS)


def launch(name: str, site: OumiSiteArgs, files: dict, copies: dict, run: pulumi.Input[str],
           triggers: list, opts: Optional[pulumi.ResourceOptions] = None) -> OumiLaunchedJob:
    """One `oumi launch up` as a resource. `files` (name -> text) and `copies` (name -> local path) make the
    job's working_dir; '@OUT@' in `run` and in the files is the job's output folder on shared storage."""
    props = {"name": name, "stack": site.stack, "connection": site.connection, "cluster_id": site.cluster_id,
             "remote_root": site.root, "local_dir": f"{site.state_dir}/oumi/{name}",
             "report_dir": str(REPO / "reports" / site.stack / "oumi" / name),
             "launcher_python": site.launcher_python, "partition": site.partition, "gres": site.gres,
             "cpus": site.cpus, "container_image": site.container_image,
             "binds": [] if not site.container_image else [site.root], "env": site.env,
             "time_limit_minutes": site.time_limit_minutes, "job_files": files, "copies": copies, "run": run,
             "triggers": triggers}
    return OumiLaunchedJob(name, props, opts)


def checked_copies(datasets_dir: str, names: list[str]) -> tuple[dict, str]:
    """Dataset files (relative to datasets_dir) checked against its SHA256SUMS; returns name -> path and a digest."""
    from stacks.slurm.staging import check_against_sums

    root = Path(datasets_dir)
    sums = check_against_sums(root, root / "SHA256SUMS", names)
    digest = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]
    return {name: str(root / name) for name in names}, digest


def file_summary(files: list) -> dict:
    """What the stack exports about the retrieved files."""
    retrieved = [f for f in files if f.get("retrieved")]
    return {"retrieved": [{"name": f["name"], "bytes": f["bytes"], "sha256": f["sha256"]} for f in retrieved],
            "left_on_cluster": [{"name": f["name"], "bytes": f["bytes"], "sha256": f["sha256"]}
                                for f in files if not f.get("retrieved")],
            "all_intact": int(bool(retrieved) and all(f["intact"] for f in retrieved))}


# -- MLOPS-3.1: a short fine-tune launched through Oumi -----------------------------------------------------------
def smoke_train_config(base: dict, model_dir: str, steps: int, batch_size: int, max_length: int) -> dict:
    """The training issue's config (workloads/oumi/smollm2_sft.yaml) with small overrides: the base model, the job's
    copies of the training files, a few steps, no validation split, output on shared storage."""
    cfg = json.loads(json.dumps(base))
    cfg["model"].update(model_name=model_dir, model_max_length=max_length)
    for ds in cfg["data"]["train"]["datasets"]:
        ds["dataset_path"] = "sft/" + Path(ds["dataset_path"]).name
    cfg["data"].pop("validation", None)
    cfg["training"].update(output_dir="@OUT@/model", max_steps=steps, per_device_train_batch_size=batch_size,
                           eval_strategy="no", save_final_model=True, logging_steps=1, dataloader_num_workers=0)
    return cfg


def training_paths(base: dict) -> list[str]:
    """The training files (as sft/<name>) of the training config; never the held-out sft/eval/ set."""
    paths = [ds["dataset_path"] for ds in base["data"]["train"]["datasets"]]
    if any("eval" in Path(p).parts for p in paths):
        raise ValueError("the Oumi training config names held-out data (sft/eval/)")
    return ["sft/" + Path(p).name for p in paths]


@dataclass
class OumiLaunchArgs:
    base_model_dir: pulumi.Input[str]  # HF model folder on shared storage
    steps: int = 4
    batch_size: int = 4
    max_length: int = 128


class OumiLaunch(pulumi.ComponentResource):
    """MLOPS-3.1: `oumi launch up` of a short SmolLM2 fine-tune on the site's SLURM cluster over ssh."""

    def __init__(self, name: str, site: OumiSiteArgs, args: OumiLaunchArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:oumi:Launch", name, None, opts)
        base = yaml.safe_load(TRAIN_CONFIG.read_text())
        copies, data_digest = checked_copies(site.datasets_dir, training_paths(base))
        files = pulumi.Output.from_input(args.base_model_dir).apply(lambda model: {
            "oumi_train.yaml": yaml.safe_dump(smoke_train_config(base, model, args.steps, args.batch_size,
                                                                 args.max_length), sort_keys=False)})
        py = shlex.quote(site.cluster_python)
        run = (f"set -euo pipefail\nmkdir -p @OUT@\n"
               f"{py} -m oumi train -c oumi_train.yaml\n"
               f"cp @OUT@/model/trainer_state.json @OUT@/ 2>/dev/null || true\n"
               f"{py} -c 'import json,sys; s=json.load(open(sys.argv[1])); "
               f"json.dump([h for h in s[\"log_history\"]], open(sys.argv[2], \"w\"), indent=1)' "
               f"@OUT@/model/trainer_state.json @OUT@/train_log_history.json || true\n")
        self.job = launch(f"{name}-job", site, files, copies, run,
                          triggers=[data_digest, TRAIN_CONFIG.read_text(), CLOUD_MODULE.read_text()],
                          opts=pulumi.ResourceOptions(parent=self))
        self.model_dir: pulumi.Output[str] = self.job.out_dir.apply(lambda d: f"{d}/model")
        self.metrics: pulumi.Output[dict] = pulumi.Output.all(
            *(getattr(self.job, k) for k in EXPORTED)).apply(lambda v: launch_metrics(dict(zip(EXPORTED, v))))
        self.register_outputs({"metrics": self.metrics, "model_dir": self.model_dir})


def launch_metrics(o: dict) -> dict:
    """The flat figures the targets name, from one launch's outputs."""
    files = o.get("files") or []
    history = _history(files)
    losses = [h["loss"] for h in history if isinstance(h.get("loss"), (int, float))]
    return {"connect_seconds": o["connect_seconds"], "submit_to_start_seconds": o["submit_to_start_seconds"],
            "final_state": o["final_state"], "oumi_status": o["oumi_status"], "slurm_job_id": o["job_id"],
            "exit_code": o["exit_code"],
            "job_completed": o["job_completed"] if o.get("job_completed") is not None else
            int(o["final_state"] == "COMPLETED" and str(o["exit_code"]).startswith("0:")),
            "oumi_launch_seconds": o["oumi_launch_seconds"], "run_seconds": o["run_seconds"],
            "ssh_master_closed": int(bool(o["ssh_master_closed"])), "cluster": o["cluster"],
            "results": file_summary(files), "results_intact": file_summary(files)["all_intact"],
            "report_dir": o["report_dir"], "out_dir": o["out_dir"],
            "train_steps": len(losses), "train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None}


def _history(files: list) -> list:
    for f in files:
        if f["name"] == "train_log_history.json" and f.get("local_path"):
            try:
                return json.loads(Path(f["local_path"]).read_text())
            except (OSError, ValueError):
                return []
    return []
