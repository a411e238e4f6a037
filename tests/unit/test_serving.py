"""The embedded serving stack's plain parts: its config section, the local-process resources' helpers (on real
processes and sockets), the load test's stage syntax and locust CSV reading, and how the task metrics are put
together and judged. No timings are asserted."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from stacks.tasks.mlops_4_1 import serving_metrics
from stacks.tasks.mlops_5_1 import pipeline_metrics
from stacks.local.process import (ServingError, alive, error_line, port_free, run_workload, start_daemon,
                                    start_time, stop_group)
from validation.config import ConfigError, parse
from validation.targets import task_result
from workloads.serving.load_generator import (Stage, bad_request_summary, example_request, parse_stage, percentile,
                                         read_aggregate)


PLATFORM = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}  # the embedded default
H200 = {**PLATFORM, "gpu": "NVIDIA H200"}


# -- config ---------------------------------------------------------------------------------------------
def test_serving_defaults_and_profile_stages():
    s = parse({})
    assert s.serving.base_port == 16900 and s.serving_state_dir("dev") == "/tmp/mlops-validation/dev-serving"
    assert s.option("serving.cpu.stages") and all(parse_stage(x) for x in s.option("serving.cpu.stages"))
    assert all(parse_stage(x) for x in parse({"profile": "full"}).option("serving.llm.stages"))
    assert {"mlops_4_1", "mlops_4_2", "mlops_5_1"} <= set(s.tasks)


@pytest.mark.parametrize("raw, needle", [
    ({"tasks": ["mlops_4_1"]}, "mlops-validation:tasks: mlops_4_1 serves MLOPS-1.1's model"),
    ({"tasks": ["mlops_4_1", "mlops_5_1"], "serving": {"cpu": {"storageUri": "s3://models/mnist/x"}}},
     "mlops-validation:tasks: mlops_5_1 registers and deploys MLOPS-1.1's model"),
    ({"serving": {"cpu": {"stages": ["users=0"]}}}, "mlops-validation:serving.cpu: stages: 'users=0'"),
    ({"serving": {"cpu": {"storageUri": "http://x/y"}}}, "mlops-validation:serving.cpu.storageUri"),
    ({"serving": {"basePort": 80}}, "mlops-validation:serving.basePort"),
    ({"serving": {"minio": {"endpoint": "127.0.0.1:9000"}}}, "mlops-validation:serving.minio.endpoint"),
    ({"serving": {"llm": {"maxBatchSize": 0}}}, "mlops-validation:serving.llm.maxBatchSize"),
    ({"serving": {"registrationFormat": "onnx"}}, "mlops-validation:serving.registrationFormat"),
])
def test_bad_serving_config_names_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert needle in str(err.value)


def test_a_model_already_in_minio_serves_without_training():
    s = parse({"tasks": ["mlops_4_1"], "serving": {"cpu": {"storageUri": "s3://models/mnist/abc/model.pt",
                                                              "stages": ["users=2,rate=5.5"], "stageSeconds": 3}}})
    assert s.serving.cpu.stages == ["users=2,rate=5.5"] and s.serving.cpu.stage_seconds == 3


# -- local processes ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_time_names_one_process_and_stop_group_ends_it():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    started = start_time(proc.pid)
    assert alive(proc.pid, started) and not alive(proc.pid, (started or 0) + 1)
    stop_group(proc.pid, started, grace_s=5)
    proc.wait(timeout=10)
    assert not alive(proc.pid, started)


def test_daemon_is_ready_when_its_health_url_answers_and_stops_with_its_children(tmp_path):
    port = _free_port()
    props = {"name": "web", "argv": [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
             "ready_url": f"http://127.0.0.1:{port}/", "ready_timeout_s": 30, "log_file": str(tmp_path / "web.log"),
             "ports": {str(port): "test.port"}, "cwd": str(tmp_path)}
    outs = start_daemon(props)
    try:
        assert alive(outs["pid"], outs["process_start"]) and outs["cold_start_seconds"] > 0
        assert not port_free(port)
        with pytest.raises(ServingError, match=f"port {port} on 127.0.0.1 is in use: choose another test.port"):
            start_daemon(props)  # never a second one on the same port
    finally:
        stop_group(outs["pid"], outs["process_start"], grace_s=5)
    deadline = time.monotonic() + 10
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_free(port)


def test_daemon_that_exits_fails_with_its_own_error_line(tmp_path):
    props = {"name": "broken predictor",
             "argv": [sys.executable, "-c", "import sys; print('error: model s3://m/x not found'); sys.exit(2)"],
             "ready_url": f"http://127.0.0.1:{_free_port()}/", "ready_timeout_s": 30,
             "log_file": str(tmp_path / "b.log")}
    with pytest.raises(ServingError, match=r"^broken predictor did not start: model s3://m/x not found\. Log"):
        start_daemon(props)


def test_workload_run_returns_its_json_or_its_error_line(tmp_path):
    pkg = tmp_path / "fakework"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "step.py").write_text(textwrap.dedent("""
        import json, sys
        args = sys.argv[1:]
        if args[0] == "fail":
            print("error: MinIO at http://127.0.0.1:1 refused the credentials (InvalidAccessKeyId)", file=sys.stderr)
            sys.exit(2)
        open(args[args.index("--out") + 1], "w").write(json.dumps({"ok": args[0]}))
    """))
    base = {"name": "step", "python": sys.executable, "module": "fakework.step",
            "env": {"PYTHONPATH": str(tmp_path)}, "timeout_s": 60}
    assert run_workload({**base, "args": ["yes"]})["result"] == {"ok": "yes"}
    with pytest.raises(ServingError, match=r"^step failed: MinIO at .* refused the credentials"):
        run_workload({**base, "args": ["fail"]})


def test_error_line_takes_the_last_error():
    assert error_line("x\nerror: first\nerror: second\n") == "second" and error_line("Traceback") is None


# -- load test pieces -----------------------------------------------------------------------------------
def test_stage_syntax():
    assert parse_stage("users=4") == Stage(4, 0.0) and parse_stage("users=2,rate=50").rate == 50
    assert parse_stage("users=2,rate=50").name == "users=2,rate=50"
    for bad in ("users=0", "rate=5", "users=2,burst=3"):
        with pytest.raises(Exception):
            parse_stage(bad)


def test_locust_final_stats_are_read_with_locusts_percentiles(tmp_path):
    stats = tmp_path / "s.json"
    # 100 requests: 90 at 4 ms, 5 at 9 ms, 4 at 15 ms, 1 at 40 ms; 2 failed; over 5 s.
    stats.write_text(json.dumps([{"name": "/v1/models/mnist:predict", "method": "POST", "num_requests": 100,
                                  "num_failures": 2, "total_response_time": 600.0, "max_response_time": 40.2,
                                  "start_time": 1000.0, "last_request_timestamp": 1005.0,
                                  "response_times": {"4": 90, "9": 5, "15": 4, "40": 1}}]))
    row = read_aggregate(stats)
    assert row["requests"] == 100 and row["failures"] == 2 and row["error_rate"] == 0.02
    # as locust reports them: P95 is the 15 ms bucket (95 of 100 at 9 ms or less still leaves one at the edge)
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"]) == (4.0, 15.0, 40.0)
    assert row["throughput_rps"] == 20.0 and row["mean_ms"] == 6.0
    assert percentile({}, 0, 0.5) is None


def test_example_requests_and_bad_request_verdict():
    path, body = example_request("mnist-v2", "mnist")
    assert path == "/v2/models/mnist/infer" and len(body["inputs"][0]["data"]) == 784
    assert example_request("llm-v1", "smollm2", 5)[1]["instances"][0]["max_new_tokens"] == 5
    summary = bad_request_summary([{"case": "a", "status": 400, "message": "bad"},
                                   {"case": "b", "status": 500, "message": "boom"},
                                   {"case": "c", "status": None, "message": "reset"}])
    assert summary["bad_request_4xx_fraction"] == 0.333 and summary["bad_request_5xx"] == 2


# -- task metrics and verdicts --------------------------------------------------------------------------
def test_cpu_serving_metrics_are_judged_and_autoscaling_is_not_applicable_here():
    load = {"p50_ms": 3.0, "p95_ms": 8.0, "p99_ms": 12.0, "throughput_rps": 300.0, "error_rate": 0.0,
            "uptime_fraction": 1.0}
    m = serving_metrics(load, 4.2, {"model_load_seconds": 0.2, "download_seconds": 0.1, "model_bytes": 10},
                        {"sync_seconds": 0.05, "bytes": 10}, "s3://models/mnist/x")
    assert m["cold_start_seconds"] == 4.2 and m["model_load_seconds"] == 0.2 and m["device"] == "cpu"
    result = task_result("mlops_4_1", m, {"device": "cpu"}, PLATFORM)
    status = {r["id"]: r["status"] for r in result["targets"]}
    assert status["cpu_p95"] == status["cpu_cold_start"] == status["cpu_uptime"] == "pass"
    assert status["cpu_autoscaling"] == "not_applicable"
    slow = task_result("mlops_4_1", {**m, "p95_ms": 150.0}, {"device": "cpu"}, PLATFORM)
    assert {r["id"]: r["status"] for r in slow["targets"]}["cpu_p95"] == "fail"


def test_gpu_targets_are_not_applicable_on_cpu_but_uptime_is_judged():
    m = serving_metrics({"p95_ms": 900.0, "throughput_rps": 2.0, "uptime_fraction": 1.0}, 12.0,
                        {"device": "cpu", "device_name": "cpu"}, {}, "s3://models/smollm2/x")
    status = {r["id"]: r["status"] for r in task_result("mlops_4_2", m, {"device": "cpu"}, PLATFORM)["targets"]}
    assert status["gpu_p95"] == status["gpu_throughput"] == status["gpu_cold_start"] == "not_applicable"
    assert status["gpu_uptime"] == "pass"
    on_gpu = {r["id"]: r["status"] for r in task_result("mlops_4_2", {**m, "cold_start_seconds": 45.0},
                                                        {"device": "cuda"}, H200)["targets"]}
    assert on_gpu["gpu_cold_start"] == "fail" and on_gpu["gpu_p95"] == "fail"


def lineage_figures(**changes):
    """pipeline_metrics' inputs for a lineage-true run: the alias resolves to the version registered, the predictor
    serves the trained file from the registry's artifacts and answers as the job did."""
    sha = "ab" * 32
    uri = "s3://mlflow-artifacts/1/models/m-1/artifacts"
    v = dict(training={"model": {"sha256": sha}, "started_at": "2026-12-02T05:00:00+00:00"}, train_seconds=60.0,
             registration={"version": 1, "sync_seconds": 0.25, "registration_seconds": 0.5},
             resolved={"version": 1, "storage_uri": uri, "registered_sha256": sha, "resolve_seconds": 0.5},
             cold_start=2.5, served={"model_sha256": sha},
             lineage={"predictions_match_fraction": 1.0, "max_logit_abs_diff": 0.0, "verify_seconds": 0.25,
                      "verified_at": 1_796_187_700.0},
             tracking_uri="http://127.0.0.1:1", destination="s3://mlflow-artifacts")
    v.update(changes)
    return pipeline_metrics(**v)


