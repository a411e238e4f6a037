"""MLOPS-5.2: the pipeline that runs with no person in the loop. Registering a new version of the model in MLflow
triggers it; it gates the candidate against the champion, promotes it by alias, rolls the predictor out behind a
stable endpoint and rolls back on its own.

    python -m workloads.serving.pipeline controller --tracking-uri http://127.0.0.1:PORT --name mnist-cnn \
        --artifacts-destination s3://mlflow-artifacts --data-dir MNIST --router-port P --backend-ports A,B \
        --state-dir DIR
    python -m workloads.serving.pipeline scenario --router http://127.0.0.1:P --tracking-uri ... --name mnist-cnn \
        --good good.pt --bad bad.pt --stage users=2,rate=20 --out scenario.json

`controller` is one long-running process, as a KServe InferenceService's controller and ingress are:
- the router: a reverse proxy on --router-port (what clients call; /router/status and /router/healthz are its own)
  forwarding every request to the predictor that serves now; a switch is an atomic change of that backend, and
  the old backend is stopped only when its requests in flight have drained;
- the watcher: polls the registry (MlflowClient.search_model_versions every --poll-seconds; this MLflow has no
  webhooks for model versions) and handles every version newer than those it found at start, in order:
  1. gate: the candidate's and the champion's registered TorchScript files, downloaded from the registry, are
     evaluated on the held-out MNIST test set; mlflow.validate_evaluation_results with a MetricThreshold on
     accuracy (at least --min-accuracy, and no more than --max-drop below the champion's, measured here) decides.
     The verdict is tagged on the version (validation_status, accuracies). A failed gate leaves the alias where
     it was: the champion keeps serving (outcome `rejected`).
  2. promotion: alias --alias to the candidate, `previous` to the old champion;
  3. rollout: a predictor for `models:/<name>@<alias>` starts on the free backend port (fetching from MinIO),
     the router switches to it once it is ready, the old predictor stays warm for --bake-seconds;
  4. rollback: if the new predictor's error rate over the bake rises above --max-error-rate (at least
     --min-failures failed requests), the router switches back, the alias returns to the old version, the new
     predictor is stopped (outcome `rolled_back`); else the old one is drained and stopped (outcome `serving`).

`scenario` drives it as a user would, under a locust load test through the router: registers a good candidate
(expected: serving), a deliberately bad one (expected: rejected by the gate) and the good one again with a fault
injected after its rollout (its predictor killed: expected rolled_back), and measures trigger-to-serving, failed
requests during each rollout and the rollback time from the locust log and the controller's own timeline.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from workloads.metrics_io import write_json_atomic
from workloads.runtime import http_ok

SERVED_NAME = "mnist"  # the model name in the predictors' V1/V2 paths, the same for every version


# -- the router ---------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """One predictor behind the router: the version it serves and what the router saw of it."""

    version: int
    url: str
    port: int = 0
    pid: Optional[int] = None
    process: Optional[subprocess.Popen] = field(default=None, repr=False)
    cold_start_seconds: Optional[float] = None
    in_flight: int = 0
    ok: int = 0
    failed: int = 0
    first_failure_at: Optional[float] = None

    def record(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self.first_failure_at = self.first_failure_at or time.time()

    def summary(self) -> dict:
        return {"version": self.version, "url": self.url, "port": self.port, "pid": self.pid,
                "cold_start_seconds": self.cold_start_seconds, "ok": self.ok, "failed": self.failed}


# The header naming the model version whose predictor answered: the load test records it, so a failure is blamed
# on the version that served it, not on a clock comparison across the switch.
SERVED_BY = "x-served-by-version"


class Router:
    """Which backend serves now; the HTTP side (make_app) forwards to it."""

    def __init__(self):
        self.backend: Optional[Backend] = None
        self.switches = 0

    def switch(self, backend: Backend) -> Optional[Backend]:
        """Send every new request to BACKEND (requests already forwarded finish where they are); the old one."""
        old, self.backend = self.backend, backend
        self.switches += 1
        return old

    @staticmethod
    def drain(backend: Backend, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while backend.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return backend.in_flight == 0


def make_app(router: Router, status: Callable[[], dict]):
    """The router's HTTP app (Starlette, with an httpx client to the backends)."""
    import contextlib

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=256)) as c:
            client["c"] = c
            yield

    async def proxy(request):
        backend = router.backend
        if backend is None:
            return JSONResponse({"error": "no predictor is serving yet"}, status_code=503)
        body = await request.body()
        backend.in_flight += 1
        try:
            resp = await client["c"].request(request.method, backend.url + request.url.path, content=body,
                                             params=request.query_params,
                                             headers={"content-type": request.headers.get("content-type",
                                                                                          "application/json")})
            backend.record(resp.status_code < 500)
            return Response(resp.content, status_code=resp.status_code, media_type=resp.headers.get("content-type"),
                            headers={SERVED_BY: str(backend.version)})
        except httpx.HTTPError as exc:
            backend.record(False)
            return JSONResponse({"error": f"predictor of version {backend.version} failed: {type(exc).__name__}"},
                                status_code=502, headers={SERVED_BY: str(backend.version)})
        finally:
            backend.in_flight -= 1

    async def healthz(_request):
        return JSONResponse({"serving": router.backend is not None}, status_code=200 if router.backend else 503)

    async def state(_request):
        return JSONResponse(status())

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
    return Starlette(routes=[Route("/router/healthz", healthz), Route("/router/status", state),
                             Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


# -- predictors --------------------------------------------------------------------------------------------
class PredictorProcesses:
    """Starts and stops the KServe predictors (workloads.serving.mnist_predictor) on the backend ports."""

    def __init__(self, ports: list[int], state_dir: Path, ready_timeout_s: float = 120.0):
        self.ports, self.state_dir, self.ready_timeout_s = ports, state_dir, ready_timeout_s
        self.running: dict[int, Backend] = {}

    def start(self, version: int, storage_uri: str, model_file: str) -> Backend:
        port = next((p for p in self.ports if p not in self.running), None)
        if port is None:
            raise RuntimeError(f"no free backend port among {self.ports}")
        folder = self.state_dir / f"v{version}-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "workloads.serving.mnist_predictor", "--model-name", SERVED_NAME,
                "--storage-uri", storage_uri, "--model-file", model_file, "--http-port", str(port),
                "--host", "127.0.0.1", "--model-dir", str(folder / "model"), "--metrics-file", str(folder / "load.json")]
        started = time.perf_counter()
        with (folder / "predictor.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        backend = Backend(version=version, url=url, port=port, pid=proc.pid, process=proc)
        self.running[port] = backend
        while not http_ok(f"{url}/v2/models/{SERVED_NAME}/ready"):
            if proc.poll() is not None or time.perf_counter() - started > self.ready_timeout_s:
                self.stop(backend)
                raise RuntimeError(f"predictor of version {version} did not become ready; log {folder}/predictor.log")
            time.sleep(0.05)
        backend.cold_start_seconds = round(time.perf_counter() - started, 3)
        return backend

    def stop(self, backend: Backend) -> None:
        self.running.pop(backend.port, None)
        if backend.process is not None and backend.process.poll() is None:
            backend.process.terminate()
            try:
                backend.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                backend.process.kill()
                backend.process.wait()

    def stop_all(self) -> None:
        for backend in list(self.running.values()):
            self.stop(backend)


# -- the gate -------------------------------------------------------------------------------------------------
class Gate:
    """The candidate against the champion on held-out data, judged by MLflow's model validation."""

    def __init__(self, images, labels, min_accuracy: float, max_drop: float):
        self.images, self.labels = images, labels
        self.min_accuracy, self.max_drop = min_accuracy, max_drop
        self._accuracy: dict[str, float] = {}  # by the file's sha256: each version is evaluated once

    def accuracy(self, model_file: Path) -> float:
        import torch

        from workloads.evaluate_mnist import evaluate
        from workloads.metrics_io import sha256_file

        digest = sha256_file(model_file)
        if digest not in self._accuracy:
            model = torch.jit.load(str(model_file), map_location="cpu")
            self._accuracy[digest] = evaluate(model, self.images, self.labels, torch.device("cpu"))
        return self._accuracy[digest]

    def judge(self, candidate: float, champion: Optional[float]) -> dict:
        from mlflow.models import MetricThreshold
        from mlflow.models.evaluation import EvaluationResult
        from mlflow.models.evaluation.validation import ModelValidationFailedException, validate_evaluation_results

        # MetricThreshold's min_absolute_change asks the candidate to be strictly better; a retrained model may be a
        # little worse and still fine, so the champion's measured accuracy less the allowed drop is the threshold.
        floor = max(self.min_accuracy, champion - self.max_drop) if champion is not None else self.min_accuracy
        thresholds = {"accuracy": MetricThreshold(threshold=floor, greater_is_better=True)}
        verdict = {"candidate_accuracy": candidate, "champion_accuracy": champion, "accuracy_threshold": floor,
                   "held_out_samples": len(self.labels)}
        try:
            validate_evaluation_results(thresholds, EvaluationResult({"accuracy": candidate}, {}),
                                        EvaluationResult({"accuracy": champion}, {}) if champion is not None else None)
        except ModelValidationFailedException as exc:
            return {**verdict, "passed": False, "reason": exc.message}
        return {**verdict, "passed": True, "reason": "accuracy threshold met"}


# -- the watcher ------------------------------------------------------------------------------------------------
@dataclass
class PipelineSettings:
    tracking_uri: str
    name: str
    destination: str  # the tracking server's --artifacts-destination
    alias: str = "champion"
    previous_alias: str = "previous"
    poll_seconds: float = 0.5
    bake_seconds: float = 5.0
    max_error_rate: float = 0.01
    min_failures: int = 2


class Controller:
    """Watches the registry and runs gate → promote → rollout → (rollback) for every new version."""

    def __init__(self, settings: PipelineSettings, gate: Gate, router: Router, predictors, work_dir: Path,
                 resolve: Optional[Callable[..., dict]] = None):
        from mlflow import MlflowClient

        from workloads.serving.registry import resolve as resolve_in_minio

        self.s, self.gate, self.router, self.predictors = settings, gate, router, predictors
        # models:/<name>@<alias> -> storage_uri, model_file, version (the registry's S3 URI, checked in MinIO)
        self.resolve = resolve or resolve_in_minio
        self.work_dir = work_dir
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)  # models:/ URIs resolve against this registry, not ./mlruns
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        self.events: list[dict] = []
        self.outcomes: dict[int, dict] = {}
        self.seen = 0
        self.champion: Optional[int] = None
        self._stop = threading.Event()

    def event(self, version: int, what: str, **detail) -> dict:
        entry = {"t": time.time(), "version": version, "event": what, **detail}
        self.events.append(entry)
        print(json.dumps(entry), flush=True)
        return entry

    def status(self) -> dict:
        backend = self.router.backend
        return {"champion": self.champion, "serving": backend.summary() if backend else None,
                "seen": self.seen, "outcomes": {str(k): v for k, v in list(self.outcomes.items())},
                "events": list(self.events)}

    # registry helpers
    def versions(self) -> list:
        return sorted(self.client.search_model_versions(f"name='{self.s.name}'"), key=lambda v: int(v.version))

    def model_file(self, version: int) -> Path:
        """The version's registered TorchScript file, downloaded through the registry (from MinIO)."""
        import mlflow

        tags = self.client.get_model_version(self.s.name, str(version)).tags
        folder = self.work_dir / f"v{version}"
        if not (folder / tags["model_file"]).is_file():
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.s.name}/{version}", dst_path=str(folder),
                                                tracking_uri=self.s.tracking_uri)
        return folder / tags["model_file"]

    def deploy_alias(self) -> Backend:
        resolved = self.resolve(self.s.tracking_uri, self.s.name, self.s.alias, self.s.destination)
        return self.predictors.start(resolved["version"], resolved["storage_uri"], resolved["model_file"])

    # the loop
    def start(self) -> None:
        """Serve the version the alias names now; versions already registered are not candidates."""
        existing = self.versions()
        self.seen = max((int(v.version) for v in existing), default=0)
        backend = self.deploy_alias()
        self.router.switch(backend)
        self.champion = backend.version
        self.event(backend.version, "serving", reason="the champion at start", cold_start_seconds=backend.cold_start_seconds)

    def poll_once(self) -> None:
        for v in self.versions():
            if int(v.version) > self.seen:
                self.seen = int(v.version)
                try:
                    self.handle(int(v.version), v.creation_timestamp / 1000.0)
                except Exception as exc:  # e.g. the registry unreachable mid-way: said, and the next version handled
                    self.outcomes[int(v.version)] = {"outcome": "error", "reason": f"{type(exc).__name__}: {exc}",
                                                     "registered_at": v.creation_timestamp / 1000.0,
                                                     "champion_after": self.champion}
                    self.event(int(v.version), "error", reason=self.outcomes[int(v.version)]["reason"])

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # a registry hiccup must not end the pipeline; it is in the log
                print(f"watcher: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._stop.wait(self.s.poll_seconds)

    def stop(self) -> None:
        self._stop.set()

    def handle(self, version: int, registered_at: float) -> dict:
        name, c = self.s.name, self.client
        self.event(version, "triggered", registered_at=registered_at, detection_seconds=round(time.time() - registered_at, 3))
        started = time.perf_counter()
        champion_acc = self.gate.accuracy(self.model_file(self.champion)) if self.champion else None
        verdict = self.gate.judge(self.gate.accuracy(self.model_file(version)), champion_acc)
        verdict["gate_seconds"] = round(time.perf_counter() - started, 3)
        c.set_model_version_tag(name, str(version), "validation_status", "passed" if verdict["passed"] else "rejected")
        c.set_model_version_tag(name, str(version), "candidate_accuracy", str(verdict["candidate_accuracy"]))
        self.event(version, "gate", **verdict)
        outcome = {"registered_at": registered_at, "gate": verdict, "previous_champion": self.champion}
        if not verdict["passed"]:
            # Nothing was promoted: the champion's alias and predictor stay as they were.
            outcome.update(outcome="rejected", decided_at=time.time(), champion_after=self.champion,
                           decision_seconds=round(time.time() - registered_at, 3))
            self.event(version, "rejected", reason=verdict["reason"])
            self.outcomes[version] = outcome
            return outcome
        old = self.router.backend
        if self.champion:
            c.set_registered_model_alias(name, self.s.previous_alias, str(self.champion))
        c.set_registered_model_alias(name, self.s.alias, str(version))
        self.event(version, "promoted", alias=self.s.alias)
        rollout_started = time.time()
        self.event(version, "rollout_started")
        try:
            new = self.deploy_alias()
        except Exception as exc:  # the candidate's predictor never became ready: the old one never stopped serving
            c.set_registered_model_alias(name, self.s.alias, str(self.champion))
            c.set_model_version_tag(name, str(version), "validation_status", "rolled_back")
            outcome.update(outcome="rolled_back", champion_after=self.champion, reason=f"{type(exc).__name__}: {exc}")
            self.event(version, "rolled_back", to_version=self.champion, reason=outcome["reason"])
            self.outcomes[version] = outcome
            return outcome
        self.router.switch(new)
        switched_at = time.time()
        self.event(version, "switched", port=new.port, pid=new.pid, cold_start_seconds=new.cold_start_seconds,
                   trigger_to_serving_seconds=round(switched_at - registered_at, 3))
        outcome.update(rollout_started=rollout_started, switched_at=switched_at,
                       trigger_to_serving_seconds=round(switched_at - registered_at, 3),
                       cold_start_seconds=new.cold_start_seconds)
        healthy = self.bake(new)
        if healthy:
            if old is not None:
                self.router.drain(old)
                self.predictors.stop(old)
            self.champion = version
            outcome.update(outcome="serving", rollout_done=time.time(), champion_after=version,
                           new_backend=new.summary())
            self.event(version, "rollout_done", stopped_version=old.version if old else None)
        else:  # start() always leaves a champion serving, so there is one to go back to
            detected_at = time.time()
            self.router.switch(old)
            switched_back = time.time()
            c.set_registered_model_alias(name, self.s.alias, str(old.version))
            alias_restored = time.time()
            c.set_model_version_tag(name, str(version), "validation_status", "rolled_back")
            self.router.drain(new, timeout_s=2.0)
            self.predictors.stop(new)
            first_failure = new.first_failure_at or detected_at
            # Rolled back = the previous version serves again AND the alias names it again.
            outcome.update(outcome="rolled_back", champion_after=old.version, new_backend=new.summary(),
                           first_failure_at=first_failure, detected_at=detected_at, switched_back_at=switched_back,
                           alias_restored_at=alias_restored, rollback_seconds=round(alias_restored - first_failure, 3),
                           router_rollback_seconds=round(switched_back - first_failure, 3),
                           detection_seconds=round(detected_at - first_failure, 3))
            self.event(version, "rolled_back", to_version=old.version, failed=new.failed, ok=new.ok,
                       rollback_seconds=outcome["rollback_seconds"])
        self.outcomes[version] = outcome
        return outcome

    def bake(self, backend: Backend) -> bool:
        """Watch the new predictor's requests for bake_seconds: False as soon as its error rate rises too high."""
        deadline = time.monotonic() + self.s.bake_seconds
        while time.monotonic() < deadline:
            total = backend.ok + backend.failed
            if backend.failed >= self.s.min_failures and backend.failed / total > self.s.max_error_rate:
                return False
            time.sleep(0.02)
        return True


def controller_main(args) -> int:
    import uvicorn

    from workloads.evaluate_mnist import load_test_set

    images, labels = load_test_set(args.data_dir)
    settings = PipelineSettings(tracking_uri=args.tracking_uri, name=args.name, destination=args.artifacts_destination,
                                alias=args.alias, poll_seconds=args.poll_seconds, bake_seconds=args.bake_seconds,
                                max_error_rate=args.max_error_rate, min_failures=args.min_failures)
    state = Path(args.state_dir)
    router = Router()
    predictors = PredictorProcesses(args.backend_ports, state / "predictors")
    controller = Controller(settings, Gate(images, labels, args.min_accuracy, args.max_drop), router, predictors,
                            state / "models")
    try:
        controller.start()
    except Exception as exc:
        predictors.stop_all()
        print(f"error: the pipeline could not serve models:/{args.name}@{args.alias}: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 2
    watcher = threading.Thread(target=controller.run, daemon=True)
    watcher.start()
    server = uvicorn.Server(uvicorn.Config(make_app(router, controller.status), host="127.0.0.1",
                                           port=args.router_port, log_level="warning", access_log=False))
    try:
        server.run()  # until SIGTERM
    finally:
        controller.stop()
        predictors.stop_all()
    return 0


# -- the scenario -------------------------------------------------------------------------------------------------
def get_status(router: str) -> dict:
    with urllib.request.urlopen(f"{router}/router/status", timeout=10) as resp:
        return json.loads(resp.read())


def wait_outcome(router: str, version: int, timeout_s: float, on_switch: Optional[Callable[[dict], None]] = None) -> dict:
    """Poll the controller until VERSION has an outcome; ON_SWITCH is called once when the router serves it."""
    deadline = time.monotonic() + timeout_s
    switched = False
    while time.monotonic() < deadline:
        status = get_status(router)
        if not switched and on_switch and (status.get("serving") or {}).get("version") == version:
            switched = True
            on_switch(status["serving"])
        if str(version) in status["outcomes"]:
            return status["outcomes"][str(version)]
        time.sleep(0.05)
    raise RuntimeError(f"the pipeline gave version {version} no outcome within {timeout_s:.0f} s")


def requests_between(records: list[dict], start: float, end: float) -> dict:
    inside = [r for r in records if start <= r["start"] <= end]
    return {"requests": len(inside), "failed_requests": sum(1 for r in inside if not r["ok"])}


def timeline(records: list[dict], events: list[dict], start: float) -> dict:
    """Per-second counts of correct and failed answers, and the controller's events, relative to START."""
    end = max((r["start"] for r in records), default=start)
    seconds = int(end - start) + 1
    ok, failed = [0] * seconds, [0] * seconds
    for r in records:
        i = int(r["start"] - start)
        if 0 <= i < seconds:
            (ok if r["ok"] else failed)[i] += 1
    return {"second": list(range(seconds)), "ok": ok, "failed": failed,
            "events": [{"t": round(e["t"] - start, 3), "version": e["version"], "event": e["event"]}
                       for e in events if e["t"] >= start - 1]}


def scenario_main(args) -> int:
    from workloads.serving.load_generator import digit_image, locust_command, read_request_log
    from workloads.serving.registry import register

    router = args.router.rstrip("/")
    start_status = get_status(router)
    champion = start_status["champion"]
    with tempfile.TemporaryDirectory(prefix="pipeline-scenario-") as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"instances": [digit_image()]}))
        argv, env, request_log = locust_command(router, f"/v1/models/{SERVED_NAME}:predict", body, args.stage,
                                                3600, 30.0, Path(tmp) / "load", "predictions")
        load_started = time.time()
        locust_log = (Path(tmp) / "locust.log").open("wb")
        locust = subprocess.Popen(argv, env=env, stdout=locust_log, stderr=subprocess.STDOUT)
        candidates = []
        try:
            time.sleep(args.warmup_seconds)
            plan = [("good", args.good, None), ("bad", args.bad, None), ("faulty", args.good, "kill")]
            for kind, model, fault in plan:
                trained = Path(model).with_name("metrics.json")  # the candidate's training job's figures
                reg = register(args.tracking_uri, Path(model), args.name, "mlops-validation", None, "pickle",
                               json.loads(trained.read_text()) if trained.is_file() else {})

                def inject(serving: dict) -> None:
                    os.kill(serving["pid"], signal.SIGKILL)  # the new predictor crashes right after the switch
                    candidates[-1]["fault_injected_at"] = time.time()

                candidates.append({"kind": kind, "version": reg["version"], "model_sha256": reg["model_sha256"],
                                   "fault": fault})
                candidates[-1]["result"] = wait_outcome(router, reg["version"], args.timeout_seconds,
                                                        inject if fault == "kill" else None)
                time.sleep(args.settle_seconds)
        finally:
            load_stopped = time.time()
            locust.send_signal(signal.SIGTERM)
            try:
                locust.wait(timeout=30)
            except subprocess.TimeoutExpired:
                locust.kill()
            locust_log.close()
        records = read_request_log(request_log)
    from mlflow import MlflowClient

    final = get_status(router)
    final["alias_version"] = int(MlflowClient(args.tracking_uri).get_model_version_by_alias(args.name, "champion").version)
    result = scenario_figures(candidates, records, final, champion, load_started, load_stopped)
    result["load"] = {"stage": args.stage.name, "requests": len(records),
                      "failed_requests": sum(1 for r in records if not r["ok"]),
                      "seconds": round(load_stopped - load_started, 1)}
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}), flush=True)
    return 0


