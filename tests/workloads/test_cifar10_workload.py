"""MLOPS-2.1 workload (workloads/cifar10.py, workloads/distributed.py) on CPU: data loading, rank discovery,
data-parallel sharding, and real training runs at world size 1 and 2 (gloo) on small synthetic data."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # tests/workloads/ runs in .venv-workloads, where torch must be present

from workloads import cifar10, distributed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def write_synthetic(data_dir: Path, per_shard: int = 128, test: int = 200, seed: int = 0) -> None:
    """Learnable fake CIFAR: each class is a flat colour plus noise, in the real files' layout and dtypes."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(10, 3))

    def make(n: int, offset: int):
        labels = ((np.arange(n) + offset) % 10).astype(np.uint8)  # interleaved, like the real shards
        images = palette[labels][:, None, None, :] + rng.normal(0, 20, size=(n, 32, 32, 3))
        return np.clip(images, 0, 255).astype(np.uint8), labels

    data_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(cifar10.TRAIN_FILES):
        images, labels = make(per_shard, i * per_shard)
        np.savez_compressed(data_dir / name, images=images, labels=labels)
    images, labels = make(test, 0)
    np.savez_compressed(data_dir / cifar10.TEST_FILE, images=images, labels=labels)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this process: on a busy 2-core box, OpenMP barriers between two threads cost more
    than the small ops here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cifar10")
    write_synthetic(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- loading

def test_load_concatenates_shards_in_order(data_dir):
    train_x, train_y, test_x, test_y = cifar10.load_cifar10(data_dir)
    assert train_x.shape == (5 * 128, 32, 32, 3) and train_x.dtype == np.uint8
    assert test_x.shape == (200, 32, 32, 3)
    assert train_y.dtype == np.int64 and (train_y == np.arange(640) % 10).all()
    first, _ = cifar10.load_npz(data_dir / "cifar10_train_part1.npz")
    assert (train_x[128:256] == first).all()


def test_max_train_samples_takes_a_balanced_prefix(data_dir):
    train_x, train_y, _, _ = cifar10.load_cifar10(data_dir, max_train_samples=150)
    assert len(train_x) == 150 and np.bincount(train_y, minlength=10).min() == 15


def test_missing_file_names_the_file(tmp_path, data_dir):
    for f in data_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "cifar10_train_part3.npz").unlink()
    with pytest.raises(cifar10.DataError, match="missing data file .*cifar10_train_part3.npz"):
        cifar10.load_cifar10(tmp_path)


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(cifar10.DataError, match="corrupt data file .*bad.npz"):
        cifar10.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "gray.npz", images=np.zeros((4, 32, 32), np.uint8), labels=np.zeros(4, np.uint8))
    with pytest.raises(cifar10.DataError, match="gray.npz"):
        cifar10.load_npz(tmp_path / "gray.npz")


def test_cli_exits_nonzero_with_one_line_naming_the_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workloads.cifar10", "--data-dir", str(tmp_path), "--out-dir",
                           str(tmp_path / "out"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("cifar10: missing data file")
    assert "cifar10_train_part0.npz" in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


# -------------------------------------------------------------------------------------- rank discovery

def test_discover_plain_process_is_world_one():
    info = distributed.discover({})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (0, 1, 0, "single")
    assert not info.distributed


def test_discover_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node7", "MASTER_PORT": "29501",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "55"}  # torchrun inside an allocation
    info = distributed.discover(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 4, 1, 2)
    assert (info.master_addr, info.master_port, info.launcher) == ("node7", 29501, "torchrun")


def test_discover_slurm_with_defaults():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456"}
    info = distributed.discover(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (1, 2, 1, "slurm")
    assert info.master_addr == "127.0.0.1"
    assert info.master_port == distributed.slurm_port("123456")
    assert distributed.PORT_BASE <= info.master_port < distributed.PORT_BASE + distributed.PORT_SPAN
    assert distributed.slurm_port("123457") != info.master_port  # another job, another port


def test_discover_slurm_env_overrides_and_step_task_count():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0",
           "SLURM_JOB_ID": "9", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "12345"}
    info = distributed.discover(env)
    assert (info.world_size, info.master_addr, info.master_port) == (2, "10.0.0.5", 12345)


def test_discover_slurm_batch_step_with_one_task_is_single():
    info = distributed.discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})
    assert info.world_size == 1 and info.launcher == "single"


def test_discover_rejects_rank_outside_world():
    with pytest.raises(ValueError, match="outside world size"):
        distributed.discover({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="SLURM_NTASKS"):
        distributed.discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "two"})


