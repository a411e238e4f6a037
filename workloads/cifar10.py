"""MLOPS-2.1: CIFAR-10 data-parallel training (PyTorch DistributedDataParallel).

    python -m workloads.cifar10 --data-dir DIR --out-dir DIR [--epochs N] [--global-batch-size B] [--seed S]
                                [--device auto|cpu|cuda] [--max-train-samples N]
    torchrun --nproc_per_node=N -m workloads.cifar10 ...      # or: srun --ntasks=N python -m workloads.cifar10 ...

DIR holds cifar10_train_part0..4.npz and cifar10_test.npz (keys `images`: uint8 N x 32 x 32 x 3 RGB, `labels`:
uint8 N). Rank 0 writes OUT/metrics.json; that file is the contract with the stack.

The recipe follows airbench94 (Keller Jordan, github.com/KellerJordan/cifar10-airbench): a small VGG-like net
with a frozen patch-whitening first layer, identity-initialised convs, BatchNorm with only biases trained,
Nesterov SGD with decoupled hyperparameters and a triangular LR schedule, label smoothing, alternating
flips and 2-pixel translations, a lookahead average of the weights, and flip/translate test-time
augmentation. It reaches ~94% in ~10 epochs on a GPU.

Data parallelism keeps the run the same at every world size: each step takes the same GLOBAL batch of the same
samples (one permutation per epoch, drawn from the seed; rank r takes every world-th index of it, like
DistributedSampler), each rank computes 1/world of it, and DDP averages the gradients. Only BatchNorm's batch
statistics are per rank. After training every rank's parameters are compared to prove they stayed in sync.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from workloads import distributed
from workloads.gpu_monitor import GpuUtilizationSampler
from workloads.metrics_io import sha256_file, write_json_atomic

PROCESS_START = time.perf_counter()

TASK = "mlops_2_1"
TRAIN_FILES = [f"cifar10_train_part{i}.npz" for i in range(5)]
TEST_FILE = "cifar10_test.npz"
# The well-known CIFAR-10 train-set channel statistics (0-255 scale); the datasets README checks ours match.
MEAN = (125.307, 122.950, 113.865)
STD = (62.993, 62.089, 66.705)

# airbench94's hyperparameters, in its decoupled form: lr and weight decay are per 1024 examples, and the
# Nesterov step is divided by 1 + 1/(1 - momentum), so each knob can be changed without retuning the others.
HYP = {
    "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bias_lr_scale": 64.0, "label_smoothing": 0.2,
    "lr_start": 0.2, "lr_peak_at": 0.23, "lr_end": 0.07,  # triangular schedule, as fractions of the peak lr
    "whiten_bias_epochs": 3,  # the whitening layer's bias trains this many epochs, then stays put
    "lookahead_start_epoch": 3, "lookahead_every": 5, "lookahead_decay": 0.95, "lookahead_pow": 3.0,
    "bn_momentum": 0.6, "translate": 2, "logit_scale": 1 / 9, "whiten_samples": 5000, "eval_batch": 2000,
}
# airbench94 itself on a GPU. On 2 CPU cores it trains at ~130 images/s, so the default there is the same net
# at a quarter of the width with a stride-2 whitening layer (non-overlapping 2x2 patches, a quarter of the
# pixels downstream): ~3,500 images/s. tta: 0 none, 1 + mirror, 2 + mirror and 1-pixel shifts.
MODELS = {
    "airbench94": {"width": 64, "stem_stride": 1, "tta": 2},
    "small": {"width": 16, "stem_stride": 2, "tta": 1},
}
DEFAULT_MODEL = {"cuda": "airbench94", "cpu": "small"}


class DataError(Exception):
    """A data file is missing or unreadable; the message names the file."""


# --------------------------------------------------------------------------------------------------- data

def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """images (N, 32, 32, 3) uint8 and labels (N,) int64 from one shard; DataError names the file otherwise."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"corrupt data file {path}: {type(exc).__name__}: {exc}".replace("\n", " ")) from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"corrupt data file {path}: images are {images.dtype} {images.shape}, "
                        "not uint8 N x 32 x 32 x 3")
    if labels.shape != (len(images),) or (len(labels) and int(labels.max()) > 9):
        raise DataError(f"corrupt data file {path}: labels {labels.dtype} {labels.shape} do not match the images")
    return images, labels.astype(np.int64)


