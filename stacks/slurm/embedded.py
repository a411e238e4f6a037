"""The embedded default's HPC cluster: a real single-node SLURM (munge, slurmctld, slurmd with GPU GRES)
and an sshd on loopback that plays the login node, all as one Pulumi resource.

Create starts the daemons under a stack-specific state folder; delete cancels jobs and stops them by pid.
If the daemons died since the last `pulumi up` (a reboot, a fresh CI machine), diff asks for a replacement,
so an up restarts them instead of trusting stale state; it never starts a second set.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, Resource

from stacks.provider import ReplacingProvider

from stacks.local.process import port_free

DAEMONS = ("sshd", "slurmd", "slurmctld", "munged")  # stop order: the notes' order that left nothing behind
READY_TIMEOUT_S = 30


# -- process helpers (plain Python) ----------------------------------------------------------------
def _alive(pid: int) -> bool:
    # /proc/PID/stat, not kill -0: a zombie answers kill -0 but is gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _stop(pid: int, grace_s: float = 10.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            time.sleep(0.05)
    raise RuntimeError(f"daemon did not write its pid file {path} within {timeout_s:.0f} s")


def _run(argv: list[str], env: Optional[dict] = None, what: str = "") -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{what or argv[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Layout:
    """Where everything of one embedded cluster lives."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # etc, munge, slurm, ssh, spool, dev, log, shared
        if name.startswith("_"):
            raise AttributeError(name)
        return self.root / name

    @property
    def slurm_conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def pid_file(self, daemon: str) -> Path:
        return self.root / "run" / f"{daemon}.pid"