def test_cpu_threads_split_between_local_ranks():
    info = distributed.DistInfo(0, 2, 0, 2, "127.0.0.1", 1, "torchrun")
    assert distributed.cpu_threads(info, {"OMP_NUM_THREADS": "1"}) == 1
    assert distributed.cpu_threads(info, {"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert distributed.cpu_threads(info, {}) == max(1, len(os.sched_getaffinity(0)) // 2)


# ------------------------------------------------------------------------------------ sharding and aug

@pytest.mark.parametrize("world", [2, 4])
def test_rank_batches_union_is_the_single_process_batch(world):
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    single = cifar10.rank_batches(order, 128, 0, 1)
    shards = [cifar10.rank_batches(order, 128, r, world) for r in range(world)]
    assert len(single) == 1000 // 128 and all(len(s) == len(single) for s in shards)
    for step, batch in enumerate(single):
        parts = [shards[r][step] for r in range(world)]
        assert all(len(p) == 128 // world for p in parts)
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())


def test_augmented_batch_crops_and_flips_per_image():
    images = torch.randn(3, 3, 32, 32)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), "reflect")
    idx = torch.tensor([0, 1, 2])
    shifts = torch.tensor([[2, 2], [2, 2], [0, 4]])  # centre, centre, 2 up / 2 right
    flips = torch.tensor([False, True, False])
    out = cifar10.augmented_batch(padded, idx, shifts, flips)
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], images[1].flip(-1))
    assert torch.equal(out[2], padded[2, :, 0:32, 4:36])


def test_lr_schedule_is_triangular():
    total = 100
    values = [cifar10.triangle(i, total) for i in range(total + 1)]
    assert values[0] == pytest.approx(cifar10.HYP["lr_start"])
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == int(0.23 * total)
    assert values[-1] == pytest.approx(cifar10.HYP["lr_end"])


@pytest.mark.parametrize("model", ["airbench94", "small"])
def test_models_give_ten_logits_with_every_tta_level(model):
    spec = cifar10.MODELS[model]
    net = cifar10.make_net(spec["width"], spec["stem_stride"]).eval()
    x = torch.randn(2, 3, 32, 32)
    for tta in (0, 1, 2):
        assert cifar10.predict(net, x, tta).shape == (2, 10)