def load_cifar10(data_dir: Path, max_train_samples: Optional[int] = None):
    """(train_images, train_labels, test_images, test_labels) as numpy arrays. The shards interleave the
    classes (record i has label i % 10), so the first N training records are a class-balanced subset."""
    parts = [load_npz(data_dir / name) for name in TRAIN_FILES]
    test_images, test_labels = load_npz(data_dir / TEST_FILE)
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    if max_train_samples:
        train_images, train_labels = train_images[:max_train_samples], train_labels[:max_train_samples]
    return train_images, train_labels, test_images, test_labels


def to_tensor(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NHWC -> normalised NCHW; moved as uint8 (4x fewer bytes than float) and converted on the device."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def epoch_plan(n: int, epoch: int, generator: torch.Generator, base_flips: torch.Tensor, translate: int):
    """This epoch's sample order and per-sample translations, drawn from a generator every rank seeds alike,
    so all ranks agree on which samples form each global batch and how each is augmented. Flips alternate:
    a random half of the images is mirrored on even epochs, the other half on odd ones (airbench)."""
    order = torch.randperm(n, generator=generator)
    shifts = torch.randint(0, 2 * translate + 1, (n, 2), generator=generator)
    flips = base_flips ^ bool(epoch % 2)
    return order, shifts, flips


def rank_batches(order: torch.Tensor, global_batch: int, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's index batches for one epoch: every world-th index of the (truncated) order, as
    DistributedSampler does, cut into per-rank batches. Step i's batches over all ranks are exactly
    order[i*global_batch:(i+1)*global_batch], the batch a single process takes at step i."""
    steps = len(order) // global_batch
    mine = order[: steps * global_batch][rank::world]
    return list(mine.split(global_batch // world))


def augmented_batch(padded: torch.Tensor, idx: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
                    size: int = 32) -> torch.Tensor:
    """Crop each padded image at its own offset and mirror it if flipped: one gather, no per-image loop."""
    ar = torch.arange(size, device=padded.device)
    rows = shifts[:, 0:1] + ar  # (b, size)
    cols = shifts[:, 1:2] + ar
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    channels = torch.arange(padded.shape[1], device=padded.device)
    return padded[idx[:, None, None, None], channels[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


# -------------------------------------------------------------------------------------------------- model

class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding="same", bias: bool = False):
        super().__init__(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        # Identity on the first cin output channels: each block starts close to a residual block.
        torch.nn.init.dirac_(self.weight.data[: min(self.in_channels, self.out_channels)])


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=1 - HYP["bn_momentum"])
        self.weight.requires_grad = False  # scale stays 1: only the biases train


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
        self.conv2, self.norm2, self.act = Conv(cout, cout), BatchNorm(cout), nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def make_net(width: int, stem_stride: int = 1) -> nn.Sequential:
    whiten_width = 2 * 3 * 2 * 2  # +/- each eigenvector of the 2x2x3 patch covariance
    whiten = Conv(3, whiten_width, kernel_size=2, padding=0, bias=True)
    whiten.stride = (stem_stride, stem_stride)  # 2: non-overlapping patches, a quarter of the pixels downstream
    net = nn.Sequential(
        whiten, nn.GELU(),
        ConvGroup(whiten_width, width), ConvGroup(width, 4 * width), ConvGroup(4 * width, 4 * width),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10, bias=False), Scale(HYP["logit_scale"]))
    net[0].weight.requires_grad = False  # fixed by init_whitening
    return net


@torch.no_grad()
def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the first conv to whiten 2x2 patches: its filters are the patch covariance's eigenvectors scaled by
    1/sqrt(eigenvalue), each with its negative, so the GELU after it keeps both signs."""
    c, (h, w) = images.shape[1], conv.weight.shape[2:]
    patches = images.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    eigenvalues, eigenvectors = eigenvalues.flip(0).float(), eigenvectors.T.flip(0).float()
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, h, w)
    conv.weight.copy_(torch.cat([filters, -filters]))


class Lookahead:
    """Slow copy of the weights pulled toward the fast ones every few steps and copied back (airbench's
    'lookahead' EMA): fast early progress, strong averaging late in the schedule."""

    def __init__(self, net: nn.Module):
        self.slow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, net: nn.Module, decay: float) -> None:
        for k, v in net.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(v, 1 - decay)
                v.copy_(self.slow[k])


