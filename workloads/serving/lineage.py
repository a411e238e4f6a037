"""MLOPS-5.1 lineage check: the deployed predictor answers the fixed inputs exactly as the training job's own model
did (workloads/mnist.py writes predictions.json: digits and logits on the first N test images).

    python -m workloads.serving.lineage --url http://127.0.0.1:PORT --model-name mnist-registry \
        --data-dir DIR --predictions predictions.json --out lineage.json

It sends the same N images (uint8 pixel / 255, as the job fed them) to the predictor's V2 endpoint in one request
and compares its `digit` and `logits` outputs with the job's: predictions_match_fraction (digits equal) and
max_logit_abs_diff (float32 logits; 0 when the same file runs on the same kind of device).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from workloads.metrics_io import write_json_atomic


def fixed_inputs(data_dir: str, count: int) -> np.ndarray:
    """The first COUNT MNIST test images as float32 [N, 784] in [0, 1], exactly as the training job computed them."""
    from workloads.evaluate_mnist import load_test_set

    images, _ = load_test_set(data_dir)
    return images[:count].unsqueeze(1).float().div_(255).reshape(count, 784).numpy()


def infer(url: str, model_name: str, images: np.ndarray, timeout_s: float = 60.0) -> tuple[list[int], np.ndarray]:
    """The predictor's digits and logits for IMAGES, through its V2 (Open Inference Protocol) endpoint."""
    body = {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.reshape(-1).tolist()}]}
    req = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{model_name}/infer", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        outputs = {o["name"]: o for o in json.loads(resp.read())["outputs"]}
    logits = np.asarray(outputs["logits"]["data"], dtype=np.float32).reshape(outputs["logits"]["shape"])
    return [int(d) for d in outputs["digit"]["data"]], logits


def compare(url: str, model_name: str, images: np.ndarray, reference: dict) -> dict:
    """The predictor's answers on IMAGES against the reference (predictions.json)."""
    started = time.perf_counter()
    digits, logits = infer(url, model_name, images)
    expected = np.asarray(reference["logits"], dtype=np.float32)
    same = sum(int(a == b) for a, b in zip(digits, reference["digits"]))
    return {"predictions_compared": len(digits), "predictions_equal": same,
            "predictions_match_fraction": round(same / len(reference["digits"]), 6) if reference["digits"] else None,
            "max_logit_abs_diff": float(np.abs(logits - expected).max()) if logits.shape == expected.shape else None,
            "reference_device": reference.get("device"), "verify_seconds": round(time.perf_counter() - started, 3),
            "verified_at": time.time()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="compare a predictor's answers with the training job's own")
    p.add_argument("--url", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--data-dir", required=True, help="the MNIST folder the training job read")
    p.add_argument("--predictions", required=True, type=Path, help="the training job's predictions.json")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        reference = json.loads(args.predictions.read_text())
        result = compare(args.url, args.model_name, fixed_inputs(args.data_dir, reference["count"]), reference)
    except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
        print(f"error: lineage check against {args.url} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