def scenario_figures(candidates: list[dict], records: list[dict], final: dict, first_champion: int,
                     load_started: float, load_stopped: float) -> dict:
    """The figures MLOPS-5.2's targets judge, from the candidates' outcomes and the load test's requests."""
    by_kind = {c["kind"]: c for c in candidates}
    out: dict = {"first_champion": first_champion, "final_champion": final.get("champion"),
                 "final_alias_version": final.get("alias_version"),
                 "final_serving_version": (final.get("serving") or {}).get("version"), "candidates": candidates}
    good, bad, faulty = (by_kind.get(k, {}).get("result", {}) for k in ("good", "bad", "faulty"))
    if good:
        end = good.get("rollout_done") or load_stopped
        window = requests_between(records, good.get("registered_at", load_started), end)
        out.update(good_outcome=good.get("outcome"), trigger_to_serving_seconds=good.get("trigger_to_serving_seconds"),
                   rollout_requests=window["requests"], rollout_failed_requests=window["failed_requests"],
                   good_candidate_promoted=good.get("outcome") == "serving")
    if bad:
        window = requests_between(records, bad.get("registered_at", load_started), bad.get("decided_at") or load_stopped)
        out.update(bad_outcome=bad.get("outcome"), bad_candidate_rejected=bad.get("outcome") == "rejected",
                   rejection_seconds=bad.get("decision_seconds"),
                   bad_candidate_accuracy=(bad.get("gate") or {}).get("candidate_accuracy"),
                   champion_kept_after_rejection=bad.get("champion_after") == bad.get("previous_champion"),
                   rejection_failed_requests=window["failed_requests"])
    if faulty:
        window = requests_between(records, faulty.get("registered_at", load_started), faulty.get("switched_back_at") or load_stopped)
        out.update(faulty_outcome=faulty.get("outcome"), rolled_back_on_errors=faulty.get("outcome") == "rolled_back",
                   rollback_seconds=faulty.get("rollback_seconds"),
                   router_rollback_seconds=faulty.get("router_rollback_seconds"),
                   rollback_detection_seconds=faulty.get("detection_seconds"),
                   fault_failed_requests=window["failed_requests"],
                   alias_restored_after_rollback=faulty.get("champion_after") == faulty.get("previous_champion")
                   and final.get("alias_version") == faulty.get("previous_champion")
                   and out["final_serving_version"] == faulty.get("previous_champion"))
    # Outside the injected fault not one request may fail. A request the router answered names the version that
    # served it (SERVED_BY); one it did not (no response at all) is judged by its start against the fault's window,
    # from the switch to the faulty version to the switch back.
    faulty_version = str(by_kind["faulty"]["version"]) if faulty and "version" in by_kind["faulty"] else None
    fault_window = (faulty.get("switched_at"), faulty.get("switched_back_at")) if faulty else (None, None)

    def in_fault(r: dict) -> bool:
        if r.get("served_by") is not None and faulty_version is not None:
            return str(r["served_by"]) == faulty_version
        return bool(fault_window[0] and fault_window[0] <= r["start"] <= (fault_window[1] or float("inf")))

    outside = [r for r in records if not in_fault(r)]
    out["failed_requests_outside_fault"] = sum(1 for r in outside if not r["ok"])
    out["requests_outside_fault"] = len(outside)
    out["timeline"] = timeline(records, final.get("events") or [], load_started)
    return out


