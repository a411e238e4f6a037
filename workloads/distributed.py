"""Rank/world discovery and process-group setup for data-parallel workloads.

One module for every way a workload gets launched:

    python -m workloads.X ...                      world size 1, no process group
    torchrun --nproc_per_node=N -m workloads.X ...  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from torchrun
    srun --ntasks=N python -m workloads.X ...       SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; MASTER_ADDR and
                                                   MASTER_PORT from the environment, else 127.0.0.1 and a port
                                                   derived from SLURM_JOB_ID (single-node jobs)

`discover` is a pure function of an environment mapping, so it can be tested without a process group.
Backend: NCCL on CUDA, gloo on CPU. Each rank uses GPU `local_rank` among the visible ones (under SLURM
GRES, CUDA_VISIBLE_DEVICES lists the job's GPUs).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from workloads.runtime import cpu_model_name

DEFAULT_MASTER_ADDR = "127.0.0.1"
# SLURM-derived ports land in [PORT_BASE, PORT_BASE + PORT_SPAN): above the registered-services range and
# below Linux's default ephemeral range (32768+), so two jobs on one node rarely collide.
PORT_BASE = 20000
PORT_SPAN = 10000
DEFAULT_PORT = 29500  # torchrun's default, for SLURM steps outside a job id (never seen in practice)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "single", "torchrun" or "slurm"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def as_dict(self) -> dict:
        return asdict(self)


def _int(env: Mapping[str, str], key: str, default: Optional[int] = None) -> int:
    value = env.get(key, "")
    if value.strip() == "":
        if default is None:
            raise ValueError(f"environment variable {key} is not set")
        return default
    try:
        return int(value.split("(")[0])  # SLURM writes some counts as "2(x3)"
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from exc


def slurm_port(job_id: str) -> int:
    """A port that is the same for every task of one job and usually differs between jobs."""
    digits = "".join(ch for ch in job_id if ch.isdigit())
    return PORT_BASE + int(digits) % PORT_SPAN if digits else DEFAULT_PORT


def discover(env: Optional[Mapping[str, str]] = None) -> DistInfo:
    """Rank, world size and rendezvous address of this process, from its environment alone.

    torchrun wins over SLURM: torchrun started inside a SLURM allocation sets RANK/WORLD_SIZE for its own
    workers, while the SLURM_* variables still describe the one task that ran torchrun.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        return _checked(DistInfo(
            rank=_int(env, "RANK"), world_size=world, local_rank=_int(env, "LOCAL_RANK", 0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", world),
            master_addr=env.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR,
            master_port=_int(env, "MASTER_PORT", DEFAULT_PORT), launcher="torchrun"))
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        # srun sets the step's task count; the batch script itself only has the job's SLURM_NTASKS.
        world = _int(env, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env else _int(env, "SLURM_NTASKS")
        if world == 1:
            return DistInfo(0, 1, 0, 1, DEFAULT_MASTER_ADDR, 0, "single")
        local_world = _int(env, "SLURM_NTASKS_PER_NODE", 0) or _tasks_on_this_node(env, world)
        return _checked(DistInfo(
            rank=_int(env, "SLURM_PROCID"), world_size=world, local_rank=_int(env, "SLURM_LOCALID", 0),
            local_world_size=local_world,
            master_addr=env.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR,
            master_port=_int(env, "MASTER_PORT", 0) or slurm_port(env.get("SLURM_JOB_ID", "")),
            launcher="slurm"))
    return DistInfo(0, 1, 0, 1, DEFAULT_MASTER_ADDR, 0, "single")


def _tasks_on_this_node(env: Mapping[str, str], world: int) -> int:
    # SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE look like "2" or "2(x3)" or "3,1"; the first entry is
    # enough for sizing threads. Fall back to the whole world (single-node jobs, the case we run).
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if env.get(key):
            try:
                return int(env[key].split(",")[0].split("(")[0])
            except ValueError:
                pass
    return world


def _checked(info: DistInfo) -> DistInfo:
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"rank {info.rank} is outside world size {info.world_size}")
    if info.local_world_size < 1 or not 0 <= info.local_rank < info.local_world_size:
        raise ValueError(f"local rank {info.local_rank} is outside local world size {info.local_world_size}")
    return info


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """`auto` means CUDA when a GPU is visible. Rank r takes GPU local_rank (modulo the visible count, for
    schedulers that already bind one GPU per task)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r} (auto, cpu or cuda)")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    index = info.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cpu_threads(info: DistInfo, env: Optional[Mapping[str, str]] = None) -> int:
    """Threads for one rank: OMP_NUM_THREADS (torchrun sets 1), else SLURM's cpus-per-task, else this
    process's CPUs shared between the ranks on this node, so ranks do not oversubscribe the cores."""
    env = os.environ if env is None else env
    for key in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        if env.get(key, "").strip().isdigit() and int(env[key]) > 0:
            return int(env[key])
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(info.local_world_size, 1))