def test_whitening_layer_decorrelates_patches():
    x = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    x[:, 1] += x[:, 0]  # correlated channels
    conv = cifar10.make_net(16)[0]
    cifar10.init_whitening(conv, x)
    out = torch.nn.functional.conv2d(x, conv.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


# -------------------------------------------------------------------------------- end-to-end training

def read_metrics(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())


REQUIRED = {"task", "test_accuracy", "train_seconds", "total_seconds", "epochs", "global_batch_size", "world_size",
            "backend", "device", "device_name", "samples_per_second", "loss_curve", "gpu_utilization",
            "params_in_sync", "max_param_divergence", "torch_version", "cuda_visible_devices"}
ARGS = ["--epochs", "3", "--global-batch-size", "64", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def world_one(data_dir, tmp_path_factory) -> dict:
    """One process, as `python -m workloads.cifar10` runs it (no launcher variables)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
            mp.delenv(key, raising=False)
        out = tmp_path_factory.mktemp("world1")
        assert cifar10.main(["--data-dir", str(data_dir), "--out-dir", str(out), *ARGS]) == 0
    return read_metrics(out)


@pytest.fixture(scope="module")
def world_two(data_dir, tmp_path_factory) -> tuple[dict, list[str], Path]:
    """Two processes with SLURM-style env only (as `srun --ntasks=2` starts them), the same global batch and
    epochs as world_one."""
    tmp_path = tmp_path_factory.mktemp("world2")
    port = free_port()
    procs = []
    for rank in range(2):
        launcher_vars = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "OMP_NUM_THREADS")
        env = {k: v for k, v in os.environ.items() if not k.startswith(launcher_vars)}
        env.update({"PYTHONPATH": str(ROOT), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                    "SLURM_NTASKS": "2", "SLURM_JOB_ID": "4242", "MASTER_PORT": str(port),
                    "SLURM_CPUS_PER_TASK": "1"})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "workloads.cifar10", "--data-dir", str(data_dir), "--out-dir",
             str(tmp_path / f"out{rank}"), *ARGS], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return read_metrics(tmp_path / "out0"), outputs, tmp_path


def test_end_to_end_world_one(world_one, data_dir):
    m = world_one
    assert REQUIRED <= m.keys()
    assert m["task"] == "mlops_2_1" and m["world_size"] == 1 and m["backend"] is None and m["device"] == "cpu"
    assert m["test_samples"] == 200 and m["train_samples"] == 640 and m["steps"] == 3 * (640 // 64)
    assert len(m["loss_curve"]) == 3 and m["loss_curve"][-1] < m["loss_curve"][0]
    assert m["test_accuracy"] > 0.5  # flat colours are easy: chance is 0.1
    assert m["params_in_sync"] is True and m["max_param_divergence"] == 0.0
    assert m["gpu_utilization"] is None and "CPU" in m["gpu_utilization_note"]
    assert m["data_sha256"]["cifar10_test.npz"] == cifar10.sha256_file(data_dir / "cifar10_test.npz")
    assert m["total_seconds"] >= m["train_seconds"] > 0
    # The loop's own counts: 3 epochs of 10 global batches of 64.
    assert (m["epochs_completed"], m["optimizer_steps"], m["samples_trained"]) == (3, 30, 30 * 64)
    assert m["ranks_reporting"] == 1 and m["ranks_consistent"] is True and m["ranks_on_gpu"] == 0
    assert [d["device"] for d in m["rank_devices"]] == ["cpu"] and m["rank_devices"][0]["backend"] is None


def test_two_ranks_over_gloo_launched_like_srun(world_two):
    """They must find each other, train with DDP over gloo, and end with identical parameters; only rank 0
    writes metrics.json."""
    m, outputs, tmp_path = world_two
    assert not (tmp_path / "out1" / "metrics.json").exists()
    assert m["world_size"] == 2 and m["backend"] == "gloo" and m["launcher"] == "slurm"
    assert m["per_rank_batch_size"] == 32 and m["global_batch_size"] == 64 and m["cpu_threads_per_rank"] == 1
    assert m["params_in_sync"] is True and m["max_param_divergence"] == 0.0
    assert m["test_samples"] == 200  # both ranks' test shards counted
    assert m["test_accuracy"] > 0.5
    assert "epoch 3/3" in outputs[0] and "epoch" not in outputs[1]  # progress on rank 0 only


def test_two_ranks_count_the_same_work_as_one(world_one, world_two):
    """Same global batch, epochs and seed: the samples the two ranks' loops counted add up to the one-rank run's,
    and world size and backend are what each rank's process group reported."""
    one, (two, _, _) = world_one, world_two
    for key in ("samples_trained", "optimizer_steps", "epochs_completed", "steps"):
        assert two[key] == one[key], key
    assert [c["samples_trained"] for c in two["rank_counts"]] == [one["samples_trained"] // 2] * 2
    assert [c["optimizer_steps"] for c in two["rank_counts"]] == [one["optimizer_steps"]] * 2
    assert two["ranks_reporting"] == 2 and two["ranks_consistent"] is True and two["ranks_on_gpu"] == 0
    assert [(d["rank"], d["device"], d["world_size"], d["backend"]) for d in two["rank_devices"]] == \
        [(0, "cpu", 2, "gloo"), (1, "cpu", 2, "gloo")]
    assert two["launcher_world_size"] == 2 and two["backend_requested"] == "gloo"


def test_summarize_ranks_shows_a_rank_on_cpu_and_a_missing_rank():
    gpu = {"device": "cuda:0", "device_type": "cuda", "device_name": "H200", "world_size": 2, "backend": "nccl"}
    records = [{**gpu, "rank": 0}, {**gpu, "rank": 1, "device": "cpu", "device_type": "cpu"}]
    s = distributed.summarize_ranks(records, expected_world=2)
    assert s["ranks_on_gpu"] == 1 and [d["device"] for d in s["rank_devices"]] == ["cuda:0", "cpu"]
    assert s["world_size"] == 2 and s["backend"] == "nccl" and s["ranks_consistent"] is True
    lone = distributed.summarize_ranks(records[:1], expected_world=2)
    assert lone["ranks_reporting"] == 1 and lone["ranks_consistent"] is False
    assert distributed.summarize_ranks([])["world_size"] is None


def _divergence_worker(rank: int, port: int, result_file: str) -> None:
    info = distributed.DistInfo(rank, 2, rank, 2, "127.0.0.1", port, "test")
    distributed.init(info, torch.device("cpu"))
    try:
        vector = torch.arange(10, dtype=torch.float32)
        same = distributed.max_divergence(vector, info)
        vector[7] += 0.25 * rank  # rank 1 drifts: the check must see it
        drifted = distributed.max_divergence(vector, info)
        if rank == 0:
            Path(result_file).write_text(json.dumps([same, drifted]))
    finally:
        distributed.shutdown(info)


def test_max_divergence_detects_a_drifting_rank(tmp_path):
    result = tmp_path / "divergence.json"
    # fork: the children start with torch already imported (spawn would pay the import again, ~3 s each).
    torch.multiprocessing.start_processes(_divergence_worker, args=(free_port(), str(result)), nprocs=2, join=True,
                                          start_method="fork")
    same, drifted = json.loads(result.read_text())
    assert same == 0.0 and drifted == pytest.approx(0.25)
