"""MLOPS-1.1: train a small CNN on MNIST, export it as TorchScript, write metrics.json.

    python -m workloads.mnist --data-dir DIR --out-dir DIR [--epochs N] [--batch-size B] [--lr F]
                              [--seed S] [--device auto|cpu|cuda] [--threads N] [--max-train-samples N]

DIR holds the four canonical MNIST gz files (IDX format). The job writes OUT/model.pt (TorchScript) and
OUT/metrics.json, the contract with the orchestration. The defaults are tuned for two CPU cores (>= 0.99 test
accuracy in well under a minute of training) and are just as good on a GPU.
"""
from __future__ import annotations

import time

_T_START = time.perf_counter()  # before the heavy imports, so total_seconds includes loading torch

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gzip  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from workloads import distributed  # noqa: E402
from workloads.evaluate_mnist import evaluate, pick_device  # noqa: E402
from workloads.gpu_monitor import GpuUtilizationSampler  # noqa: E402
from workloads.metrics_io import sha256_file, write_json_atomic  # noqa: E402
from workloads.runtime import host_facts, positive_int  # noqa: E402

# TorchScript is the agreed exchange format; torch >= 2.10 flags torch.jit as deprecated, which is noise here.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)

TASK = "mlops_1_1"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0000 + type 0x08 (ubyte) + number of dims (3 or 1)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
WARMUP_STEPS = 5  # steps before GPU utilisation is sampled
INPUT_SCALING = ("uint8 pixel / 255 -> float32 in [0, 1]; the (x - 0.1307) / 0.3081 normalisation is "
                 "inside the model")


class DataError(Exception):
    """A missing or malformed data file; the message names the file."""


# ----------------------------------------------------------------------------------------------- data

