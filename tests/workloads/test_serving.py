"""The serving workloads on real processes: the KServe predictors (V1, V2, /metrics, 4xx for bad input, bound to
127.0.0.1), fetching the model from a real MinIO through its s3:// URI (a wrong key and a missing object fail
with one line), the LLM predictor's request batching, and the locust load test, including a predictor killed
under load, which must show as errors, not be hidden. Small models made here (no weights downloaded)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

from workloads.serving import load_generator

REPO = Path(__file__).resolve().parents[2]
MINIO = REPO / ".tools" / "bin" / "minio"
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 30) -> tuple[int, str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {output(proc) if hasattr(proc, 'log') else ''}")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if hasattr(proc, "log"):
        proc.log.close()
        os.unlink(proc.log.name)


def start(module: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """A server process whose output goes to a file (a pipe nobody reads would block it once full)."""
    log = open(f"/tmp/serving-test-{os.getpid()}-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


@pytest.fixture(scope="module")
def mnist_file(tmp_path_factory) -> Path:
    from workloads.mnist import Net
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mnist") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Net().eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def minio(tmp_path_factory):
    """A real MinIO on a free loopback port, with credentials made here."""
    assert MINIO.is_file(), "tools/bootstrap.sh builds .tools/bin/minio"
    port, data = free_port(), tmp_path_factory.mktemp("minio")
    keys = {"MINIO_ROOT_USER": "test" + secrets.token_hex(4), "MINIO_ROOT_PASSWORD": secrets.token_hex(16)}
    proc = subprocess.Popen([str(MINIO), "server", str(data), "--address", f"127.0.0.1:{port}", "--quiet"],
                            env={**os.environ, **keys, "MINIO_BROWSER": "off"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/minio/health/ready", proc, 60)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": keys["MINIO_ROOT_USER"],
           "AWS_SECRET_ACCESS_KEY": keys["MINIO_ROOT_PASSWORD"], "AWS_DEFAULT_REGION": "us-east-1", "S3_USE_HTTPS": "0"}
    yield env
    stop(proc)


def objects(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workloads.serving.objects", *args], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mnist_server(mnist_file, minio, tmp_path_factory):
    """The MNIST predictor, its model published to MinIO and fetched from there by s3:// URI."""
    out = tmp_path_factory.mktemp("pub") / "pub.json"
    pub = objects(["publish", "--source", str(mnist_file), "--uri", "s3://models/mnist/test", "--out", str(out)], minio)
    assert pub.returncode == 0, pub.stderr
    assert json.loads(out.read_text())["bytes"] == mnist_file.stat().st_size
    port, work = free_port(), tmp_path_factory.mktemp("mnist-server")
    proc = start("workloads.serving.mnist_predictor", [
        "--model-name", "mnist", "--storage-uri", "s3://models/mnist/test", "--http-port", str(port),
        "--model-dir", str(work / "model"), "--metrics-file", str(work / "load.json")], minio)
    wait_ready(f"http://127.0.0.1:{port}/v2/models/mnist/ready", proc)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "proc": proc, "load": work / "load.json"}
    stop(proc)


def image(value: float = 0.0) -> list[float]:
    return [value] * 784


