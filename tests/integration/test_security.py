"""Security of the running itest stack (the one conftest brings up, no second `pulumi up`): its generated secrets
appear in plain text nowhere (state, outputs, logs, report, command lines), every socket its processes own listens
on 127.0.0.1, and MinIO and MLflow (its basic-auth app) refuse requests without credentials."""
import pytest

from tests.integration.conftest import ITEST, ITEST_PORTS
from tests.integration.security import leaks, listeners, secret_values, stack_pids, status_without_credentials

MINIO = "http://127.0.0.1:26900"  # serving.basePort of Pulumi.itest.yaml
MLFLOW = "http://127.0.0.1:26902"


@pytest.fixture(scope="module")
def live(itest_stack):
    if itest_stack is None:
        pytest.skip("STACK_OUTPUTS given: no embedded stack is up to inspect")
    return itest_stack


@pytest.fixture(scope="module")
def secrets(live):
    found = secret_values(ITEST)
    # The check must be able to fail: the generated values it looks for are really there.
    names = set(found)
    assert {"private_key", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= names, names
    return found


def test_no_secret_in_state_outputs_logs_report_or_command_lines(secrets):
    assert leaks(ITEST, secrets) == []


def test_every_socket_of_the_stack_listens_on_loopback_only(live):
    pids = stack_pids(ITEST)
    sockets = listeners(pids, ITEST_PORTS)
    ports = {int(address.rsplit(":", 1)[1]) for address, _ in sockets}
    # slurmctld, slurmd, sshd, MinIO, MLflow, the two predictors: the check sees them all
    assert {26817, 26818, 26819, 26900, 26902, 26903, 26904} <= ports, sockets
    assert [s for s in sockets if not s[0].startswith(("127.0.0.1:", "[::1]:"))] == []


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/models/"), ("GET", "/mlflow-artifacts/"),
                                          ("PUT", "/models/anonymous.txt")])
def test_minio_refuses_requests_without_credentials(live, method, path):
    assert status_without_credentials(MINIO + path, method) == 403


def test_mlflow_refuses_requests_without_credentials(live):
    assert status_without_credentials(f"{MLFLOW}/health") == 200  # up, and its health open to probes
    for path in ("/api/2.0/mlflow/registered-models/search", "/api/2.0/mlflow/experiments/search?max_results=1"):
        assert status_without_credentials(MLFLOW + path) == 401