def main(argv: list[str] | None = None) -> int:
    from workloads.serving.load_generator import parse_stage

    p = argparse.ArgumentParser(description="MLOPS-5.2: the model pipeline with no person in the loop")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("controller", help="router + registry watcher (a long-running process)")
    c.add_argument("--tracking-uri", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--alias", default="champion")
    c.add_argument("--artifacts-destination", required=True)
    c.add_argument("--data-dir", required=True, help="MNIST folder: the test set is the gate's held-out data")
    c.add_argument("--router-port", type=int, required=True)
    c.add_argument("--backend-ports", type=lambda s: [int(x) for x in s.split(",")], required=True)
    c.add_argument("--state-dir", required=True)
    c.add_argument("--poll-seconds", type=float, default=0.5)
    c.add_argument("--bake-seconds", type=float, default=5.0)
    c.add_argument("--min-accuracy", type=float, default=0.95)
    c.add_argument("--max-drop", type=float, default=0.005)
    c.add_argument("--max-error-rate", type=float, default=0.01)
    c.add_argument("--min-failures", type=int, default=2)
    s = sub.add_parser("scenario", help="good, bad and faulty candidates under load, measured")
    s.add_argument("--router", required=True)
    s.add_argument("--tracking-uri", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--good", required=True, help="a well-trained candidate (TorchScript file)")
    s.add_argument("--bad", required=True, help="a deliberately bad candidate (e.g. trained on shuffled labels)")
    s.add_argument("--stage", type=parse_stage, default=parse_stage("users=2,rate=20"))
    s.add_argument("--warmup-seconds", type=float, default=3.0)
    s.add_argument("--settle-seconds", type=float, default=2.0)
    s.add_argument("--timeout-seconds", type=float, default=300.0)
    s.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.command == "controller":
        return controller_main(args)
    try:
        return scenario_main(args)
    except (RuntimeError, OSError) as exc:
        print(f"error: the pipeline scenario failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