def test_mnist_v1_v2_and_metrics(mnist_server, mnist_file):
    url = mnist_server["url"]
    status, body = http("POST", f"{url}/v1/models/mnist:predict", {"instances": [image(), image(1.0)]})
    assert status == 200
    got = json.loads(body)["predictions"]
    model = torch.jit.load(str(mnist_file))
    with torch.no_grad():
        want = model(torch.tensor([image(), image(1.0)]).reshape(2, 1, 28, 28)).argmax(1).tolist()
    assert got == want
    status, body = http("POST", f"{url}/v2/models/mnist/infer", {"inputs": [
        {"name": "image", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": image() + image(1.0)}]})
    assert status == 200
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["digit"]["data"] == want and outputs["logits"]["shape"] == [2, 10]
    status, metrics = http("GET", f"{url}/metrics")
    assert status == 200 and 'request_predict_seconds_count{model_name="mnist"}' in metrics
    loaded = json.loads(mnist_server["load"].read_text())
    assert loaded["download_seconds"] >= 0 and loaded["model_load_seconds"] > 0


def test_mnist_binds_loopback_only(mnist_server):
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    lines = [line for line in listening.splitlines() if f":{mnist_server['port']} " in line]
    assert lines and all("127.0.0.1:" in line for line in lines), lines


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/models/mnist:predict", b"{not json", ""),
    ("/v1/models/mnist:predict", {"instances": [[0.5] * 10]}, "784 values, 28x28 or 1x28x28"),
    ("/v1/models/mnist:predict", {"instances": [["a"] * 784]}, "lists of numbers"),
    ("/v1/models/mnist:predict", {"inputs": []}, "a JSON object with"),
    ("/v1/models/mnist:predict", {"instances": [[float("nan")] * 784]}, ""),
    ("/v2/models/mnist/infer", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
     "784 values"),
    ("/v2/models/mnist/infer", {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [1]}]}, ""),
    ("/v2/models/mnist/infer", {"outputs": []}, ""),
])
def test_mnist_bad_input_is_4xx_with_a_message(mnist_server, path, body, needle):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, text = http("POST", mnist_server["url"] + path, raw)
    assert 400 <= status < 500 and text and needle in text, (status, text)
    assert http("GET", f"{mnist_server['url']}/v2/models/mnist/ready")[0] == 200  # and it keeps serving


def test_wrong_key_and_missing_object_fail_with_one_line(minio, tmp_path):
    wrong = {**minio, "AWS_SECRET_ACCESS_KEY": "not-the-key"}
    proc = objects(["buckets", "models"], wrong)
    assert proc.returncode == 2
    assert f"error: MinIO at {minio['AWS_ENDPOINT_URL']} refused the credentials (SignatureDoesNotMatch)" in proc.stderr
    proc = objects(["check", "--uri", "s3://models/nothing/here.pt"], minio)
    assert proc.returncode == 2 and "error: model object s3://models/nothing/here.pt not found in MinIO" in proc.stderr
    predictor = start("workloads.serving.mnist_predictor", [
        "--model-name", "m", "--storage-uri", "s3://models/nothing/here", "--http-port", str(free_port()),
        "--model-dir", str(tmp_path / "m")], minio)
    predictor.wait(timeout=120)
    out = output(predictor)
    stop(predictor)
    assert predictor.returncode == 2 and "error: " in out and "s3://models/nothing/here" in out.splitlines()[-1]


def test_load_test_measures_and_counts_a_crash_as_errors(mnist_server, mnist_file, minio, tmp_path):
    result = load_generator.main(["--url", mnist_server["url"], "--model-name", "mnist", "--example", "mnist-v1",
                             "--stage", "users=2", "--stage", "users=1,rate=10", "--seconds", "3",
                             "--out", str(tmp_path / "ok.json")])
    assert result == 0
    ok = json.loads((tmp_path / "ok.json").read_text())
    assert ok["requests"] > 0 and ok["failures"] == 0 and ok["error_rate"] == 0 and ok["uptime_fraction"] == 1.0
    assert ok["p50_ms"] <= ok["p95_ms"] <= ok["p99_ms"] and ok["throughput_rps"] > 0 and ok["sla_stage"] == "users=1,rate=10"
    assert ok["bad_request_4xx_fraction"] == 1.0 and ok["bad_request_5xx"] == 0
    assert ok["malformed_requests_4xx_fraction"] == 1.0 and ok["malformed_requests_5xx"] == 0
    assert ok["successful_requests"] == ok["requests"] and ok["uptime_slices_fraction"] > 0

    # A second predictor, killed while locust drives it: the failures must show in the figures.
    port = free_port()
    victim = start("workloads.serving.mnist_predictor", [
        "--model-name", "mnist", "--storage-uri", str(mnist_file), "--http-port", str(port)])
    wait_ready(f"http://127.0.0.1:{port}/v2/models/mnist/ready", victim)
    killer = threading.Timer(2.0, lambda: os.killpg(victim.pid, signal.SIGKILL))
    killer.start()
    try:
        load_generator.main(["--url", f"http://127.0.0.1:{port}", "--path", "/v1/models/mnist:predict",
                        "--body", str(_body(tmp_path)), "--stage", "users=2", "--seconds", "5",
                        "--out", str(tmp_path / "crash.json")])
    finally:
        killer.cancel()
        stop(victim)
    crash = json.loads((tmp_path / "crash.json").read_text())
    assert crash["requests"] > 0 and crash["failures"] > 0 and crash["error_rate"] > 0
    assert crash["uptime_fraction"] < 1.0 and crash["stages"][0]["failure_kinds"]
    assert crash["failed_requests"] == crash["failures"] and crash["uptime_slices_fraction"] < 1.0


def _body(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_text(json.dumps({"instances": [image()]}))
    return path


# -- the LLM predictor on a tiny random Llama with a word-level tokenizer -----------------------------------
@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llm")
    words = ["<unk>", "<pad>", "</s>", "what", "is", "the", "capital", "of", "france", "?", "paris", "hello"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>") \
        .save_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=1, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llm_server(tiny_llm, minio, tmp_path_factory):
    assert objects(["publish", "--source", str(tiny_llm), "--uri", "s3://models/tiny-llm/v1"], minio).returncode == 0
    port, work = free_port(), tmp_path_factory.mktemp("llm-server")
    proc = start("workloads.serving.llm_predictor", [
        "--model-name", "tiny", "--storage-uri", "s3://models/tiny-llm/v1", "--http-port", str(port),
        "--model-dir", str(work / "model"), "--metrics-file", str(work / "load.json"), "--device", "cpu",
        "--max-new-tokens", "4", "--max-batch-size", "8", "--max-batch-delay-ms", "200"], minio)
    wait_ready(f"http://127.0.0.1:{port}/v2/models/tiny/ready", proc)
    yield {"url": f"http://127.0.0.1:{port}", "load": work / "load.json"}
    stop(proc)


def test_llm_v1_v2_and_concurrent_requests_are_batched(llm_server):
    url = llm_server["url"]
    status, body = http("POST", f"{url}/v1/models/tiny:predict",
                        {"instances": ["what is the capital of france ?", {"prompt": "hello", "max_new_tokens": 2}]})
    assert status == 200 and len(json.loads(body)["predictions"]) == 2
    status, body = http("POST", f"{url}/v2/models/tiny/infer", {"inputs": [
        {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
        {"name": "max_new_tokens", "shape": [1], "datatype": "INT32", "data": [3]}]})
    assert status == 200 and json.loads(body)["outputs"][0]["name"] == "text_output"
    before = _batched(http("GET", f"{url}/metrics")[1])
    threads = [threading.Thread(target=http, args=("POST", f"{url}/v1/models/tiny:predict",
                                                   {"instances": [f"hello {i}"]})) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _batched(http("GET", f"{url}/metrics")[1])
    assert after["prompts"] - before["prompts"] == 6 and after["batches"] - before["batches"] < 6  # batched
    assert json.loads(llm_server["load"].read_text())["device"] == "cpu"


def _batched(metrics: str) -> dict:
    values = {}
    for line in metrics.splitlines():
        if line.startswith("llm_batch_size_count"):
            values["batches"] = float(line.split()[-1])
        elif line.startswith("llm_batch_size_sum"):
            values["prompts"] = float(line.split()[-1])
    return values


@pytest.mark.parametrize("body", [
    {"instances": [{"prompt": 42}]}, {"instances": [{"prompt": "hi", "max_new_tokens": 0}]},
    {"instances": [{"prompt": "hi", "temperature": 2}]}, {"instances": []}, {"prompts": ["hi"]},
    {"inputs": [{"name": "text_input", "shape": [1], "datatype": "INT32", "data": [1]}]},
])
def test_llm_bad_input_is_4xx(llm_server, body):
    path = "/v2/models/tiny/infer" if "inputs" in body else "/v1/models/tiny:predict"
    status, text = http("POST", llm_server["url"] + path, body)
    assert 400 <= status < 500 and text, (status, text)
