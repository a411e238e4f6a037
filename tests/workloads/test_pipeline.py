"""MLOPS-5.2's pipeline decisions with the real MLflow client and registry (a local store in tmp_path) and the real
gate, predictors replaced by stand-ins: a candidate that fails the gate is never promoted, one whose predictor
fails after the switch is rolled back (router and alias), a good one replaces the champion."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlflow")

from workloads.serving import pipeline  # noqa: E402
from workloads.serving.registry import register  # noqa: E402


class Marked(torch.nn.Module):
    """Reads the digit off pixel (0, d) of each image: right for every held-out image, or wrong for all (flip)."""

    def __init__(self, flip: bool):
        super().__init__()
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x[:, 0, 0, :10]
        return torch.flip(logits, [1]) if self.flip else logits


def held_out(n: int = 50):
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[torch.arange(n), 0, labels] = 255
    return images, labels


class StandInPredictors:
    """Backends without processes; a version in `failing` answers every request routed to it with an error, one in
    `broken` never starts."""

    def __init__(self, failing: set[int], broken: set[int]):
        self.failing, self.broken, self.running, self.stopped = failing, broken, {}, []

    def start(self, version: int, storage_uri: str, model_file: str) -> pipeline.Backend:
        if version in self.broken:
            raise RuntimeError(f"predictor of version {version} did not become ready")
        backend = pipeline.Backend(version=version, url=storage_uri, port=version)
        if version in self.failing:
            for _ in range(5):
                backend.record(False)
        self.running[version] = backend
        return backend

    def stop(self, backend: pipeline.Backend) -> None:
        self.running.pop(backend.version, None)
        self.stopped.append(backend.version)


def local_resolve(tracking_uri, name, alias, _destination):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    v = client.get_model_version_by_alias(name, alias)
    return {"version": int(v.version), "storage_uri": client.get_model_version_download_uri(name, v.version),
            "model_file": v.tags["model_file"]}


def test_failing_candidates_are_rolled_back_and_a_good_one_promoted(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the local store's artifacts go under ./mlruns
    uri = f"sqlite:///{tmp_path}/registry.db"
    good, bad = tmp_path / "good" / "model.pt", tmp_path / "bad" / "model.pt"
    for path, flip in ((good, False), (bad, True)):
        path.parent.mkdir()
        torch.jit.script(Marked(flip)).save(str(path))

    def add(path, alias=None) -> int:
        return register(uri, path, "digits", "test", alias, "pickle", {})["version"]

    add(good, "champion")
    images, labels = held_out()
    predictors = StandInPredictors(failing={3}, broken={5})
    settings = pipeline.PipelineSettings(tracking_uri=uri, name="digits", destination="unused", bake_seconds=0.2)
    router = pipeline.Router()
    controller = pipeline.Controller(settings, pipeline.Gate(images, labels, min_accuracy=0.95, max_drop=0.005),
                                     router, predictors, tmp_path / "work", resolve=local_resolve)
    controller.start()
    client = MlflowClient(tracking_uri=uri)
    alias = lambda: int(client.get_model_version_by_alias("digits", "champion").version)  # noqa: E731

    assert add(bad) == 2  # trained on shuffled labels, as it were: accuracy 0
    controller.poll_once()
    rejected = controller.outcomes[2]
    assert rejected["outcome"] == "rejected" and rejected["gate"]["candidate_accuracy"] == 0.0
    assert alias() == 1 and router.backend.version == 1 and predictors.running.keys() == {1}
    assert client.get_model_version("digits", "2").tags["validation_status"] == "rejected"

    assert add(good) == 3  # passes the gate, but its predictor fails every request after the switch
    controller.poll_once()
    rolled_back = controller.outcomes[3]
    assert rolled_back["outcome"] == "rolled_back" and rolled_back["rollback_seconds"] >= 0
    assert alias() == 1 and router.backend.version == 1 and 3 in predictors.stopped
    assert client.get_model_version("digits", "3").tags["validation_status"] == "rolled_back"

    assert add(good) == 4
    controller.poll_once()
    assert controller.outcomes[4]["outcome"] == "serving" and controller.outcomes[4]["trigger_to_serving_seconds"] > 0
    assert alias() == 4 and router.backend.version == 4 and predictors.running.keys() == {4}
    assert int(client.get_model_version_by_alias("digits", "previous").version) == 1

    assert add(good) == 5  # its predictor never becomes ready: the alias goes back, v4 never stopped serving
    controller.poll_once()
    assert controller.outcomes[5]["outcome"] == "rolled_back" and "did not become ready" in controller.outcomes[5]["reason"]
    assert alias() == 4 and router.backend.version == 4 and predictors.running.keys() == {4}


def test_scenario_counts_failures_only_inside_the_fault():
    records = [{"start": t, "ok": not (20.0 <= t <= 21.0), "ms": 5} for t in [1.0 + 0.5 * i for i in range(60)]]
    candidates = [
        {"kind": "good", "result": {"outcome": "serving", "registered_at": 2.0, "rollout_done": 10.0,
                                    "trigger_to_serving_seconds": 6.0}},
        {"kind": "bad", "result": {"outcome": "rejected", "registered_at": 11.0, "decided_at": 13.0,
                                   "decision_seconds": 2.0, "champion_after": 2, "previous_champion": 2,
                                   "gate": {"candidate_accuracy": 0.1}}},
        {"kind": "faulty", "result": {"outcome": "rolled_back", "registered_at": 14.0, "switched_at": 19.9,
                                      "switched_back_at": 21.2, "rollback_seconds": 1.2, "detection_seconds": 0.1,
                                      "champion_after": 2, "previous_champion": 2}}]
    m = pipeline.scenario_figures(candidates, records, {"champion": 2, "alias_version": 2, "serving": {"version": 2},
                                                      "events": []},
                                  1, 0.0, 31.0)
    assert m["rollout_failed_requests"] == 0 and m["good_candidate_promoted"]
    assert m["bad_candidate_rejected"] and m["champion_kept_after_rejection"]
    assert m["fault_failed_requests"] == 3 and m["failed_requests_outside_fault"] == 0
    assert m["rolled_back_on_errors"] and m["alias_restored_after_rollback"]
    assert sum(m["timeline"]["failed"]) == 3


def test_a_failure_served_by_the_faulty_version_is_inside_the_fault_even_before_the_recorded_switch():
    # The router switches, then the controller reads the clock: a request that started just before `switched_at`
    # can reach the faulty predictor. Its failure is the fault's (the router named the version), not the champion's.
    records = [{"start": 19.85, "ok": False, "ms": 5, "served_by": "3"},
               {"start": 19.8, "ok": True, "ms": 5, "served_by": "2"},
               {"start": 30.0, "ok": False, "ms": 5, "served_by": "2"},
               {"start": 20.5, "ok": False, "ms": 5, "served_by": None}]
    candidates = [{"kind": "faulty", "version": 3,
                   "result": {"outcome": "rolled_back", "registered_at": 14.0, "switched_at": 19.9,
                              "switched_back_at": 21.2, "champion_after": 2, "previous_champion": 2}}]
    m = pipeline.scenario_figures(candidates, records, {"champion": 2, "alias_version": 2, "serving": {"version": 2},
                                                      "events": []}, 2, 0.0, 31.0)
    # Only the champion's own failure at 30 s is outside; the unanswered one at 20.5 s lies in the fault's window.
    assert m["failed_requests_outside_fault"] == 1 and m["requests_outside_fault"] == 2
