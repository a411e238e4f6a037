"""The stack's behaviour end to end, on real daemons: reruns start nothing twice, the model file stands on
its own, and bad input (a bad config value, an unreachable login node, a failing job) ends in a clear error
within a bounded time with nothing left running. Also the local (non-ssh) submission path.
"""
import json
import subprocess
import time

import pytest

from stacks.slurm.embedded import running_pids
from tests.integration.conftest import (ITEST, ROOT, STATE_ROOT, TempStack, outputs, run, stack,
                                        wait_for_no_leftovers)
from tests.ports import closed_port


@pytest.fixture
def live_itest(itest_stack):
    if itest_stack is None:
        pytest.skip("STACK_OUTPUTS given: no embedded stack is up to exercise")
    return itest_stack


def test_rerunning_up_changes_nothing_and_starts_no_second_cluster(live_itest):
    before = running_pids(str(STATE_ROOT / ITEST))
    assert set(before) == {"munged", "slurmctld", "slurmd", "sshd"}
    preview = run(["pulumi", "preview", "--expect-no-changes", "--non-interactive", "--stack", ITEST])
    assert preview.returncode == 0, preview.stdout[-3000:]
    again = stack("up", ITEST, timeout=600)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert running_pids(str(STATE_ROOT / ITEST)) == before
    assert outputs(ITEST)["mlops_1_1"]["job"]["job_id"] == live_itest["mlops_1_1"]["job"]["job_id"]


def test_saved_model_reevaluates_without_the_training_code(live_itest):
    model = live_itest["mlops_1_1"]["metrics"]["model"]
    data = f"{live_itest['validation']['shared_storage']}/datasets/mnist"
    proc = subprocess.run([str(ROOT / ".venv-workloads/bin/python"), "-m", "workloads.evaluate_mnist",
                           "--model", model["path"], "--data-dir", data], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"] == live_itest["mlops_1_1"]["metrics"]["test_accuracy"]


def test_bad_config_value_fails_before_anything_is_made():
    bad = TempStack("itest-badcfg", "config:\n  mlops-validation:hpc:\n    target: slurmm\n")
    try:
        started = time.monotonic()
        proc = stack("up", bad.name, timeout=300)
        assert proc.returncode != 0 and time.monotonic() - started < 120
        assert "config error: mlops-validation:hpc.target: Input should be 'embedded' or 'ssh' (got 'slurmm')" in proc.stdout
        assert not (STATE_ROOT / bad.name).exists()
    finally:
        bad.close()


def test_unreachable_login_node_fails_fast_and_names_it(tmp_path):
    port = closed_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    site = TempStack("itest-unreachable", f"""config:
  mlops-validation:tasks: [slurm]
  mlops-validation:hpc:
    target: ssh
    ssh: {{host: 127.0.0.1, port: {port}, user: root, connectTimeoutSeconds: 5}}
    sharedStorage: /tmp/mlops-validation/itest-unreachable
    gpu: none
""")
    try:
        site.set_secret("sshPrivateKey", (tmp_path / "k").read_text())
        started = time.monotonic()
        proc = stack("up", site.name, timeout=300)
        assert proc.returncode != 0 and time.monotonic() - started < 120
        assert f"cannot reach the cluster at root@127.0.0.1:{port} over ssh" in proc.stderr
        assert "PRIVATE KEY" not in proc.stdout + proc.stderr  # the secret stays secret
    finally:
        site.close()


def test_failing_job_fails_up_with_id_state_exit_code_and_log(live_itest):
    """A site stack (ssh target) on the itest login node, naming a Python that is not there."""
    login = live_itest["embedded_login"]
    key = run(["pulumi", "stack", "output", "embedded_ssh_private_key", "--show-secrets", "--stack", ITEST],
              check=True).stdout
    site = TempStack("itest-failjob", f"""config:
  mlops-validation:tasks: [storage]
  mlops-validation:hpc:
    target: ssh
    ssh: {{host: {login['host']}, port: {login['port']}, user: {login['user']},
           knownHostsFile: {login['known_hosts_file']}}}
    sharedStorage: {STATE_ROOT / ITEST / 'shared' / 'failjob'}
    python: /nonexistent/python
    gpusPerNode: 2
    gpu: none
""")
    try:
        site.set_secret("sshPrivateKey", key)
        started = time.monotonic()
        proc = stack("up", site.name, timeout=600)
        assert proc.returncode != 0 and time.monotonic() - started < 300
        text = proc.stdout + proc.stderr
        assert "(storage-write) ended FAILED with exit code 127:0" in text
        assert "/nonexistent/python: No such file or directory" in text
        assert "BEGIN OPENSSH PRIVATE KEY" not in text
    finally:
        site.close()
    squeue = run(["bash", "-c", f"SLURM_CONF={STATE_ROOT / ITEST}/etc/slurm.conf squeue -h"], check=True)
    assert squeue.stdout.strip() == ""  # no job of the failed stack is left queued or running


def test_local_submission_path():
    local = TempStack("itest-local", """config:
  mlops-validation:tasks: [slurm, storage]
  mlops-validation:hpc:
    target: embedded
    embedded: {basePort: 31817, submitVia: local}
""")
    try:
        proc = stack("up", local.name, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:]
        out = outputs(local.name)
        assert "local submission" in out["validation"]["hpc_target"]
        assert out["storage"]["summary"]["fail"] == 0 and out["slurm"]["summary"]["fail"] == 0
        assert out["storage"]["metrics"]["cross_job_checksum_ok"] == 1
    finally:
        local.close()
    assert not wait_for_no_leftovers([str(STATE_ROOT / local.name)], [31817, 31818, 31819])