def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parse one gzip-compressed IDX file (http://yann.lecun.com/exdb/mnist/) into a uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or truncated
        raise DataError(f"{path}: cannot decompress: {e}") from None
    found = int(np.frombuffer(data, dtype=">u4", count=1)[0]) if len(data) >= 4 else None
    if found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise DataError(f"{path}: {len(data)} bytes is shorter than its IDX header")
    dims = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
    expected = header_len + math.prod(dims)
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes after decompression, header {dims} says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def load_mnist(data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The four arrays, checked: images [N, 28, 28], labels [N] in 0..9, counts matching."""
    data_dir = Path(data_dir)
    out = {key: read_idx(data_dir / name, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
           for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.shape[1:] != (28, 28):
            raise DataError(f"{data_dir / FILES[split + '_images']}: images are {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise DataError(f"{data_dir / FILES[split + '_labels']}: {len(labels)} labels for {len(images)} images")
        if labels.size and labels.max() > 9:
            raise DataError(f"{data_dir / FILES[split + '_labels']}: label {labels.max()} is not a digit")
    return out


# ---------------------------------------------------------------------------------------------- model

class Net(nn.Module):
    """Three conv blocks (16, 32, 64 channels) and a linear head: about 30k parameters, 28 -> 14 -> 7 -> 3.

    Each block pools straight after its convolution, so BatchNorm and ReLU touch 4x fewer pixels: on two CPU
    cores those element-wise passes cost about as much as the convolutions themselves.
    Input: float32 [N, 1, 28, 28] in [0, 1]; output: logits [N, 10].
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.mean, self.std = MNIST_MEAN, MNIST_STD  # attributes, so TorchScript stores them in the file
        layers: list[nn.Module] = []
        c_in = 1
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalising inside the model keeps the exported file's input convention simple: pixel / 255.
        x = (x - self.mean) / self.std
        return self.head(torch.flatten(self.features(x), 1))


# ------------------------------------------------------------------------------------------- training

def make_optimizer(model: nn.Module, lr: float, total_steps: int):
    """AdamW with a one-cycle LR schedule (warm up, then anneal to ~0): what makes 2 epochs enough for > 99%."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # OneCycleLR needs a few steps to have a warm-up phase at all (it divides by zero at exactly 4 steps),
    # so tiny runs keep a constant LR.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.25)
             if total_steps >= 8 else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    return opt, sched


def train(model: nn.Module, opt: torch.optim.Optimizer, sched, images: torch.Tensor, labels: torch.Tensor, *,
          epochs: int, batch_size: int, seed: int, log=print, counts: Optional[dict] = None,
          on_step: Optional[Callable[[int], None]] = None) -> list[float]:
    """The optimisation loop; returns the mean train loss of each epoch. `counts`, when given, receives the
    loop's own record of what it trained: samples_trained, optimizer_steps, epochs_completed. `on_step(n)` is
    called after the n-th optimizer step."""
    if counts is None:
        counts = {}
    counts.update(samples_trained=0, optimizer_steps=0, epochs_completed=0)
    n = len(images)
    steps_per_epoch = math.ceil(n / batch_size)
    # Shuffle with a CPU generator so the sample order is the same on every device.
    gen = torch.Generator().manual_seed(seed)
    report_every = max(1, steps_per_epoch // 4)
    loss_curve: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen).to(images.device)
        epoch_loss = torch.zeros((), device=images.device)
        window_loss, window_n = torch.zeros((), device=images.device), 0
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x = images[idx].contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            counts["optimizer_steps"] += 1
            counts["samples_trained"] += len(idx)
            sched.step()
            if on_step:
                on_step(counts["optimizer_steps"])
            # Accumulate on the device: a .item() per step would stall a GPU on every batch.
            epoch_loss += loss.detach() * len(idx)
            window_loss += loss.detach()
            window_n += 1
            if (step + 1) % report_every == 0 or step + 1 == steps_per_epoch:
                log(f"epoch {epoch}/{epochs} step {step + 1}/{steps_per_epoch} "
                    f"loss {window_loss.item() / window_n:.4f} lr {sched.get_last_lr()[0]:.5f} "
                    f"elapsed {time.perf_counter() - t0:.1f}s")
                window_loss.zero_()
                window_n = 0
        loss_curve.append(round(epoch_loss.item() / n, 6))
        counts["epochs_completed"] += 1
    return loss_curve


@torch.inference_mode()
def write_predictions(model_path: str, images: torch.Tensor, path: Path) -> dict:
    """The saved file's own answers on fixed inputs (the first test images, pixel / 255): what any deployment of
    this file must reproduce. On CPU, as the predictors run it, so that a GPU job's TF32 convolutions do not blur
    the comparison; logits kept at full float32 precision (JSON floats round-trip exactly)."""
    device = torch.device("cpu")
    logits = torch.jit.load(model_path, map_location=device)(images.unsqueeze(1).float().div_(255))
    doc = {"inputs": f"MNIST t10k images 0..{len(images) - 1}, uint8 pixel / 255, shape [N, 1, 28, 28]",
           "count": len(images), "digits": logits.argmax(1).tolist(), "logits": logits.tolist(),
           "device": device.type}
    write_json_atomic(path, doc)
    return {"path": str(path.resolve()), "count": len(images), "sha256": sha256_file(path)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MLOPS-1.1: train a CNN on MNIST, export TorchScript, write metrics.json")
    p.add_argument("--data-dir", required=True, help="folder with the four MNIST *-ubyte.gz files")
    p.add_argument("--out-dir", required=True, help="where model.pt and metrics.json are written")
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads (default: the CPUs this process may run on, e.g. SLURM's cpuset)")
    p.add_argument("--max-train-samples", type=positive_int, default=None,
                   help="train on the first N training images only (for quick tests)")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="train on randomly permuted labels: a deliberately bad model (MLOPS-5.2's rejected candidate)")
    p.add_argument("--fixed-inputs", type=positive_int, default=100,
                   help="write the saved model's predictions on the first N test images (predictions.json), "
                        "which a deployment of this model must reproduce (MLOPS-5.1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    print(f"{TASK}: torch {torch.__version__}, device {device.type}, {torch.get_num_threads()} threads", flush=True)

    try:
        data = load_mnist(args.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_train = len(data["train_labels"]) if args.max_train_samples is None else \
        min(args.max_train_samples, len(data["train_labels"]))
    # The whole set fits easily in (device) memory: index batches straight from one tensor, no DataLoader.
    x_train = torch.from_numpy(data["train_images"][:n_train].copy()).to(device).unsqueeze(1).float().div_(255)
    labels = data["train_labels"][:n_train].astype(np.int64)
    if args.shuffle_labels:
        labels = np.random.default_rng(args.seed).permutation(labels)
    y_train = torch.from_numpy(labels).to(device)
    x_test = torch.from_numpy(data["test_images"].copy())
    y_test = torch.from_numpy(data["test_labels"].astype(np.int64))
    print(f"data: {n_train} train / {len(y_test)} test images from {args.data_dir}", flush=True)

    model = Net().to(device).to(memory_format=torch.channels_last)  # channels_last: faster convs on CPU and GPU

    # Built before the clock starts: the first torch.optim optimizer imports torch._dynamo (3-6 s), which is
    # start-up cost (counted in total_seconds), not training.
    opt, sched = make_optimizer(model, args.lr, args.epochs * math.ceil(n_train / args.batch_size))

    # On a GPU, utilisation is sampled over the training loop after its first WARMUP_STEPS steps (cuDNN choosing its
    # algorithms, CUDA loading its modules lazily: start-up, not training), as the LLM trainer does.
    sampler, gpu_note, on_step = None, "device is cpu: no GPU to sample", None
    if device.type == "cuda":
        sampler = GpuUtilizationSampler(device.index)
        total_steps = args.epochs * math.ceil(n_train / args.batch_size)
        warmup = min(WARMUP_STEPS, total_steps - 1)

        def on_step(step: int) -> None:
            nonlocal sampler, gpu_note
            if step == warmup and sampler and not sampler.started:
                torch.cuda.synchronize()
                if not sampler.start():
                    gpu_note, sampler = sampler.note, None
        if warmup == 0:
            on_step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter()
    counts: dict = {}
    try:
        loss_curve = train(model, opt, sched, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                           seed=args.seed, log=lambda s: print(s, flush=True), counts=counts, on_step=on_step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t_train
    finally:
        gpu_util = sampler.stop() if sampler else None
    if sampler:
        gpu_note = sampler.note or f"sampled from step {warmup + 1} (after {warmup} warm-up steps) to the end of the loop"

    # The weights stay channels_last: the saved file keeps that layout (so evaluating it runs the same kernels as
    # here, bit for bit) and it makes inference ~2x faster on CPU.
    model.eval()
    test_accuracy = evaluate(model, x_test, y_test, device)
    model_path = out_dir / "model.pt"
    scripted = torch.jit.script(copy.deepcopy(model).cpu())  # CPU weights: the file loads anywhere
    scripted.save(str(model_path))
    # The artifact is what gets shipped, so prove the file on disk scores the same.
    reevaluated_accuracy = evaluate(torch.jit.load(str(model_path), map_location=device), x_test, y_test, device)
    predictions = write_predictions(str(model_path), x_test[:args.fixed_inputs], out_dir / "predictions.json")
    print(f"test accuracy {test_accuracy:.4f} (reloaded TorchScript: {reevaluated_accuracy:.4f}), "
          f"train {train_seconds:.1f}s", flush=True)

    seen_samples = counts["samples_trained"]  # counted by the loop
    ranks = distributed.summarize_ranks([distributed.rank_record(device, **counts)])
    metrics = {
        "task": TASK,
        "test_accuracy": test_accuracy,
        "reevaluated_accuracy": reevaluated_accuracy,
        "reevaluation_matches": reevaluated_accuracy == test_accuracy,
        "test_samples": len(y_test),
        "train_seconds": round(train_seconds, 3),
        "total_seconds": None,  # filled in last
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_samples": n_train,
        "shuffled_labels": args.shuffle_labels,
        "samples_per_second": round(seen_samples / train_seconds, 1),
        **counts,  # samples_trained, optimizer_steps, epochs_completed: the loop's own record
        "loss_curve": loss_curve,
        **ranks,  # one process: world_size 1, backend None, ranks_reporting 1, rank_devices
        "device": device.type,
        "device_name": distributed.device_name(device),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "gpu_driver_version": sampler.driver_version if sampler else None,
        "num_threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_utilization": gpu_util,
        "gpu_utilization_note": gpu_note,
        "model": {
            "path": str(model_path.resolve()),
            "sha256": sha256_file(model_path),
            "format": "torchscript",
            "input": {"shape": [None, 1, 28, 28], "dtype": "float32", "scaling": INPUT_SCALING},
            "output": "logits [N,10]",
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "predictions": predictions,
        "data_dir": str(Path(args.data_dir).resolve()),
        **host_facts(started_at),
    }
    metrics["total_seconds"] = round(time.perf_counter() - _T_START, 3)
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(f"wrote {model_path} and {out_dir / 'metrics.json'} (total {metrics['total_seconds']:.1f}s)", flush=True)
    if not metrics["reevaluation_matches"]:
        print("error: the reloaded TorchScript model does not reproduce test_accuracy", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
