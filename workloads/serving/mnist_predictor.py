"""MLOPS-4.1: the KServe predictor for the MNIST TorchScript model (CPU).

    python -m workloads.serving.mnist_predictor --model-name mnist --storage-uri s3://models/mnist/<sha> \
        --http-port 8080 [--host 127.0.0.1] [--metrics-file load.json]

Input, as the training job recorded it (workloads/mnist.py): float32 pixels in [0, 1], one image as 784 values,
28x28 or 1x28x28. V1: {"instances": [image, ...]} -> {"predictions": [digit, ...]}; V2 (Open Inference Protocol):
one FP32 input of shape [N, 784], [N, 28, 28] or [N, 1, 28, 28] -> outputs "digit" (INT64 [N]) and "logits" (FP32
[N, 10]). Anything else is answered 400 with the reason, never 500.
"""
from __future__ import annotations

import sys
import uuid
import time
import warnings
from typing import Optional, Union

import numpy as np

warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)

import kserve  # noqa: E402
import torch  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse  # noqa: E402

from workloads.metrics_io import sha256_file  # noqa: E402
from workloads.serving.server import ModelFetchError, base_parser, fetch, serve, write_load_metrics  # noqa: E402

MAX_BATCH = 1024
IMAGE_SHAPES = {(784,), (28, 28), (1, 28, 28)}


def to_batch(array: np.ndarray) -> torch.Tensor:
    """A validated [N, 1, 28, 28] float32 tensor, or InvalidInput saying what is wrong."""
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"expected numbers, got {array.dtype} values")
    if array.ndim == 0 or tuple(array.shape[1:]) not in IMAGE_SHAPES:
        raise InvalidInput(f"each instance must be 784 values, 28x28 or 1x28x28 (got batch shape {list(array.shape)})")
    if not 1 <= array.shape[0] <= MAX_BATCH:
        raise InvalidInput(f"batch size must be 1..{MAX_BATCH} (got {array.shape[0]})")
    batch = array.astype(np.float32, copy=False).reshape(-1, 1, 28, 28)
    if not np.isfinite(batch).all():
        raise InvalidInput("pixel values must be finite")
    return torch.from_numpy(np.ascontiguousarray(batch))


def instances_array(instances) -> np.ndarray:
    try:
        array = np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"instances must be equally sized lists of numbers ({exc})") from None
    return array


class MnistModel(kserve.Model):
    def __init__(self, name: str, storage_uri: str, model_dir: Optional[str], model_file: Optional[str] = None):
        super().__init__(name)
        self.storage_uri, self.model_dir, self.model_file = storage_uri, model_dir, model_file
        self.model: Optional[torch.jit.ScriptModule] = None
        self.timings: dict = {}

    def load(self) -> bool:
        local, download_s = fetch(self.storage_uri, self.model_dir)
        if local.is_file():
            path = local
        elif self.model_file:  # a registered model's folder names its TorchScript file (extra_files/model.pt)
            path = local / self.model_file if (local / self.model_file).is_file() else None
        else:
            path = next(iter(sorted(local.rglob("*.pt"))), None)
        if path is None:
            raise ModelFetchError(f"no TorchScript {self.model_file or '*.pt'} file under {self.storage_uri}")
        started = time.perf_counter()
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.inference_mode():
            self.model(torch.zeros(1, 1, 28, 28))  # the first call compiles the TorchScript graph
        self.timings = {"download_seconds": round(download_s, 3),
                        "model_load_seconds": round(time.perf_counter() - started, 3),
                        "model_file": str(path), "model_bytes": path.stat().st_size,
                        "model_sha256": sha256_file(path)}  # what is served, for the lineage check (MLOPS-5.1)
        self.ready = True
        return self.ready

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch)

    async def predict(self, payload: Union[dict, InferRequest], headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            if len(payload.inputs) != 1:
                raise InvalidInput(f"expected exactly one input tensor, got {len(payload.inputs)}")
            infer_input: InferInput = payload.inputs[0]
            try:
                array = infer_input.as_numpy()
            except Exception as exc:  # wrong datatype/shape combination in the request
                raise InvalidInput(f"input {infer_input.name!r}: {exc}") from None
            logits = self._infer(to_batch(array)).numpy()
            outputs = [InferOutput(name="digit", shape=[len(logits)], datatype="INT64"),
                       InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")]
            outputs[0].set_data_from_numpy(logits.argmax(axis=1).astype(np.int64), binary_data=False)
            outputs[1].set_data_from_numpy(logits.astype(np.float32), binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()))
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput('expected a JSON object with "instances": [image, ...]')
        logits = self._infer(to_batch(instances_array(payload["instances"])))
        return {"predictions": logits.argmax(dim=1).tolist()}


def main(argv: list[str] | None = None) -> int:
    p = base_parser("KServe predictor for the MNIST TorchScript model")
    # One intra-op thread by default: a 28x28 image is too small to split, and spare threads spinning beside the
    # server's event loop (and a load generator on the same cores) cost more than they give.
    p.set_defaults(threads=1)
    p.add_argument("--model-file", help="the TorchScript file inside the fetched folder (default: the first *.pt)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = MnistModel(args.model_name, args.storage_uri, args.model_dir, args.model_file)
    try:
        model.load()
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    write_load_metrics(args.metrics_file, **model.timings, torch_threads=torch.get_num_threads())
    serve(model, args.host, args.http_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
