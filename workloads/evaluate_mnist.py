"""Re-evaluate an exported MNIST model on the 10,000 test images with nothing but torch and the TorchScript file.

    python -m workloads.evaluate_mnist --model OUT/model.pt --data-dir DIR

Prints {"accuracy": ...} as JSON. It deliberately imports none of the training code (workloads.mnist): the
file's own graph, plus the input convention below, must be enough to reproduce the reported accuracy.
Input convention (also written into metrics.json): float32 [N, 1, 28, 28], pixel / 255 in [0, 1]; the
model normalises internally and returns logits [N, 10].
"""
from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
import warnings

import torch

# TorchScript is the agreed exchange format; torch >= 2.10 flags torch.jit as deprecated, which is noise here.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)


def _read_idx(path: str, magic: int) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = magic & 0xFF
    found, *dims = struct.unpack(f">{1 + ndim}I", data[: 4 * (1 + ndim)])
    if found != magic or len(data) != 4 * (1 + ndim) + _prod(dims):
        raise ValueError(f"{path}: not an IDX file with magic {magic} and a payload matching its header")
    return torch.frombuffer(bytearray(data[4 * (1 + ndim):]), dtype=torch.uint8).reshape(dims)


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def load_test_set(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(f"{data_dir}/t10k-images-idx3-ubyte.gz", 2051)
    labels = _read_idx(f"{data_dir}/t10k-labels-idx1-ubyte.gz", 2049)
    return images, labels.long()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: torch.device, batch_size: int = 1000) -> float:
    """Accuracy of `model` on uint8 images [N, 28, 28]. Training code uses this too, so both numbers agree."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).unsqueeze(1).float().div_(255)
        correct += int((model(x).argmax(1) == labels[i:i + batch_size].to(device)).sum())
    return correct / len(images)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="TorchScript file written by workloads.mnist (model.pt)")
    p.add_argument("--data-dir", required=True, help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    device = pick_device(args.device)
    try:
        images, labels = load_test_set(args.data_dir)
    except (OSError, EOFError, ValueError, struct.error, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = torch.jit.load(args.model, map_location=device)
    accuracy = evaluate(model, images, labels, device)
    print(json.dumps({"accuracy": accuracy, "test_samples": len(labels), "device": device.type, "model": args.model}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