def test_pipeline_time_is_the_sum_of_measured_stages_or_none():
    m = lineage_figures()
    assert m["pipeline_seconds"] == 64.0 and m["deployment_seconds"] == 3.0 and m["pipeline_wall_seconds"] == 100.0
    status = {r["id"]: r["status"] for r in task_result("mlops_5_1", m, {"device": "n/a"}, PLATFORM)["targets"]}
    assert {s for i, s in status.items() if i != "e2e_time_goal"} == {"pass"}
    assert status["e2e_time_goal"] == "not_applicable"  # a one-GPU goal; PLATFORM declares no GPU
    assert lineage_figures(train_seconds=None)["pipeline_seconds"] is None


@pytest.mark.parametrize("changes, target", [
    ({"served": {"model_sha256": "cd" * 32}}, "served_is_trained"),  # the predictor serves another file
    ({"resolved": {"version": 2, "storage_uri": "s3://mlflow-artifacts/x", "registered_sha256": "ab" * 32,
                   "resolve_seconds": 0.5}}, "alias_resolves_registered"),
    ({"resolved": {"version": 1, "storage_uri": "s3://models/mnist/x", "registered_sha256": "ab" * 32,
                   "resolve_seconds": 0.5}}, "served_from_registry"),  # the job's file published, not the registry's
    ({"lineage": {"predictions_match_fraction": 0.99, "max_logit_abs_diff": 3.0, "verify_seconds": 0.2}},
     "served_predictions_match"),
])
def test_a_broken_lineage_fails_its_target(changes, target):
    status = {r["id"]: r["status"] for r in
              task_result("mlops_5_1", lineage_figures(**changes), {"device": "n/a"}, PLATFORM)["targets"]}
    assert status[target] == "fail"


def test_llm_folder_digest_follows_content_and_names(tmp_path):
    from workloads.serving.llm_model import folder_digest
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    first, files, size = folder_digest(tmp_path)
    assert (files, size) == (2, 12)
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x01" * 10)
    second = folder_digest(tmp_path)[0]
    (tmp_path / "sub" / "w.bin").rename(tmp_path / "w.bin")
    assert len({first, second, folder_digest(tmp_path)[0]}) == 3
