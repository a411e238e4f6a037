"""The locust user for the serving load tests (driven by workloads/serving/load_generator.py through environment
variables, so the same file serves every stage): each user POSTs one request body to one path, either as fast as
the server answers (closed loop) or at a fixed rate per user (constant_throughput).

A request succeeds only when the predictor answered correctly: a 2xx whose body is a JSON object holding the
key SERVING_EXPECT_KEY (`predictions` for V1 :predict, `outputs` for V2 /infer; empty: any 2xx). Anything else, a
non-2xx, a connection error, a timeout or a 2xx without the answer, is a failure. Every request's outcome is
appended to SERVING_REQUEST_LOG (one JSON object a line: start time, latency, status, ok, and the model version that
served it where MLOPS-5.2's router says), which the load generator reads for the latencies of the successful requests
and the error figures.
"""
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, events, task

BODY = Path(os.environ["SERVING_BODY_FILE"]).read_bytes()
PATH = os.environ["SERVING_PATH"]
RATE_PER_USER = float(os.environ.get("SERVING_RATE_PER_USER", "0"))
TIMEOUT_S = float(os.environ.get("SERVING_TIMEOUT_S", "30"))
EXPECT_KEY = os.environ.get("SERVING_EXPECT_KEY", "")
REQUEST_LOG = os.environ.get("SERVING_REQUEST_LOG")
SERVED_BY = "x-served-by-version"  # MLOPS-5.2's router names the version that answered (workloads/serving/pipeline.py)

# Line-buffered: a run stopped by a signal (MLOPS-5.2's open-ended load) keeps every request it made.
_log = open(REQUEST_LOG, "a", encoding="utf-8", buffering=1) if REQUEST_LOG else None


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, response=None, start_time=None,
            **kwargs):
    if _log is None:
        return
    status = getattr(response, "status_code", None) or 0
    headers = getattr(response, "headers", None) or {}
    _log.write(json.dumps({"start": start_time, "ms": round(float(response_time or 0.0), 3), "status": status,
                           "served_by": headers.get(SERVED_BY), "ok": exception is None,
                           "error": None if exception is None else f"{type(exception).__name__}: {exception}"[:300]})
               + "\n")


@events.test_stop.add_listener
def _flush(environment, **kwargs):
    if _log is not None:
        _log.flush()


@events.quitting.add_listener
def _close(environment, **kwargs):
    if _log is not None:
        _log.flush()
        _log.close()


def answered(status: int, text: str) -> str:
    """'' when the answer is correct, else why not."""
    if not 200 <= status < 300:
        return f"HTTP {status}" if status else "no response"
    if not EXPECT_KEY:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status} but the body is not JSON"
    if not isinstance(body, dict) or EXPECT_KEY not in body:
        return f"HTTP {status} but the body has no {EXPECT_KEY!r}"
    return ""


class InferenceUser(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER) if RATE_PER_USER > 0 else constant(0)
    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S

    @task
    def infer(self) -> None:
        with self.client.post(PATH, data=BODY, headers={"Content-Type": "application/json"}, name=PATH,
                              catch_response=True) as resp:
            if resp.status_code and 200 <= resp.status_code < 300:
                why = answered(resp.status_code, resp.text or "")
                if why:
                    resp.failure(why)
                else:
                    resp.success()
            # else: locust marks a non-2xx or a connection error failed by itself, with its own reason