def triangle(step: int, total: int) -> float:
    """LR multiplier: linear from lr_start up to 1 at lr_peak_at of the run, then down to lr_end."""
    peak = int(HYP["lr_peak_at"] * total)
    if step < peak:
        return HYP["lr_start"] + (1 - HYP["lr_start"]) * step / peak
    return 1 + (HYP["lr_end"] - 1) * (step - peak) / max(total - peak, 1)


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, tta: int) -> torch.Tensor:
    logits = net(x)
    if tta >= 1:
        logits = 0.5 * logits + 0.5 * net(x.flip(-1))
    if tta >= 2:
        padded = F.pad(x, (1, 1, 1, 1), "reflect")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]  # one pixel up-left and down-right
        shifted_logits = sum(0.5 * net(s) + 0.5 * net(s.flip(-1)) for s in shifted) / 2
        logits = 0.5 * logits + 0.5 * shifted_logits
    return logits


# ---------------------------------------------------------------------------------------------- training

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.cifar10", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, type=Path,
                   help="folder with cifar10_train_part0..4.npz and cifar10_test.npz")
    p.add_argument("--out-dir", required=True, type=Path, help="rank 0 writes metrics.json here")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--global-batch-size", type=int, default=1024,
                   help="summed over ranks; per-rank batch = this / world size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-train-samples", type=int, default=None, help="train on the first N records (class-balanced)")
    p.add_argument("--model", choices=["auto", *MODELS], default="auto",
                   help=f"auto: {DEFAULT_MODEL['cuda']} on CUDA, {DEFAULT_MODEL['cpu']} on CPU")
    args = p.parse_args(argv)
    if min(args.epochs, args.global_batch_size) < 1 or (args.max_train_samples is not None
                                                         and args.max_train_samples < 1):
        p.error("--epochs, --global-batch-size and --max-train-samples must be positive")
    return args