def init(info: DistInfo, device: torch.device, timeout_s: float = 600.0) -> Optional[str]:
    """Join the process group (nothing to do at world size 1). Returns the backend name or None."""
    if not info.distributed:
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if device.type == "cuda":
        kwargs["device_id"] = device  # binds NCCL to this rank's GPU up front (no guessing at first collective)
    dist.init_process_group(backend=backend, init_method=f"tcp://{info.master_addr}:{info.master_port}",
                            rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return backend


def barrier(info: DistInfo, device: torch.device) -> None:
    if info.distributed:
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_divergence(vector: torch.Tensor, info: DistInfo) -> float:
    """Max |v_rank - v_rank0| over all ranks and elements (0.0 at world size 1). Every rank must call it."""
    if not info.distributed:
        return 0.0
    gathered = [torch.empty_like(vector) for _ in range(info.world_size)]
    dist.all_gather(gathered, vector.contiguous())
    return max(float((g - gathered[0]).abs().max()) if g.numel() else 0.0 for g in gathered)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ what each rank reports

def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


def rank_record(device: torch.device, **counts) -> dict:
    """What this process itself sees: its rank, world size and backend as its process group reports them (not
    the launcher's environment), the device it computed on, and the counts its own loop kept."""
    joined = dist.is_available() and dist.is_initialized()
    return {"rank": dist.get_rank() if joined else 0,
            "world_size": dist.get_world_size() if joined else 1,
            "backend": str(dist.get_backend()) if joined else None,
            "device": str(device), "device_type": device.type, "device_name": device_name(device),
            "hostname": socket.gethostname(), "pid": os.getpid(), **counts}


def gather_records(record: dict) -> list[dict]:
    """Every rank's record, on every rank (a collective: all ranks must call it). [record] without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [record]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    return gathered


def summarize_ranks(records: Sequence[dict], expected_world: Optional[int] = None) -> dict:
    """The job-level figures from the ranks' own records (rank 0's view first):

    world_size / backend: what rank 0's process group reports (None records: no rank reported);
    ranks_reporting: distinct ranks that handed in a record; rank_devices: each rank's device, in rank order, so
    a rank that fell back to CPU shows; ranks_on_gpu: how many of them computed on CUDA; ranks_consistent: every
    record names the same world size and backend, the ranks are 0..N-1 once each, and N is that world size (and
    `expected_world`, when given: what was asked for)."""
    by_rank = sorted(records, key=lambda r: r.get("rank", -1))
    first = next((r for r in by_rank if r.get("rank") == 0), by_rank[0] if by_rank else None)
    ranks = [r.get("rank") for r in by_rank]
    world = first["world_size"] if first else None
    consistent = bool(by_rank) and ranks == list(range(len(by_rank))) and all(
        r.get("world_size") == world and r.get("backend") == first.get("backend") for r in by_rank) \
        and world == len(by_rank) and (expected_world is None or expected_world == world)
    return {
        "world_size": world,
        "backend": first.get("backend") if first else None,
        "ranks_reporting": len(set(ranks)),
        "ranks_consistent": consistent,
        "rank_devices": [{k: r.get(k) for k in ("rank", "device", "device_type", "device_name", "hostname",
                                                 "world_size", "backend")} for r in by_rank],
        "ranks_on_gpu": sum(1 for r in by_rank if r.get("device_type") == "cuda"),
    }
