"""V1 and V2 inference payloads fuzzed (hypothesis) against the real MNIST predictor (KServe's model server, a
TorchScript model): whatever the body, the answer is 200 with predictions or 4xx with a message, never 5xx, and the
server keeps serving. The model is read from a local file (the predictor's --storage-uri takes a path): fetching
it from MinIO is test_serving.py's concern, not the payloads'."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.workloads.test_serving import free_port, http, mnist_file, start, stop, wait_ready  # noqa: F401


@pytest.fixture(scope="module")
def mnist_server(mnist_file, tmp_path_factory):
    port = free_port()
    proc = start("workloads.serving.mnist_predictor", [
        "--model-name", "mnist", "--storage-uri", str(mnist_file), "--http-port", str(port),
        "--model-dir", str(tmp_path_factory.mktemp("fuzz-model"))])
    wait_ready(f"http://127.0.0.1:{port}/v2/models/mnist/ready", proc)
    yield {"url": f"http://127.0.0.1:{port}", "proc": proc}
    stop(proc)

V1 = "/v1/models/mnist:predict"
V2 = "/v2/models/mnist/infer"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-2**70, max_value=2**70)
           | st.sampled_from([0.0, 1.0, 0.5, -1.0, 1e39, -1e39]))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
# Near misses of an image: the right size give or take, nested the right or wrong way, odd values inside.
images = st.one_of(
    st.lists(numbers, min_size=780, max_size=788),
    st.lists(st.lists(st.floats(0, 1), min_size=27, max_size=29), min_size=27, max_size=29),
    st.builds(lambda fill, n: [[fill] * 784] * n, numbers | st.text(max_size=3) | st.none(), st.integers(0, 3)),
    json_values)
v1_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": st.lists(images, max_size=3) | json_values}),
    st.fixed_dictionaries({"instances": st.lists(images, max_size=2)}, optional={"parameters": json_values}))
datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "", "X"])
shapes = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=5) | st.sampled_from(
    [[1, 784], [1, 28, 28], [1, 1, 28, 28], [2, 784], [0, 784], [1025, 784]]) | json_values
tensors = st.fixed_dictionaries(
    {"name": st.text(max_size=8) | json_values, "shape": shapes, "datatype": datatypes | json_values,
     "data": st.lists(numbers, min_size=0, max_size=800) | images | json_values},
    optional={"parameters": json_values})
v2_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=2) | json_values},
                          optional={"id": json_values, "outputs": json_values, "parameters": json_values}))


def _send(url: str, raw: bytes) -> tuple[int, str]:
    status, text = http("POST", url, raw)
    assert status < 500, (status, text[:500])
    if status >= 400:
        assert text.strip(), f"{status} without a message"
    return status, text


def _encode(body) -> bytes:
    # Python's JSON writes NaN/Infinity, which strict JSON lacks: a client may send them, so the server must cope.
    return json.dumps(body, allow_nan=True).encode()


@FUZZ
@given(body=v1_bodies)
def test_v1_payloads_get_predictions_or_4xx(mnist_server, body):
    status, text = _send(mnist_server["url"] + V1, _encode(body))
    if status == 200:
        assert len(json.loads(text)["predictions"]) == len(body["instances"])


@FUZZ
@given(body=v2_bodies)
def test_v2_payloads_get_outputs_or_4xx(mnist_server, body):
    status, text = _send(mnist_server["url"] + V2, _encode(body))
    if status == 200:
        digits = {o["name"]: o for o in json.loads(text)["outputs"]}["digit"]
        assert digits["shape"] == [body["inputs"][0]["shape"][0]]  # one digit an image


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode), v2=st.booleans())
def test_raw_bytes_get_4xx(mnist_server, raw, v2):
    _send(mnist_server["url"] + (V2 if v2 else V1), raw)


def test_still_serving_after_the_fuzz(mnist_server):
    status, _ = http("POST", mnist_server["url"] + V1, {"instances": [[0.0] * 784]})
    assert status == 200 and mnist_server["proc"].poll() is None
