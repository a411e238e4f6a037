"""MLOPS-4.1 / 4.2 measurement: the locust load test (workloads/serving/load_generator.py) against a running
predictor, re-run whenever the predictor is replaced. Before the load, a few malformed requests check that bad
input is answered 4xx with a message, never 5xx."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from stacks.local.model_server import Predictor
from stacks.local.process import LocalRun


@dataclass
class LoadTestArgs:
    predictor: Predictor
    example: str  # the request body: mnist-v1 | mnist-v2 | llm-v1 | llm-v2 (workloads/serving/load_generator.py)
    model_name: str
    stages: list[str]  # users=N[,rate=R]
    stage_seconds: float
    timeout_s: float = 30.0


class LoadTest(pulumi.ComponentResource):
    result: pulumi.Output[dict]

    def __init__(self, name: str, args: LoadTestArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:serving:LoadTest", name, None, opts)
        stage_args = [a for s in args.stages for a in ("--stage", s)]
        run = LocalRun(f"{name}-locust", {
            "name": f"load test of {args.model_name}", "module": "workloads.serving.load_generator",
            "args": args.predictor.url.apply(lambda url: [
                "--url", url, "--model-name", args.model_name, "--example", args.example,
                "--seconds", str(args.stage_seconds), "--timeout", str(args.timeout_s), *stage_args]),
            "predictor": args.predictor.daemon.id,
            "timeout_s": int(len(args.stages) * (args.stage_seconds + 60) + 120),
        }, pulumi.ResourceOptions(parent=self))
        self.result = run.result
        self.register_outputs({"result": self.result})