def train(args: argparse.Namespace, info: distributed.DistInfo, device: torch.device, backend: Optional[str]) -> dict:
    log = print if info.is_main else (lambda *a, **k: None)
    world = info.world_size
    if args.global_batch_size % world:
        raise SystemExit(f"--global-batch-size {args.global_batch_size} is not divisible by world size {world}")
    batch = args.global_batch_size // world
    cuda = device.type == "cuda"
    model_name = DEFAULT_MODEL[device.type] if args.model == "auto" else args.model
    width, stem_stride, tta = (MODELS[model_name][k] for k in ("width", "stem_stride", "tta"))
    # fp16 autocast on GPU (fp32 master weights); fp32 on CPU, where half precision is no faster.
    amp_dtype = torch.float16 if cuda else None
    store_dtype = torch.float16 if cuda else torch.float32
    if cuda:
        torch.backends.cudnn.benchmark = True

    t0 = time.perf_counter()
    try:
        train_np, train_labels_np, test_np, test_labels_np = load_cifar10(args.data_dir, args.max_train_samples)
    except DataError as exc:
        raise SystemExit(f"cifar10: {exc}")
    n_train = len(train_np)
    steps_per_epoch = n_train // args.global_batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"{n_train} training samples are fewer than one global batch of {args.global_batch_size}")
    train_x = to_tensor(train_np, device, store_dtype)
    train_y = torch.from_numpy(train_labels_np).to(device)
    test_x = to_tensor(test_np, device, store_dtype)
    test_y = torch.from_numpy(test_labels_np).to(device)
    pad = HYP["translate"]
    train_padded = F.pad(train_x, (pad,) * 4, "reflect")
    data_seconds = time.perf_counter() - t0

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    net = make_net(width, stem_stride)
    init_whitening(net[0], train_x[: HYP["whiten_samples"]].cpu())
    net = net.to(device).to(memory_format=torch.channels_last)
    param_count = sum(p.numel() for p in net.parameters())

    momentum = HYP["momentum"]
    lr = HYP["lr"] / (1024 * (1 + 1 / (1 - momentum)))  # per-sample-sum loss, so the batch size scales the step
    wd = HYP["weight_decay"] * args.global_batch_size / (1024 * (1 + 1 / (1 - momentum)))
    bn_biases = [m.bias for m in net.modules() if isinstance(m, BatchNorm)]
    whiten_bias = [net[0].bias]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in bn_biases + whiten_bias)]
    lr_bias = lr * HYP["bias_lr_scale"]
    # torch's SGD multiplies weight_decay by lr, so wd/lr keeps the decay per step independent of lr.
    groups = [dict(params=bn_biases, lr=lr_bias, weight_decay=wd / lr_bias, base_lr=lr_bias, role="bn_bias"),
              dict(params=whiten_bias, lr=lr, weight_decay=wd / lr, base_lr=lr, role="whiten_bias"),
              dict(params=others, lr=lr, weight_decay=wd / lr, base_lr=lr, role="other")]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)

    # No per-step buffer broadcast: BatchNorm statistics are per rank while training, and rank 0's are
    # broadcast once before evaluation.
    model = DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                    broadcast_buffers=False, gradient_as_bucket_view=True) if info.distributed else net
    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else torch.autocast("cpu", enabled=False)

    warmup_seconds = 0.0
    if cuda:
        # cuDNN autotuning, NCCL communicator setup and CUDA lazy init happen on a throwaway copy, so
        # train_seconds is the training itself (they are in total_seconds and warmup_seconds).
        t = time.perf_counter()
        warm = make_net(width, stem_stride).to(device).to(memory_format=torch.channels_last)
        warm_model = (DistributedDataParallel(warm, device_ids=[device.index], broadcast_buffers=False)
                      if info.distributed else warm)
        warm_opt = torch.optim.SGD(warm.parameters(), lr=0.0, momentum=momentum, nesterov=True)
        xb = torch.randn(batch, 3, 32, 32, device=device, dtype=store_dtype).to(memory_format=torch.channels_last)
        yb = torch.randint(0, 10, (batch,), device=device)
        for _ in range(3):
            with autocast():
                loss_fn(warm_model(xb), yb).sum().backward()
            warm_opt.step()
            warm_opt.zero_grad(set_to_none=True)
        warm.eval()
        with autocast():
            shard = math.ceil(len(test_x) / world)
            for n in {min(HYP["eval_batch"], shard), shard % HYP["eval_batch"]} - {0}:  # the eval batch shapes
                predict(warm, torch.randn(n, 3, 32, 32, device=device, dtype=store_dtype), tta)
        del warm_model, warm, warm_opt
        torch.cuda.synchronize()
        distributed.barrier(info, device)
        warmup_seconds = time.perf_counter() - t

    generator = torch.Generator().manual_seed(args.seed)
    base_flips = (torch.rand(n_train, generator=generator) < 0.5)
    total_steps = steps_per_epoch * args.epochs
    lookahead: Optional[Lookahead] = None
    loss_curve: list[float] = []
    step = 0
    # The loop's own record, per rank: what was trained, not what was asked for.
    samples_local = optimizer_steps = epochs_completed = 0

    # Each rank samples its own GPU (NVML, background thread); rank 0 collects them after training.
    sampler = GpuUtilizationSampler(device.index) if cuda else None
    if sampler:
        sampler.start()
    distributed.barrier(info, device)
    if cuda:
        torch.cuda.synchronize()
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        order, shifts, flips = epoch_plan(n_train, epoch, generator, base_flips, pad)
        batches = rank_batches(order.to(device), args.global_batch_size, info.rank, world)
        shifts, flips = shifts.to(device), flips.to(device)
        for g in optimizer.param_groups:
            if g["role"] == "whiten_bias":
                g["active"] = epoch < HYP["whiten_bias_epochs"]
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        for idx in batches:
            x = augmented_batch(train_padded, idx, shifts[idx], flips[idx])
            x = x.contiguous(memory_format=torch.channels_last)
            factor = triangle(step, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor * (0.0 if g.get("active") is False else 1.0)
            with autocast():
                losses = loss_fn(model(x), train_y[idx])
            # DDP averages gradients over ranks; scaling by world makes that the sum over the global batch,
            # exactly what one process computes at world size 1.
            (losses.sum() * world).backward()
            optimizer.step()
            optimizer_steps += 1
            samples_local += len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss_sum += losses.detach().float().sum()
            step += 1
            if epoch >= HYP["lookahead_start_epoch"] and step % HYP["lookahead_every"] == 0:
                if lookahead is None:
                    lookahead = Lookahead(net)
                else:
                    decay = (HYP["lookahead_decay"] ** HYP["lookahead_every"]
                             * (step / total_steps) ** HYP["lookahead_pow"])
                    lookahead.update(net, decay)
        if lookahead is not None:
            lookahead.update(net, 1.0)  # end each epoch on the slow weights
        epochs_completed += 1
        epoch_loss = distributed.all_reduce_sum(loss_sum, info).item() / (steps_per_epoch * args.global_batch_size)
        loss_curve.append(round(epoch_loss, 6))
        log(f"epoch {epoch + 1}/{args.epochs}  loss {epoch_loss:.4f}  "
            f"elapsed {time.perf_counter() - t_train:.1f}s", flush=True)
    if cuda:
        torch.cuda.synchronize()
    distributed.barrier(info, device)
    train_seconds = time.perf_counter() - t_train
    per_gpu = [{"rank": info.rank, "device_index": device.index, "utilization": sampler.stop(),
                "note": sampler.note, "driver_version": sampler.driver_version}] if sampler else [None]
    if info.distributed:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, per_gpu[0])
        per_gpu = gathered
    utilisation = aggregate_utilisation(per_gpu) if cuda else None
    # Each rank's own view (its process group's world size and backend, its device, its counts), gathered.
    records = distributed.gather_records(distributed.rank_record(
        device, samples_trained=samples_local, optimizer_steps=optimizer_steps, epochs_completed=epochs_completed))
    ranks = distributed.summarize_ranks(records)

    # Every rank's parameters against rank 0's: zero means DDP kept the replicas identical.
    flat = torch.cat([p.detach().float().reshape(-1) for p in net.parameters()])
    divergence = distributed.max_divergence(flat, info)

    t_eval = time.perf_counter()
    if info.distributed:
        for b in net.buffers():  # evaluate rank 0's BatchNorm statistics on every shard of the test set
            torch.distributed.broadcast(b, src=0)
    net.eval()
    shard_x, shard_y = test_x[info.rank::world], test_y[info.rank::world]
    correct = torch.zeros((), device=device, dtype=torch.int64)
    with autocast():
        for xb, yb in zip(shard_x.split(HYP["eval_batch"]), shard_y.split(HYP["eval_batch"])):
            correct += (predict(net, xb.contiguous(memory_format=torch.channels_last), tta).argmax(1) == yb).sum()
    correct = int(distributed.all_reduce_sum(correct, info).item())
    eval_seconds = time.perf_counter() - t_eval

    samples = sum(r["samples_trained"] for r in records)  # over all ranks, as each rank counted them
    accuracy = correct / len(test_y)
    log(f"test accuracy {accuracy:.4f}  train {train_seconds:.1f}s  params in sync: {divergence == 0.0}", flush=True)
    return {
        "task": TASK,
        "test_accuracy": accuracy,
        "test_correct": correct,
        "test_samples": len(test_y),
        "train_seconds": round(train_seconds, 3),
        "total_seconds": None,  # filled in by main, just before writing
        "data_load_seconds": round(data_seconds, 3),
        "warmup_seconds": round(warmup_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "epochs": args.epochs,
        "epochs_completed": records[0]["epochs_completed"],
        # Counted by the loop (rank 0; ranks_consistent and rank_counts show the others), not planned.
        "steps": records[0]["optimizer_steps"],
        "optimizer_steps": records[0]["optimizer_steps"],
        "samples_trained": samples,
        "rank_counts": [{k: r[k] for k in ("rank", "samples_trained", "optimizer_steps", "epochs_completed")}
                        for r in sorted(records, key=lambda r: r["rank"])],
        "global_batch_size": args.global_batch_size,
        "per_rank_batch_size": batch,
        "train_samples": n_train,
        "max_train_samples": args.max_train_samples,
        "seed": args.seed,
        **ranks,  # world_size, backend (measured in the ranks), ranks_reporting, rank_devices, ...
        "launcher": info.launcher,
        "launcher_world_size": world,
        "backend_requested": backend,
        "device": device.type,
        "device_name": distributed.device_name(device),
        "cpu_threads_per_rank": torch.get_num_threads(),
        "samples_per_second": round(samples / train_seconds, 1),
        "loss_curve": loss_curve,
        "gpu_utilization": utilisation,
        "gpu_utilization_per_gpu": per_gpu if cuda else None,
        "gpu_utilization_note": ("NVML utilization.gpu sampled every 0.1 s during the training loop on each "
                                 "rank's GPU; mean_percent is the mean of the per-GPU means") if cuda
                                else "CPU run: no GPU to sample",
        "driver_version": per_gpu[0]["driver_version"] if cuda and per_gpu[0] else None,
        "params_in_sync": divergence == 0.0,
        "max_param_divergence": divergence,
        "param_count": param_count,
        "model": {"name": model_name, "width": width, "stem_stride": stem_stride, "tta_level": tta,
                  "precision": "fp16 autocast" if cuda else "fp32"},
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "hostname": socket.gethostname(),
    }


def aggregate_utilisation(per_gpu: list) -> Optional[dict]:
    """One figure for the job: mean of the per-GPU means, max over GPUs, total samples (None if none)."""
    sampled = [g["utilization"] for g in per_gpu if g and g.get("utilization")]
    if not sampled:
        return None
    return {"mean_percent": round(sum(u["mean_percent"] for u in sampled) / len(sampled), 2),
            "max_percent": max(u["max_percent"] for u in sampled),
            "samples": sum(u["samples"] for u in sampled), "gpus": len(sampled)}


def main(argv=None) -> int:
    args = parse_args(argv)
    info = distributed.discover()
    device = distributed.pick_device(args.device, info)
    if device.type == "cpu":
        torch.set_num_threads(distributed.cpu_threads(info))
    backend = distributed.init(info, device)
    try:
        metrics = train(args, info, device, backend)
        if info.is_main:
            # Which bytes were trained on: the stack checks the same files against the datasets' SHA256SUMS.
            metrics["data_sha256"] = {name: sha256_file(args.data_dir / name) for name in TRAIN_FILES + [TEST_FILE]}
            metrics["total_seconds"] = round(time.perf_counter() - PROCESS_START, 3)
            write_json_atomic(args.out_dir / "metrics.json", metrics)
            print(f"wrote {args.out_dir / 'metrics.json'}", flush=True)
    finally:
        distributed.shutdown(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
