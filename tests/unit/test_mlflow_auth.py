"""The stack's MLflow server, as stacks/local/mlflow.py declares it (Pulumi mocks give the generated keys), started
for real (start_daemon, MLflow 3 of the workloads' environment): it refuses requests without credentials, and
takes the ones the registration is given. No secret is on its command line or in its config file."""
import base64
import json
import os
import urllib.error
import urllib.request

import pulumi
import pytest
from pulumi.runtime import rpc

from stacks.local.process import start_daemon, stop_group
from tests.ports import closed_port

DAEMONS: dict = {}
RUNS: dict = {}


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        outs = dict(args.inputs)
        if args.name.endswith(("-admin", "-flask", "-credentials")):  # GeneratedCredentials: keys made here
            outs.update(access_key="mlops" + os.urandom(8).hex(), secret_key=os.urandom(20).hex())
        if "argv" in outs:
            DAEMONS[args.name] = outs
        if "module" in outs:
            RUNS[args.name] = outs
        return f"{args.name}-id", outs

    def call(self, args):
        return {}


def _plain(value):
    """A mocked resource's input, a secret's wrapper taken off."""
    if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig:
        return _plain(value["value"])
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    pulumi.runtime.set_mocks(_Mocks(), project="mlops-validation", stack="mlflowauth", preview=False)
    from stacks.local.minio import MinioServer, MinioServerArgs
    from stacks.local.mlflow import MlflowServer, MlflowServerArgs, ModelRegistration, ModelRegistrationArgs

    state = tmp_path_factory.mktemp("serving")
    port = closed_port()

    @pulumi.runtime.test
    def build():
        minio = MinioServer("m", MinioServerArgs(state_dir=str(state), port=closed_port(),
                                                 binary="/bin/true"))  # declared only, never started
        server = MlflowServer("t", MlflowServerArgs(state_dir=str(state), port=port, minio=minio))
        registration = ModelRegistration("r", ModelRegistrationArgs(server=server, model_path="/m.pt",
                                                                    model_sha256="ab"))
        return registration.result

    build()
    return {"daemon": _plain(DAEMONS["t-daemon"]), "registration": _plain(RUNS["r-run"]), "port": port}


def _status(url: str, auth=None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_secret_on_the_command_line_or_in_the_config_file(declared):
    props = declared["daemon"]
    secrets = [v for k, v in props["secret_env"].items() if k.startswith("MLFLOW_") and "URL" not in k]
    assert len(secrets) == 3 and all(len(s) >= 16 for s in secrets)
    visible = json.dumps([props["argv"], props["env"], props["files"]])
    assert "--app-name" in props["argv"] and "basic-auth" in props["argv"]
    assert not [s for s in secrets if s in visible]


def test_the_server_refuses_anonymous_requests_and_takes_the_registrations_credentials(declared, tmp_path):
    props = {**declared["daemon"], "log_file": str(tmp_path / "mlflow.log")}
    client = declared["registration"]["secret_env"]
    assert set(client) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    started = start_daemon(props)
    try:
        url = f"http://127.0.0.1:{declared['port']}"
        search = f"{url}/api/2.0/mlflow/registered-models/search"
        assert _status(f"{url}/health") == 200
        assert _status(search) == 401
        assert _status(search, ("admin", "password1234")) == 401
        assert _status(search, (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"])) == 200
        assert client["MLFLOW_TRACKING_PASSWORD"] not in (tmp_path / "mlflow.log").read_text()
    finally:
        stop_group(started["pid"], started["process_start"])
