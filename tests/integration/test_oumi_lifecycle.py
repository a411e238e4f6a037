"""MLOPS-3.1/3.2 failure paths, end to end through `pulumi up`: an unreachable cluster, a wrong key and a failing
Oumi job each end in a clear error within a bounded time, and nothing is left running (no ssh master connection,
no SLURM job). The site stacks point Oumi straight at a model folder (oumi.baseModelDir), so Oumi's own path is
what meets the failure (the stack stages nothing else for these tasks)."""
import subprocess
import time

import pytest

from tests.integration.conftest import ITEST, ROOT, STATE_ROOT, TempStack, run, stack, wait_for_no_leftovers
from tests.ports import closed_port


@pytest.fixture
def live_itest(itest_stack):
    if itest_stack is None:
        pytest.skip("STACK_OUTPUTS given: no embedded stack is up to exercise")
    return itest_stack


def _site_yaml(login: dict, shared: str, extra_oumi: str = "", python: str = "") -> str:
    return f"""config:
  mlops-validation:tasks: [mlops_3_1]
  mlops-validation:oumi: {{baseModelDir: /nonexistent/base-model{extra_oumi}}}
  mlops-validation:hpc:
    target: ssh
    ssh: {{host: {login['host']}, port: {login['port']}, user: {login['user']}, connectTimeoutSeconds: 5,
           knownHostsFile: {login.get('known_hosts_file') or '/dev/null'}}}
    sharedStorage: {shared}
    gpu: none
{python}"""


def _no_ssh_master_of(name: str) -> None:
    """No process of this stack's state folder (the ssh master's command line names its socket there), and no
    file left there either (the key, the ssh config, the job's copy)."""
    assert not wait_for_no_leftovers([str(STATE_ROOT / name)], [], seconds=10)
    assert not (STATE_ROOT / name).exists(), list((STATE_ROOT / name).rglob("*"))[:10]


def test_unreachable_cluster_fails_fast_in_oumi_and_names_it(tmp_path):
    port = closed_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    site = TempStack("itest-oumi-unreachable", _site_yaml(
        {"host": "127.0.0.1", "port": port, "user": "root"}, "/tmp/mlops-validation/itest-oumi-unreachable"))
    try:
        site.set_secret("sshPrivateKey", (tmp_path / "k").read_text())
        started = time.monotonic()
        proc = stack("up", site.name, timeout=300)
        assert proc.returncode != 0 and time.monotonic() - started < 120
        text = proc.stdout + proc.stderr
        assert f"oumi: cannot reach the cluster at root@127.0.0.1:{port} over ssh" in text
        assert "PRIVATE KEY" not in text
        _no_ssh_master_of(site.name)
    finally:
        site.close()


def _itest_key() -> str:
    return run(["pulumi", "stack", "output", "embedded_ssh_private_key", "--show-secrets", "--stack", ITEST],
               check=True).stdout


def test_wrong_key_fails_fast_in_oumi_with_permission_denied(live_itest, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    login = live_itest["embedded_login"]
    site = TempStack("itest-oumi-wrongkey", _site_yaml(login, str(STATE_ROOT / ITEST / "shared" / "oumi-wrongkey")))
    try:
        site.set_secret("sshPrivateKey", (tmp_path / "k").read_text())
        started = time.monotonic()
        proc = stack("up", site.name, timeout=300)
        assert proc.returncode != 0 and time.monotonic() - started < 120
        text = proc.stdout + proc.stderr
        assert f"oumi: cannot reach the cluster at root@127.0.0.1:{login['port']} over ssh" in text
        assert "Permission denied" in text and "PRIVATE KEY" not in text
        _no_ssh_master_of(site.name)
    finally:
        site.close()


def test_failing_oumi_job_fails_up_with_id_state_and_log_and_leaves_nothing(live_itest):
    """The right key, but a base model folder that is not there: `oumi train` fails inside the SLURM job."""
    login = live_itest["embedded_login"]
    site = TempStack("itest-oumi-failjob", _site_yaml(
        login, str(STATE_ROOT / ITEST / "shared" / "oumi-failjob"),
        python=f"    oumiPython: {ROOT / '.venv-oumi' / 'bin' / 'python'}\n"))
    try:
        site.set_secret("sshPrivateKey", _itest_key())
        started = time.monotonic()
        proc = stack("up", site.name, timeout=900)
        assert proc.returncode != 0 and time.monotonic() - started < 600
        text = proc.stdout + proc.stderr
        assert "launched by `oumi launch up` ended FAILED" in text
        assert "/nonexistent/base-model" in text  # the log tail names the cause
        assert "BEGIN OPENSSH PRIVATE KEY" not in text
        _no_ssh_master_of(site.name)
    finally:
        site.close()
    squeue = run(["bash", "-c", f"SLURM_CONF={STATE_ROOT / ITEST}/etc/slurm.conf squeue -h"], check=True)
    assert squeue.stdout.strip() == ""  # no job of the failed stack is left queued or running


def _task(stack_outputs, task):
    if task not in stack_outputs["validation"]["tasks"]:
        pytest.skip(f"task {task} is not enabled in this stack's config")
    return stack_outputs[task]["metrics"]


def test_oumi_launch_results_came_back_intact(stack_outputs):
    """MLOPS-3.1: the job's id and state from SLURM, and every retrieved file matches the cluster's sha256."""
    import hashlib
    from pathlib import Path

    m = _task(stack_outputs, "mlops_3_1")
    assert m["slurm_job_id"].isdigit() and m["final_state"] == "COMPLETED" and m["oumi_status"] == "COMPLETED"
    assert m["connect_seconds"] > 0 and m["submit_to_start_seconds"] >= 0
    retrieved = {f["name"]: f for f in m["results"]["retrieved"]}
    assert "train_log_history.json" in retrieved and "model/config.json" in retrieved
    assert any(f["name"].endswith(".safetensors") for f in m["results"]["left_on_cluster"])  # weights stay there
    for name, f in retrieved.items():
        data = (Path(m["report_dir"]) / "output" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"], name
    assert isinstance(m["train_loss_first"], float) and m["train_steps"] > 0


def test_oumi_evaluation_scores_both_models(stack_outputs):
    """MLOPS-3.2: both models scored on the same held-out subsets, and their difference exported."""
    m = _task(stack_outputs, "mlops_3_2")
    assert set(m["models"]) == {"base", "finetuned"}
    for label in ("base", "finetuned"):
        scores = m["models"][label]
        assert 0 <= scores["gsm8k_exact_match"] <= 1 and 0 <= scores["self_instruct_rouge_l_f1"] <= 1
        assert scores["gsm8k_perplexity"] > 1 and scores["self_instruct_perplexity"] > 1
        assert scores["gsm8k_samples"] == scores["self_instruct_samples"] == m["models"]["base"]["gsm8k_samples"]
    assert m["difference"]["gsm8k_loss"] == pytest.approx(
        m["models"]["finetuned"]["gsm8k_loss"] - m["models"]["base"]["gsm8k_loss"])
    names = {f["name"].split("/", 1)[0] for f in m["results"]["retrieved"]}
    assert names == {"base", "finetuned"}
