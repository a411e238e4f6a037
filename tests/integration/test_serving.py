"""The embedded serving stack end to end (MLOPS-4.1, 4.2, 5.1): on the itest stack, the predictors answer V1, V2
and /metrics on 127.0.0.1 only and MinIO's keys are secrets in the state; and bad input fails `pulumi up` with a
clear error and leaves nothing running once destroyed: a wrong MinIO key, a model object that is not there."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import ITEST, ROOT, STATE_ROOT, TempStack, run, stack, wait_for_no_leftovers

MINIO = ROOT / ".tools" / "bin" / "minio"


def _post(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def serving(itest_stack):
    if itest_stack is None:
        pytest.skip("STACK_OUTPUTS given: no embedded stack is up to exercise")
    urls = {name: itest_stack[task]["metrics"]["predictor_url"]
            for name, task in (("mnist_predictor", "mlops_4_1"), ("llm_predictor", "mlops_4_2")) if task in itest_stack}
    if not urls:
        pytest.skip("the itest stack runs no serving task")
    return urls


def test_predictors_answer_v1_v2_and_metrics_on_loopback_only(serving):
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout.splitlines()
    for name, example in (("mnist_predictor", {"instances": [[0.0] * 784]}),
                          ("llm_predictor", {"instances": [{"prompt": "Hi", "max_new_tokens": 2}]})):
        if name not in serving:
            continue
        url = serving[name]
        port = url.rsplit(":", 1)[1]
        assert [line for line in listening if f":{port} " in line] and all(
            "127.0.0.1:" in line for line in listening if f":{port} " in line)
        model = "mnist" if name == "mnist_predictor" else "smollm2"
        status, body = _post(f"{url}/v1/models/{model}:predict", json.dumps(example).encode())
        assert status == 200 and len(json.loads(body)["predictions"]) == 1
        assert _post(f"{url}/v1/models/{model}:predict", b"{broken")[0] == 400
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            assert f'request_predict_seconds_count{{model_name="{model}"}}' in resp.read().decode()


def test_minio_keys_are_secrets_in_the_state(serving):
    state = json.loads(run(["pulumi", "stack", "export", "--stack", ITEST], check=True).stdout)
    daemons = [r for r in state["deployment"]["resources"] if r["type"].endswith(":LocalDaemon")]
    assert daemons
    for r in daemons:
        for where in ("inputs", "outputs"):
            env = r.get(where, {}).get("secret_env")
            if env:  # a secret is stored as {"4dabf18193072939515e22adb298388d": ..., "ciphertext": ...}
                assert "ciphertext" in env and "AWS_SECRET_ACCESS_KEY" not in json.dumps(env), r["urn"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_minio_key_fails_up_naming_the_endpoint(tmp_path):
    port = _free_port()
    user, password = "itest" + secrets.token_hex(4), secrets.token_hex(16)
    minio = subprocess.Popen([str(MINIO), "server", str(tmp_path / "data"), "--address", f"127.0.0.1:{port}",
                              "--quiet"], env={**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password,
                                               "MINIO_BROWSER": "off"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    site = TempStack("itest-badkey", f"""config:
  mlops-validation:tasks: [mlops_4_1]
  mlops-validation:hpc:
    embedded: {{basePort: 31827}}
  mlops-validation:serving:
    basePort: 31900
    minio: {{endpoint: "http://127.0.0.1:{port}"}}
    cpu: {{storageUri: "s3://models/mnist/any/model.pt"}}
""")
    wrong = "wrong-" + secrets.token_hex(8)
    try:
        site.set_secret("servingMinioAccessKey", user)
        site.set_secret("servingMinioSecretKey", wrong)
        started = time.monotonic()
        proc = stack("up", site.name, timeout=600)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and time.monotonic() - started < 300
        assert f"MinIO at http://127.0.0.1:{port} refused the credentials (SignatureDoesNotMatch)" in proc.stderr, text[-3000:]
        assert wrong not in text and password not in text
    finally:
        site.close()
        os.killpg(minio.pid, signal.SIGTERM)
        minio.wait(timeout=30)
    assert not wait_for_no_leftovers([str(STATE_ROOT / site.name)], [31827, 31828, 31829, 31900, 31903])


def test_missing_model_object_fails_up_and_destroy_leaves_nothing():
    site = TempStack("itest-nomodel", """config:
  mlops-validation:tasks: [mlops_4_1]
  mlops-validation:hpc:
    embedded: {basePort: 31837}
  mlops-validation:serving:
    basePort: 31910
    cpu: {storageUri: "s3://models/missing/model.pt"}
""")
    try:
        started = time.monotonic()
        proc = stack("up", site.name, timeout=600)
        assert proc.returncode != 0 and time.monotonic() - started < 300
        assert ("model object s3://models/missing/model.pt not found in MinIO at http://127.0.0.1:31910"
                in proc.stderr), (proc.stdout + proc.stderr)[-3000:]
    finally:
        site.close()
    ports = [31837, 31838, 31839, 31910, 31911, 31912, 31913, 31914]
    assert not wait_for_no_leftovers([str(STATE_ROOT / site.name)], ports)
    assert not (STATE_ROOT / f"{site.name}-serving").exists()
