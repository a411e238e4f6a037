"""What both KServe predictors share: their command line, fetching the model from its storage URI the way
KServe's storage initializer does (kserve-storage, s3:// through AWS_ENDPOINT_URL), binding the address the
deployment asks for, and the load timings they report.

KServe's REST server hard-codes host 0.0.0.0 (kserve/protocol/rest/server.py). On the embedded default nothing
may listen beyond loopback, so `--host` (default 127.0.0.1) deliberately replaces it before uvicorn binds; inside a
Kubernetes pod the InferenceService passes `--host 0.0.0.0`.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from workloads.metrics_io import write_json_atomic

PROCESS_STARTED = time.time()


class ModelFetchError(RuntimeError):
    """The model could not be fetched from its storage URI; the message names the URI."""


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-name", required=True, help="name in the V1/V2 paths (/v1/models/NAME:predict)")
    p.add_argument("--storage-uri", required=True,
                   help="where the model is: s3://bucket/prefix (MinIO via AWS_ENDPOINT_URL), or a local path")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (a Kubernetes pod passes 0.0.0.0)")
    p.add_argument("--model-dir", default=None, help="where the model is downloaded to (default: a temp folder)")
    p.add_argument("--metrics-file", type=Path, default=None,
                   help="written once the model is loaded: download and load timings (JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return p


def fetch(storage_uri: str, model_dir: Optional[str]) -> tuple[Path, float]:
    """Download the model as KServe's storage initializer would; returns the local folder and the seconds taken."""
    started = time.perf_counter()
    if "://" not in storage_uri:  # a local path (a mounted volume, or the GPU bench without MinIO)
        path = Path(storage_uri)
        if not path.exists():
            raise ModelFetchError(f"model {storage_uri} not found (no such file or folder)")
        return path, time.perf_counter() - started
    from kserve_storage import Storage

    out_dir = model_dir or tempfile.mkdtemp(prefix="kserve-model-")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        local = Storage.download(storage_uri, out_dir)
    except Exception as exc:  # kserve-storage raises bare RuntimeError/botocore errors: name the URI
        raise ModelFetchError(f"cannot fetch model {storage_uri}: {type(exc).__name__}: {exc}") from None
    path = Path(local or out_dir)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise ModelFetchError(f"model {storage_uri} not found (nothing was downloaded)")
    return path, time.perf_counter() - started


def write_load_metrics(path: Optional[Path], **figures) -> dict:
    metrics = {"pid": os.getpid(), "process_started_at": PROCESS_STARTED,
               "process_start_to_loaded_seconds": round(time.time() - PROCESS_STARTED, 3), **figures}
    if path:
        write_json_atomic(path, metrics)
    return metrics


def bind_host(host: str) -> None:
    """Make KServe's REST server bind HOST instead of its hard-coded 0.0.0.0 (see the module docstring)."""
    from kserve.protocol.rest import server as rest_server

    original_init = rest_server.RESTServer.__init__
    if getattr(original_init, "_binds", None) == host:
        return

    def init_with_host(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.config.host = host

    init_with_host._binds = host  # type: ignore[attr-defined]
    rest_server.RESTServer.__init__ = init_with_host


def count_requests(model) -> None:
    """Count MODEL's inference requests by outcome on its /metrics (`predictor_requests_total{model_name, outcome}`:
    ok, invalid for a rejected request (4xx), error for a failure of the server (5xx)): KServe exports latency
    histograms but no errors, and the error-rate alert (monitoring/rules/) needs both."""
    import functools

    from kserve.errors import InvalidInput
    from prometheus_client import Counter

    requests = Counter("predictor_requests", "inference requests by outcome", ["model_name", "outcome"])
    for outcome in ("ok", "invalid", "error"):
        requests.labels(model.name, outcome)  # every outcome exported from the start, at 0
    predict = model.predict

    @functools.wraps(predict)
    async def predict_counted(*args, **kwargs):
        outcome = "error"
        try:
            result = await predict(*args, **kwargs)
            outcome = "ok"
            return result
        except InvalidInput:
            outcome = "invalid"
            raise
        finally:
            requests.labels(model.name, outcome).inc()

    model.predict = predict_counted


def answer_bad_bodies_with_4xx() -> None:
    """A body FastAPI cannot validate is answered 422 with the reasons, never 500. FastAPI's own answer echoes the
    input, and a JSON body of NaN or Infinity then fails to render (500 "Out of range float values are not JSON
    compliant"; found by tests/workloads/test_serving_fuzz.py), so the reasons go back without the input."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    async def invalid_body(_request, exc: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                            for e in exc.errors()[:5])
        return JSONResponse(status_code=422, content={"error": f"invalid request body: {reasons}"})

    app.add_exception_handler(RequestValidationError, invalid_body)


def serve(model, host: str, http_port: int) -> None:
    """Run KServe's ModelServer (REST only, one worker) with MODEL, on HOST:PORT."""
    from kserve import ModelServer

    bind_host(host)
    count_requests(model)
    answer_bad_bodies_with_4xx()
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # one line a request otherwise
    ModelServer(http_port=http_port, enable_grpc=False, workers=1).start([model])
