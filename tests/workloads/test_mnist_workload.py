"""MLOPS-1.1 workload: IDX parsing, the model, and a tiny end-to-end run on synthetic IDX files (CPU, seconds)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

# tests/workloads/ runs in the workloads' environment (.venv-workloads), where torch must be present.
import numpy as np
import torch

from workloads import evaluate_mnist, mnist
from workloads.metrics_io import sha256_file, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
# TorchScript is the agreed format; torch's deprecation notice for torch.jit is expected noise.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write `array` (uint8) as a gzip-compressed IDX file, the way the canonical MNIST files are laid out."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


def synthetic_mnist(data_dir: Path, n_train: int = 400, n_test: int = 200, seed: int = 0) -> Path:
    """An easy, learnable stand-in: digit k is a bright 6x6 square at a k-dependent place, plus noise."""
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
            images[i, r:r + 6, c:c + 6] = 255
        write_idx(data_dir / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(data_dir / f"{split}-labels-idx1-ubyte.gz", labels)
    return data_dir


# ------------------------------------------------------------------------------------------- IDX parsing

def test_read_idx_round_trip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    got = mnist.read_idx(write_idx(tmp_path / "x.gz", images), mnist.IMAGES_MAGIC)
    assert got.shape == (3, 28, 28) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(mnist.read_idx(write_idx(tmp_path / "y.gz", labels), mnist.LABELS_MAGIC), labels)


def test_read_idx_rejects_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))  # a labels file (2049)...
    with pytest.raises(mnist.DataError, match=r"labels\.gz: magic number 2049, expected 2051"):
        mnist.read_idx(path, mnist.IMAGES_MAGIC)  # ...read where images are expected


def test_read_idx_rejects_truncated_payload(tmp_path):
    path = tmp_path / "short.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">4I", 2051, 10, 28, 28) + bytes(28 * 28 * 9))  # header says 10 images, 9 follow
    with pytest.raises(mnist.DataError, match=r"short\.gz: .*header \[10, 28, 28\]"):
        mnist.read_idx(path, mnist.IMAGES_MAGIC)


def test_read_idx_rejects_non_gzip_and_missing(tmp_path):
    (tmp_path / "plain.gz").write_bytes(b"this is not gzip")
    with pytest.raises(mnist.DataError, match=r"plain\.gz: cannot decompress"):
        mnist.read_idx(tmp_path / "plain.gz", mnist.LABELS_MAGIC)
    with pytest.raises(mnist.DataError, match=r"nope\.gz: file not found"):
        mnist.read_idx(tmp_path / "nope.gz", mnist.LABELS_MAGIC)


def test_load_mnist_checks_counts_and_labels(tmp_path):
    d = synthetic_mnist(tmp_path / "d", n_train=20, n_test=10)
    data = mnist.load_mnist(d)
    assert data["train_images"].shape == (20, 28, 28) and data["test_labels"].shape == (10,)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(mnist.DataError, match=r"t10k-labels-idx1-ubyte\.gz: 9 labels for 10 images"):
        mnist.load_mnist(d)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
    with pytest.raises(mnist.DataError, match="label 10 is not a digit"):
        mnist.load_mnist(d)


def test_cli_names_the_missing_file_and_exits_nonzero(tmp_path):
    d = synthetic_mnist(tmp_path / "d", n_train=20, n_test=10)
    (d / "train-labels-idx1-ubyte.gz").unlink()
    proc = subprocess.run([sys.executable, "-m", "workloads.mnist", "--data-dir", str(d), "--out-dir",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-labels-idx1-ubyte.gz: file not found" in lines[0], proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------ model

def test_model_forward_shape_and_script_equivalence():
    torch.manual_seed(0)
    model = mnist.Net().eval()
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    assert out.shape == (5, 10) and out.dtype == torch.float32
    torch.testing.assert_close(torch.jit.script(model)(x), out)


@pytest.mark.parametrize("total_steps", [1, 4, 8, 50])
def test_lr_schedule_handles_tiny_runs(total_steps):
    opt, sched = mnist.make_optimizer(mnist.Net(), lr=0.01, total_steps=total_steps)
    lrs = []
    for _ in range(total_steps):  # as in training: one optimizer step, then one scheduler step
        lrs.append(sched.get_last_lr()[0])  # the LR this step uses
        opt.step()
        sched.step()
    assert all(0 <= lr <= 0.01 + 1e-12 for lr in lrs)
    if total_steps >= 8:  # one-cycle: peaks at the given LR, ends near zero
        assert max(lrs) == pytest.approx(0.01, rel=0.1) and lrs[-1] < 1e-4


# ------------------------------------------------------------------------------------------- helpers

def test_write_json_atomic_and_sha256(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "m.json", {"a": 1})
    write_json_atomic(path, {"a": 2})  # replacing an existing file
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["m.json"]  # no temp files left behind
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ end to end

REQUIRED_KEYS = {"task", "test_accuracy", "train_seconds", "total_seconds", "epochs", "train_samples",
                 "samples_per_second", "device", "device_name", "torch_version", "num_threads",
                 "cuda_visible_devices", "gpu_utilization", "gpu_utilization_note", "model",
                 "reevaluated_accuracy", "loss_curve"}


def test_end_to_end_tiny_run(tmp_path):
    data_dir = synthetic_mnist(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "workloads.mnist", "--data-dir", str(data_dir), "--out-dir", str(out),
           "--epochs", "2", "--batch-size", "32", "--max-train-samples", "300", "--device", "cpu", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch 2/2" in proc.stdout  # progress lines for the SLURM log

    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= metrics.keys(), REQUIRED_KEYS - metrics.keys()
    assert metrics["task"] == "mlops_1_1"
    assert metrics["device"] == "cpu" and metrics["num_threads"] == 1
    assert metrics["train_samples"] == 300 and metrics["epochs"] == 2 and metrics["test_samples"] == 200
    assert len(metrics["loss_curve"]) == 2 and metrics["loss_curve"][1] < metrics["loss_curve"][0]
    assert 0 < metrics["train_seconds"] <= metrics["total_seconds"]
    assert metrics["samples_per_second"] == pytest.approx(600 / metrics["train_seconds"], rel=0.01)
    # Counted by the loop: 2 epochs of ceil(300 / 32) = 10 batches, the last one 12 images.
    assert (metrics["samples_trained"], metrics["optimizer_steps"], metrics["epochs_completed"]) == (600, 20, 2)
    assert metrics["world_size"] == 1 and metrics["backend"] is None and metrics["ranks_reporting"] == 1
    assert [d["device"] for d in metrics["rank_devices"]] == ["cpu"] and metrics["ranks_on_gpu"] == 0
    assert metrics["gpu_utilization"] is None and "cpu" in metrics["gpu_utilization_note"]
    # The toy classes are trivially separable: a working pipeline learns them, a broken one sits near 0.1.
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["reevaluated_accuracy"] == metrics["test_accuracy"]

    model = metrics["model"]
    assert model["format"] == "torchscript" and model["output"] == "logits [N,10]"
    assert model["input"]["shape"] == [None, 1, 28, 28] and model["input"]["dtype"] == "float32"
    assert Path(model["path"]) == (out / "model.pt").resolve()
    assert model["sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()

    # Anyone can re-score the file with torch alone, through the evaluation entry point.
    images, labels = evaluate_mnist.load_test_set(str(data_dir))
    loaded = torch.jit.load(str(out / "model.pt"))
    assert evaluate_mnist.evaluate(loaded, images, labels, torch.device("cpu")) == metrics["test_accuracy"]

    # Its own answers on the fixed inputs (the first test images), which a deployment must reproduce (MLOPS-5.1).
    reference = json.loads((out / "predictions.json").read_text())
    assert metrics["predictions"]["count"] == reference["count"] == 100
    from workloads.serving.lineage import fixed_inputs
    with torch.inference_mode():
        logits = loaded(torch.from_numpy(fixed_inputs(str(data_dir), 100)).reshape(-1, 1, 28, 28))
    assert reference["digits"] == logits.argmax(1).tolist()
    assert torch.equal(torch.tensor(reference["logits"]), logits)


def test_shuffled_labels_make_a_bad_model(tmp_path):
    data_dir = synthetic_mnist(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "workloads.mnist", "--data-dir", str(data_dir), "--out-dir", str(out), "--epochs",
           "2", "--batch-size", "32", "--max-train-samples", "300", "--device", "cpu", "--threads", "1",
           "--shuffle-labels"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=180).returncode == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shuffled_labels"] and metrics["test_accuracy"] < 0.5  # MLOPS-5.2's gate must reject it


def test_evaluate_cli_prints_accuracy_json(tmp_path, capsys):
    data_dir = synthetic_mnist(tmp_path / "data", n_train=10, n_test=50)
    torch.manual_seed(0)
    model_path = tmp_path / "m.pt"
    torch.jit.script(mnist.Net().eval()).save(str(model_path))
    assert evaluate_mnist.main(["--model", str(model_path), "--data-dir", str(data_dir), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    images, labels = evaluate_mnist.load_test_set(str(data_dir))
    expected = evaluate_mnist.evaluate(torch.jit.load(str(model_path)), images, labels, torch.device("cpu"))
    assert result["accuracy"] == expected and result["test_samples"] == 50


def test_train_reports_every_optimizer_step():
    # the GPU utilisation sampler starts from this callback after the warm-up steps
    images, labels = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    model = mnist.Net()
    opt, sched = mnist.make_optimizer(model, 0.01, 6)
    seen: list[int] = []
    counts: dict = {}
    mnist.train(model, opt, sched, images, labels, epochs=2, batch_size=4, seed=0, log=lambda s: None,
                counts=counts, on_step=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6] and counts["optimizer_steps"] == 6
