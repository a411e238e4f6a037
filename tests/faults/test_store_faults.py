"""The serving stack's stores hurt for real: MinIO restarted in the middle of MLOPS-4.1's model upload, MLflow
killed in the middle of MLOPS-5.1's registration. The services are the embedded default's, as its Pulumi program
declares them (conftest.declared_serving), started by the stack's own start_daemon on free loopback ports; the
upload and the registration are the stack's own steps (run_workload of workloads.serving.objects publish and
workloads.serving.registry register). A relay in front of the server (conftest.Relay) stops the client's
connection at the chosen point, so that each kill lands there every time: half of the model's bytes sent to MinIO;
MLflow's version committed but its answer not yet sent. Each server is then started again, as `pulumi up` starts a
daemon it finds dead. Bounded: every wait has a timeout; a hang fails the test."""
import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from stacks.local.process import port_free, run_workload, start_daemon, start_time, stop_group
from tests.faults.conftest import Relay, declared_serving, record
from tests.faults.test_predictor_fault import MAKE_MODEL, PYTHON
from tests.integration.conftest import ROOT

BOUND_S = 300  # no step may take longer: a hang is a failure
MINIO_DOWN_S = 10.0  # MinIO is started again this long after the kill

STORED = """
import hashlib, json, sys
from workloads.serving.objects import client_from_env
client, _ = client_from_env()
out = {}
for o in client.list_objects(sys.argv[1], prefix=sys.argv[2], recursive=True):
    resp = client.get_object(sys.argv[1], o.object_name)
    out[o.object_name] = hashlib.sha256(resp.read()).hexdigest()
    resp.close()
print(json.dumps(out))
"""