def _slurm_conf(lay: Layout, cluster: str, node_line: str, partition: str, gpus: int, port: int) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""# Written by mlops-validation (embedded default). See shared/notes/embedded-slurm.md.
ClusterName={cluster}
SlurmctldHost=localhost(127.0.0.1)
# Bind slurmd (NoInAddrAny) and slurmctld (NoCtldInAddrAny) to their own addresses (127.0.0.1), not to every
# interface.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort={port}
SlurmdPort={port + 1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={lay.munge}/munge.socket
CredType=cred/munge
StateSaveLocation={lay.slurm}/state
SlurmdSpoolDir={lay.spool}
SlurmctldPidFile={lay.pid_file("slurmctld")}
SlurmdPidFile={lay.pid_file("slurmd")}
SlurmctldLogFile={lay.log}/slurmctld.log
SlurmdLogFile={lay.log}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={lay.log}/jobcomp.txt
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
# A dead slurmd is noticed in seconds, not SLURM's 5 minutes: its jobs end NODE_FAIL and fail their submission.
SlurmdTimeout=20
SchedulerParameters=batch_sched_delay=0
{node_line}{gres} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


# On a GPU node the login sessions, and so the jobs (sbatch passes on the submitter's environment), get the node's GPU
# settings from the environment that started the cluster, as a site's login shell has them: where the driver's
# libraries are, NCCL's and the CUDA runtime's switches (not CUDA_VISIBLE_DEVICES: GRES sets it per job).
GPU_ENV_PREFIXES = ("LD_LIBRARY_PATH", "CUDA_", "NCCL_", "NVIDIA_", "NVSHMEM_", "TORCH_SYMM_MEM_")


def gpu_session_env(environ: Optional[dict] = None) -> str:
    """`SetEnv` words for sshd_config: the GPU settings of `environ` (values sshd could not quote are left out)."""
    environ = os.environ if environ is None else environ
    words = [f"{k}={v}" for k, v in sorted(environ.items())
             if k.startswith(GPU_ENV_PREFIXES) and k != "CUDA_VISIBLE_DEVICES" and v and not any(c in v for c in ' "\'\\\n')]
    return "".join(f" {w}" for w in words)


def nvidia_devices(gpu_model: str, wanted: int) -> list[str]:
    """The /dev/nvidiaN of every GPU that nvidia-smi lists, checked against the declared model and count."""
    try:
        listed = _run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"], what="nvidia-smi")
    except (FileNotFoundError, RuntimeError) as exc:
        raise RuntimeError(f"hpc.gpu is {gpu_model!r} but nvidia-smi cannot list this node's GPUs ({exc}); "
                           "set hpc.gpu to 'none' on a node without GPUs") from None
    gpus = [line.split(",", 1) for line in listed.splitlines() if line.strip()]
    wrong = sorted({name.strip() for _, name in gpus if gpu_model.lower() not in name.lower()})
    if wrong or len(gpus) < wanted:
        raise RuntimeError(f"hpc.gpu is {gpu_model!r} and hpc.gpusPerNode {wanted}, but nvidia-smi lists "
                           f"{len(gpus)} GPU(s){': ' + ', '.join(wrong) if wrong else ''}")
    devices = [f"/dev/nvidia{index.strip()}" for index, _ in gpus]
    missing = [dev for dev in devices if not Path(dev).exists()]
    if missing:
        raise RuntimeError(f"nvidia-smi lists GPUs whose device files are missing: {', '.join(missing)}")
    return devices


def start_cluster(state_dir: str, cluster: str, partition: str, gpus: int, base_port: int,
                  cpus: Optional[int] = None, gpu_model: Optional[str] = None) -> dict:
    """Start munged, slurmctld, slurmd and sshd; return what a client needs to use them. With `gpu_model` the
    node's GRES are its real GPUs (nvidia-smi), else `gpus` device nodes that stand in for them."""
    lay = Layout(Path(state_dir))
    stop_cluster(state_dir)  # whatever a crashed earlier run left: never a second set of daemons
    for port in (base_port, base_port + 1, base_port + 2):
        if not port_free(port):
            raise RuntimeError(f"port {port} on 127.0.0.1 is in use: choose another "
                               f"mlops-validation:hpc.embedded.basePort (ports basePort..basePort+2)")
    if os.geteuid() != 0:
        raise RuntimeError("the embedded cluster runs SLURM's daemons and must be started as root")
    # A GPU node: GRES bound to the real /dev/nvidia*, one per GPU that nvidia-smi lists (checked first).
    devices = nvidia_devices(gpu_model, gpus) if gpu_model else None
    try:
        return _start_daemons(lay, cluster, partition, gpus, base_port, cpus, gpu_model, devices)
    except BaseException:
        stop_cluster(state_dir)  # whatever started before the failure: nothing is left running
        raise


def _start_daemons(lay: Layout, cluster: str, partition: str, gpus: int, base_port: int, cpus: Optional[int],
                   gpu_model: Optional[str], devices: Optional[list[str]]) -> dict:
    shutil.rmtree(lay.root, ignore_errors=True)
    for d in ("etc", "munge", "slurm/state", "spool", "dev", "log", "run", "ssh", "shared"):
        (lay.root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(lay.munge, 0o755)  # munged refuses a 0700 socket directory

    # munge: a fresh key for this cluster only.
    key = lay.munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    _run(["/usr/sbin/munged", f"--socket={lay.munge}/munge.socket", f"--pid-file={lay.pid_file('munged')}",
          f"--log-file={lay.log}/munged.log", f"--seed-file={lay.munge}/munged.seed", f"--key-file={key}"],
         what="munged")

    if devices is None:
        # GRES on a GPU-less node: character devices with the NVIDIA major number give jobs CUDA_VISIBLE_DEVICES.
        devices = [str(lay.dev / f"fakegpu{i}") for i in range(gpus)]
        for i, dev in enumerate(devices):
            if not Path(dev).exists():
                _run(["mknod", dev, "c", "195", str(i)], what="mknod (needs root)")
    gpus = len(devices)
    node_line = _run(["/usr/sbin/slurmd", "-C"], what="slurmd -C").splitlines()[0]
    fields = dict(f.split("=", 1) for f in node_line.split())
    fields["RealMemory"] = str(int(int(fields["RealMemory"]) * 0.9))  # below real, or the node drains
    if cpus:
        fields.update(CPUs=str(cpus), CoresPerSocket=str(cpus), SocketsPerBoard="1", ThreadsPerCore="1")
    fields["NodeAddr"] = "127.0.0.1"  # slurmd listens there only (CommunicationParameters=NoInAddrAny)
    node_line = " ".join(f"{k}={v}" for k, v in fields.items())
    lay.slurm_conf.write_text(_slurm_conf(lay, cluster, node_line, partition, gpus, base_port))
    if gpus:
        (lay.etc / "gres.conf").write_text("".join(f"NodeName={fields['NodeName']} Name=gpu File={dev}\n"
                                                   for dev in devices))
    _cgroup_v2_without_systemd(lay)
    env = {**os.environ, "SLURM_CONF": str(lay.slurm_conf)}
    _run(["/usr/sbin/slurmctld", "-f", str(lay.slurm_conf)], env=env, what="slurmctld")
    _run(["/usr/sbin/slurmd", "-f", str(lay.slurm_conf)], env=env, what="slurmd")

    # The login node: sshd on loopback, key-only, with SLURM_CONF in every session.
    ssh = lay.ssh
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_ed25519")], what="ssh-keygen")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mlops-validation-{cluster}",
          "-f", str(ssh / "client_ed25519")], what="ssh-keygen")
    shutil.copy(ssh / "client_ed25519.pub", ssh / "authorized_keys")
    (ssh / "sshd_config").write_text(f"""Port {base_port + 2}
ListenAddress 127.0.0.1
HostKey {ssh}/host_ed25519
PidFile {lay.pid_file("sshd")}
AuthorizedKeysFile {ssh}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv SLURM_CONF={lay.slurm_conf}{gpu_session_env() if gpu_model else ""}
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    _run(["/usr/sbin/sshd", "-f", str(ssh / "sshd_config")], what="sshd")
    host_key = (ssh / "host_ed25519.pub").read_text().split()
    (ssh / "known_hosts").write_text(f"[127.0.0.1]:{base_port + 2} {host_key[0]} {host_key[1]}\n")

    pids = {d: _read_pid(lay.pid_file(d)) for d in DAEMONS}
    _wait_idle(env, lay)
    return {"pids": pids, "slurm_conf": str(lay.slurm_conf), "node": fields["NodeName"],
            "ssh_port": base_port + 2, "known_hosts": str(ssh / "known_hosts"),
            "private_key": (ssh / "client_ed25519").read_text(), "shared_storage": str(lay.shared)}


def _cgroup_v2_without_systemd(lay: Layout) -> None:
    """slurmd loads its cgroup plugin whatever the task plugin. On a cgroup v2 host without systemd (a container,
    the device tool's GPU machine) it would ask systemd over dbus for its scope and fail: it makes the scope itself
    (IgnoreSystemd, SLURM 22.05+) under a system.slice with the controllers it checks for."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists() or Path("/run/systemd/system").exists():
        return
    try:
        (root / "system.slice").mkdir(exist_ok=True)
        available = (root / "cgroup.controllers").read_text().split()
        wanted = " ".join(f"+{c}" for c in ("cpuset", "cpu", "memory") if c in available)
        (root / "system.slice" / "cgroup.subtree_control").write_text(wanted)
    except OSError:
        return  # a read-only cgroup tree (a container's): slurmd is left to its defaults, as before
    (lay.etc / "cgroup.conf").write_text("CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\n")


def _wait_idle(env: dict, lay: Layout) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
        state = out.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.1)
    log = (lay.log / "slurmd.log").read_text()[-1500:] if (lay.log / "slurmd.log").exists() else ""
    raise RuntimeError(f"SLURM node not idle within {READY_TIMEOUT_S} s (state {state!r}); slurmd.log:\n{log}")


def running_pids(state_dir: str) -> dict[str, int]:
    lay = Layout(Path(state_dir))
    found = {}
    for d in DAEMONS:
        try:
            pid = int(lay.pid_file(d).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue
        if _alive(pid):
            found[d] = pid
    return found


def stop_cluster(state_dir: str, pids: Optional[dict] = None, remove: bool = False) -> None:
    """Cancel every job, then stop the daemons in order; with remove, delete the state folder too."""
    lay = Layout(Path(state_dir))
    known = {**(pids or {}), **running_pids(state_dir)}
    if lay.slurm_conf.exists() and _alive(known.get("slurmctld", -1)):
        env = {**os.environ, "SLURM_CONF": str(lay.slurm_conf)}
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
            if not q.stdout.strip():
                break
            time.sleep(0.2)
    for d in DAEMONS:
        if d in known:
            _stop(int(known[d]))
    if remove:
        shutil.rmtree(lay.root, ignore_errors=True)


# -- the Pulumi resource ---------------------------------------------------------------------------
class _EmbeddedSlurmProvider(ReplacingProvider):
    def create(self, props: dict) -> CreateResult:
        outs = start_cluster(props["state_dir"], props["cluster_name"], props["partition"],
                             int(props["gpus"]), int(props["base_port"]), props.get("cpus"), props.get("gpu_model"))
        return CreateResult(id_=f"{props['cluster_name']}-{uuid.uuid4().hex[:8]}", outs={**props, **outs})

    def vanished(self, olds: dict) -> Optional[str]:
        # daemons died or were replaced: start them again
        same = set(running_pids(olds["state_dir"]).values()) == set((olds.get("pids") or {}).values())
        return None if same else "pids"

    def delete(self, _id: str, props: dict) -> None:
        stop_cluster(props["state_dir"], props.get("pids"), remove=True)


class _EmbeddedSlurm(Resource, module="mlops", name="EmbeddedSlurm"):
    pids: pulumi.Output[dict]
    slurm_conf: pulumi.Output[str]
    node: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    known_hosts: pulumi.Output[str]
    private_key: pulumi.Output[str]
    shared_storage: pulumi.Output[str]

    def __init__(self, name: str, props: dict, opts: Optional[pulumi.ResourceOptions] = None):
        outs = dict.fromkeys(("pids", "slurm_conf", "node", "ssh_port", "known_hosts", "private_key",
                              "shared_storage"))
        super().__init__(_EmbeddedSlurmProvider(), name, {**props, **outs}, opts)


@dataclass
class EmbeddedSlurmClusterArgs:
    state_dir: str
    partition: str = "debug"
    gpus_per_node: int = 2
    base_port: int = 16817
    cpus: Optional[int] = None
    gpu_model: Optional[str] = None  # hpc.gpu: GRES on the node's real GPUs; None: device nodes stand in


class EmbeddedSlurmCluster(pulumi.ComponentResource):
    """A real single-node SLURM with GPU GRES and an ssh login node on 127.0.0.1."""

    def __init__(self, name: str, args: EmbeddedSlurmClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:EmbeddedSlurmCluster", name, None, opts)
        props = {"state_dir": args.state_dir, "cluster_name": name.replace("_", "-"), "partition": args.partition,
                 "gpus": args.gpus_per_node, "base_port": args.base_port, "cpus": args.cpus,
                 "gpu_model": args.gpu_model}
        self._daemons = _EmbeddedSlurm(f"{name}-daemons", props, pulumi.ResourceOptions(
            parent=self, additional_secret_outputs=["private_key"]))
        self.id_ = self._daemons.id
        self.ssh_host = pulumi.Output.from_input("127.0.0.1")
        self.ssh_port = self._daemons.ssh_port
        self.ssh_user = pulumi.Output.from_input("root")
        self.private_key = self._daemons.private_key
        self.known_hosts = self._daemons.known_hosts
        self.shared_storage = self._daemons.shared_storage
        self.slurm_conf = self._daemons.slurm_conf
        self.node = self._daemons.node
        self.register_outputs({"ssh_port": self.ssh_port, "node": self.node, "slurm_conf": self.slurm_conf})
