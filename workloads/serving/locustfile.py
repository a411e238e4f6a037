"""The locust user for the serving load tests (driven by workloads/serving/load_test.py through environment
variables, so the same file serves every stage): each user POSTs one request body to one path, either as fast as
the server answers (closed loop) or at a fixed rate per user (constant_throughput)."""
import os
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, task

BODY = Path(os.environ["SERVING_BODY_FILE"]).read_bytes()
PATH = os.environ["SERVING_PATH"]
RATE_PER_USER = float(os.environ.get("SERVING_RATE_PER_USER", "0"))
TIMEOUT_S = float(os.environ.get("SERVING_TIMEOUT_S", "30"))


class InferenceUser(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER) if RATE_PER_USER > 0 else constant(0)
    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S

    @task
    def infer(self) -> None:
        # Any non-2xx answer and any connection error counts as a failure (locust's default).
        self.client.post(PATH, data=BODY, headers={"Content-Type": "application/json"}, name=PATH)