def _stored(env: dict, bucket: str, prefix: str) -> dict:
    """key -> sha256 of every object under PREFIX, read back from MinIO directly (not through the relay)."""
    proc = subprocess.run([PYTHON, "-c", STORED, bucket, prefix], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _kill(daemon: dict) -> float:
    """SIGKILL the daemon's process group; the moment it was sent. Waits until the process is gone."""
    killed_at = time.monotonic()
    os.killpg(daemon["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while start_time(daemon["pid"]) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_time(daemon["pid"]) is None, "still alive 30 s after SIGKILL"
    return killed_at


def _restart(props: dict) -> dict:
    """Start the killed daemon again, as the stack's re-run does, once the kernel has let go of its port (the
    connections the dead server had open close first)."""
    deadline = time.monotonic() + 30
    while not all(port_free(int(port)) for port in props["ports"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return start_daemon(props)


class _InThread:
    """run_workload(props) in a thread: its result or its exception, waited for with a bound."""

    def __init__(self, props: dict):
        self.result, self.error, self.ended_at = None, None, None
        self.thread = threading.Thread(target=self._run, args=(props,), daemon=True)
        self.thread.start()

    def _run(self, props):
        try:
            self.result = run_workload(props)
        except Exception as exc:  # noqa: BLE001 - reported by wait()
            self.error = exc
        self.ended_at = time.monotonic()

    def wait(self, timeout: float = BOUND_S) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s: a hang"
        if self.error:
            raise self.error
        return self.result


@pytest.fixture
def serving(tmp_path):
    """The declared services and a MinIO running with its buckets; whatever the test starts is stopped after."""
    model = tmp_path / "model.pt"
    subprocess.run([PYTHON, "-c", MAKE_MODEL, str(model)], cwd=ROOT, check=True, timeout=300)
    declared = declared_serving(tmp_path / "serving", model)
    declared.update(model=model, running={}, relays=[])
    declared["running"]["minio"] = start_daemon(declared["minio"])
    run_workload({**declared["buckets"], "timeout_s": 120})
    try:
        yield declared
    finally:
        for relay in declared["relays"]:
            relay.close()
        for daemon in declared["running"].values():
            stop_group(daemon["pid"], daemon["process_start"])


def test_minio_restarted_during_a_model_upload_the_upload_is_retried_and_the_object_intact(serving):
    model, digest = serving["model"], serving["sha256"]
    size = model.stat().st_size
    minio_env = serving["publish"]["secret_env"]  # AWS_ENDPOINT_URL and the keys, as the stack gives them
    relay = Relay(serving["minio_port"])
    serving["relays"].append(relay)

    def half_of_the_body(direction, state):
        at = state["up"].find(b"PUT /models/")
        end = state["up"].find(b"\r\n\r\n", at)
        if direction != "up" or at < 0 or end < 0 or len(state["up"]) - (end + 4) < size // 2:
            return None
        return end + 4 + size // 2

    relay.rule = half_of_the_body
    props = serving["publish"]
    bucket, prefix = props["args"][props["args"].index("--uri") + 1].removeprefix("s3://").split("/", 1)
    upload = _InThread({**props, "secret_env": {**minio_env, "AWS_ENDPOINT_URL": relay.url},
                        "args": [*props["args"], "--retry-seconds", "120"], "timeout_s": BOUND_S})
    assert relay.held.wait(120), "the upload never reached MinIO"
    relay.closed = True  # from now on the client finds MinIO gone, until it is back and inspected
    killed_at = _kill(serving["running"].pop("minio"))
    relay.release.set()  # the half-sent PUT's connection is reset
    # Down longer than the SDK's own retries (urllib3: 5 in about 6 s), as on a loaded machine, so that what
    # recovers is publish's retry (it answered within them when started again at once: 1-2 s here)
    time.sleep(max(0.0, killed_at + MINIO_DOWN_S - time.monotonic()))
    serving["running"]["minio"] = _restart(serving["minio"])
    restarted_s = time.monotonic() - killed_at
    after_crash = _stored(minio_env, bucket, prefix)  # nothing half-written under the model's prefix
    relay.closed = False
    result = upload.wait()["result"]
    recover_s = upload.ended_at - killed_at
    first_retry = relay.retries_after(killed_at)
    assert first_retry is not None
    detect_s = first_retry - killed_at
    attempts = len([c for c in relay.connections if c > killed_at])

    assert after_crash == {}, after_crash
    stored = _stored(minio_env, bucket, prefix)
    assert stored == {f"{prefix}/{model.name}": digest}, (stored, digest)  # intact, and only the model
    assert result["retries"] >= 1 and result["objects_sha256"] == {model.name: digest}, result
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    record("MinIO killed (SIGKILL) during the MLOPS-4.1 model upload, started again 10 s later",
           f"MinIO killed when half of the model's {size} bytes had reached it (a relay held the PUT there), "
           f"started again {MINIO_DOWN_S:g} s later (ready at {restarted_s:.1f} s: longer than the SDK's own "
           f"retries); the prefix held no object after the crash (MinIO commits an object only whole); "
           f"`objects publish` retried ({result['retries']} retries, {attempts} connection attempts) and "
           f"uploaded it again, its sha256 read back equal to the file's",
           detect_s, recover_s, "none (sha256 read back = uploaded; only model.pt under the prefix)",
           retries=result["retries"], minio_restart_seconds=round(restarted_s, 1))


def test_minio_gone_for_the_whole_upload_fails_clearly_naming_the_object(serving):
    """Not started again: the upload fails once its retries are spent, with one line naming the object and MinIO,
    and nothing is under the model's prefix when MinIO is back."""
    props = serving["publish"]
    uri = props["args"][props["args"].index("--uri") + 1]
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    killed_at = _kill(serving["running"].pop("minio"))
    with pytest.raises(Exception) as failed:
        run_workload({**props, "args": [*props["args"], "--retry-seconds", "15"], "timeout_s": 120})
    detect_s = time.monotonic() - killed_at
    message = str(failed.value)
    assert f"publishing mnist to MinIO failed: MinIO at {props['secret_env']['AWS_ENDPOINT_URL']}" in message, message
    assert "unreachable for 15 s" in message or "not uploaded within 15 s" in message, message
    assert len(message.splitlines()) == 1, message
    serving["running"]["minio"] = _restart(serving["minio"])
    assert _stored(props["secret_env"], bucket, prefix) == {}
    record("MinIO killed before the MLOPS-4.1 model upload and not started again (publish's retries: 15 s)",
           f"`objects publish` retried for 15 s, then failed with one line, which `pulumi up` shows: "
           f"'{message.split(': ', 1)[1][:220]}'; nothing under the model's prefix once MinIO was back",
           detect_s, None, "none (nothing published; a rerun uploads it)")


def _versions(mlflow_url: str, auth: tuple[str, str], name: str) -> list[dict]:
    query = urllib.parse.urlencode({"filter": f"name='{name}'"})
    req = urllib.request.Request(f"{mlflow_url}/api/2.0/mlflow/model-versions/search?{query}")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read()).get("model_versions", [])


def test_mlflow_killed_during_registration_converges_on_one_version(serving):
    digest = serving["sha256"]
    serving["running"]["mlflow"] = start_daemon(serving["mlflow"])
    mlflow_url = f"http://127.0.0.1:{serving['mlflow_port']}"
    creds = serving["register"]["secret_env"]
    auth = (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"])
    relay = Relay(serving["mlflow_port"])
    serving["relays"].append(relay)
    # the server's answer to create_model_version (the version committed) is held: MLflow dies before it is sent
    relay.rule = lambda direction, state: 0 if direction == "down" and b"/model-versions/create" in state["up"] \
        else None
    props = serving["register"]
    args = list(props["args"])
    args[args.index("--tracking-uri") + 1] = relay.url
    registration = _InThread({**props, "args": args, "timeout_s": BOUND_S})
    assert relay.held.wait(180), "the registration never reached create_model_version"
    relay.closed = True
    killed_at = _kill(serving["running"].pop("mlflow"))
    relay.release.set()
    serving["running"]["mlflow"] = _restart(serving["mlflow"])
    restarted_s = time.monotonic() - killed_at
    committed = _versions(mlflow_url, auth, "mnist-cnn")  # what the dead server had committed
    relay.closed = False
    result = registration.wait()["result"]
    recover_s = registration.ended_at - killed_at
    first_retry = relay.retries_after(killed_at)
    assert first_retry is not None
    detect_s = first_retry - killed_at

    versions = _versions(mlflow_url, auth, "mnist-cnn")
    ours = [v for v in versions if {t["key"]: t["value"] for t in v.get("tags", [])}.get("model_sha256") == digest]
    assert len(ours) == 1 and int(ours[0]["version"]) == result["version"], (versions, result)
    assert not result["reused_version"]
    # a rerun of the registration (the stack's re-run after a failed one) converges on the same version
    again = run_workload({**props, "timeout_s": BOUND_S})["result"]
    assert again["version"] == result["version"] and again["reused_version"], again
    assert len(_versions(mlflow_url, auth, "mnist-cnn")) == 1
    # and the registered artifact is the trained file, byte for byte, in MinIO
    resolved = run_workload({**serving["resolve"], "timeout_s": 120})["result"]
    assert resolved["version"] == result["version"] and resolved["registered_sha256"] == digest
    bucket, prefix = resolved["storage_uri"].removeprefix("s3://").split("/", 1)
    stored = _stored(serving["publish"]["secret_env"], bucket, f"{prefix}/{resolved['model_file']}")
    assert list(stored.values()) == [digest], stored
    dropped = result["duplicate_versions_deleted"]
    record("MLflow killed (SIGKILL) during the MLOPS-5.1 registration, started again at once",
           f"MLflow killed after it committed version {committed[0]['version'] if committed else '?'} but before "
           f"its answer reached the client (a relay held it); started again in {restarted_s:.1f} s; MLflow's "
           f"client retried the create "
           + (f"and made version(s) {dropped}, which the registration deleted (one version per run)"
              if dropped else "and no second version was made")
           + f"; one version of the model in the registry, alias champion on it; a rerun took the same version "
             f"(no new one); the served file's sha256 in MinIO is the trained one's",
           detect_s, recover_s, "none (one version; artifact sha256 = trained)",
           versions_committed_before_kill=len(committed), duplicates_deleted=dropped,
           mlflow_restart_seconds=round(restarted_s, 1))
