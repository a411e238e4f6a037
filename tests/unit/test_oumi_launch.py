"""MLOPS-3.1/3.2 stack side (stacks/oumi_launch.py, stacks/oumi_eval.py): the files written for Oumi, the parsing
of what Oumi and SLURM answer, and a real ssh master connection that fails (unreachable, wrong key)."""
import json
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from stacks.oumi import evaluation as oumi_eval, launch as oumi_launch
from stacks.slurm import jobs
from stacks.slurm.remote import ClusterError, ClusterUnreachable, Connection
from tests.ports import closed_port

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


def _conn(**kw) -> Connection:
    return Connection(**{"kind": "ssh", "host": "10.1.2.3", "port": 2222, "user": "alice", "private_key": "KEY",
                         "known_hosts": "/kh", **kw})


def test_ssh_config_is_a_host_entry_with_port_key_and_known_hosts(tmp_path):
    text = oumi_launch.ssh_config_text("site", _conn(), tmp_path / "id")
    lines = [l.strip() for l in text.splitlines()]
    assert lines[0] == "Host site"
    for wanted in ("HostName 10.1.2.3", "Port 2222", "User alice", f"IdentityFile {tmp_path}/id",
                   "IdentitiesOnly yes", "BatchMode yes", "UserKnownHostsFile /kh", "StrictHostKeyChecking yes"):
        assert wanted in lines
    assert "StrictHostKeyChecking accept-new" in oumi_launch.ssh_config_text("s", _conn(known_hosts=None), tmp_path)


def test_write_site_keeps_the_key_private_and_names_the_cloud_module(tmp_path):
    site = oumi_launch.write_site(tmp_path / "ssh", "site", _conn(), "gpu", "gpu:1")
    assert site.key_file.read_text() == "KEY\n" and site.key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ssh").stat().st_mode & 0o777 == 0o700
    raw = json.loads(site.site_file.read_text())
    assert raw["clusters"] == ["alice@site"] and raw["partition"] == "gpu" and raw["gres"] == "gpu:1"
    assert raw["control_path"] == str(site.control_path) and len(str(site.control_path)) < 100
    assert site.deps_file.read_text().strip() == str(ROOT / "workloads" / "oumi_cloud.py")
    assert "KEY" not in site.site_file.read_text() + site.ssh_config.read_text()


def test_write_site_refuses_local_submission(tmp_path):
    with pytest.raises(ClusterError, match="submitVia: ssh"):
        oumi_launch.write_site(tmp_path, "x", Connection(kind="local"), "debug", None)


def test_launch_output_parsing():
    text = ("Job 42 queued on cluster root@mlops-oumi-dev.\nLogs will be saved to: x\n"
            "Job 42 finished with status COMPLETED\nJob metadata:\n")
    assert oumi_launch.parse_launch_output(text) == {"job_id": "42", "oumi_status": "COMPLETED"}
    assert oumi_launch.parse_launch_output("Traceback ...") == {"job_id": None, "oumi_status": None}


def test_job_config_is_an_oumi_job_for_the_site_cloud(tmp_path):
    cfg = oumi_launch.job_config("n", "root", tmp_path, "echo hi\n", 2, 7, {"MLOPS_OUT": "/o"})
    assert cfg["resources"] == {"cloud": "mlops_slurm", "cpus": "2"}
    assert cfg["setup"].strip() == "#SBATCH --time=7"
    assert cfg["envs"]["MLOPS_OUT"] == "/o" and cfg["envs"]["HF_HUB_OFFLINE"] == "1"


def test_smoke_train_config_overrides_the_training_issue_config():
    base = yaml.safe_load(oumi_launch.TRAIN_CONFIG.read_text())
    cfg = oumi_launch.smoke_train_config(base, "/models/base", steps=3, batch_size=2, max_length=128)
    assert cfg["model"]["model_name"] == "/models/base" and cfg["model"]["model_max_length"] == 128
    assert cfg["training"]["max_steps"] == 3 and cfg["training"]["output_dir"] == "@OUT@/model"
    assert "validation" not in cfg["data"]
    assert [d["dataset_path"] for d in cfg["data"]["train"]["datasets"]] == \
        ["sft/gsm8k_train.jsonl", "sft/self_instruct_seed_tasks.jsonl"]
    assert base["training"]["max_steps"] != 3  # the original is left alone
    assert oumi_launch.training_paths(base) == ["sft/gsm8k_train.jsonl", "sft/self_instruct_seed_tasks.jsonl"]


def test_training_never_uses_the_eval_set():
    base = yaml.safe_load(oumi_launch.TRAIN_CONFIG.read_text())
    base["data"]["train"]["datasets"].append({"dataset_path": "../shared/datasets/sft/eval/x.jsonl"})
    with pytest.raises(ValueError, match="held-out"):
        oumi_launch.training_paths(base)


def test_dataset_copies_are_checked_against_sha256sums():
    copies, digest = oumi_launch.checked_copies(str(DATASETS), ["sft/gsm8k_test.jsonl"])
    assert copies == {"sft/gsm8k_test.jsonl": str(DATASETS / "sft" / "gsm8k_test.jsonl")} and len(digest) == 16


def test_file_summary_flags_a_corrupt_retrieval():
    ok = {"name": "a.json", "bytes": 3, "sha256": "x", "retrieved": True, "intact": True}
    big = {"name": "model.safetensors", "bytes": 10 ** 9, "sha256": "y", "retrieved": False, "intact": False}
    assert oumi_launch.file_summary([ok, big])["all_intact"] == 1
    assert oumi_launch.file_summary([ok, big])["left_on_cluster"][0]["name"] == "model.safetensors"
    assert oumi_launch.file_summary([ok, {**ok, "name": "b", "intact": False}])["all_intact"] == 0
    assert oumi_launch.file_summary([big])["all_intact"] == 0  # nothing came back


def test_scontrol_line_parsing():  # the shared stacks/slurm/jobs.py parser
    f = jobs.parse_scontrol("JobId=7 JobName=x JobState=COMPLETED ExitCode=0:0 SubmitTime=100 StartTime=103")
    assert f["JobState"] == "COMPLETED" and f["SubmitTime"] == "100"


def test_unreachable_cluster_fails_fast_with_a_clear_error_and_no_master(tmp_path):
    conn = _conn(host="127.0.0.1", port=closed_port(), connect_timeout=5, known_hosts=str(tmp_path / "kh"))
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=rf"oumi: cannot reach the cluster at alice@127.0.0.1:{conn.port}"):
        with oumi_launch.connected(tmp_path / "ssh", "dead", conn, "debug", None, None, [], 60):
            pass
    assert time.monotonic() - started < 30
    assert not (tmp_path / "ssh" / "cm").exists() and not (tmp_path / "ssh" / "id").exists()


@pytest.fixture
def sshd(tmp_path):
    """A throwaway sshd on a free port that accepts only the key `good`; yields (good, wrong) Connections."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.skip("no sshd here")
    for name in ("host", "good", "wrong"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "good.pub").read_text())
    port = closed_port()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    conf = tmp_path / "sshd_config"
    conf.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/host\nPidFile {tmp_path}/pid\n"
                    f"AuthorizedKeysFile {tmp_path}/authorized_keys\nPasswordAuthentication no\nUsePAM no\n"
                    "StrictModes no\nPermitRootLogin prohibit-password\n")
    (tmp_path / "kh").write_text(f"[127.0.0.1]:{port} {(tmp_path / 'host.pub').read_text()}")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder: absent on a fresh machine
    proc = subprocess.Popen([str(sshd), "-D", "-e", "-f", str(conf)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        wrong = Connection(kind="ssh", host="127.0.0.1", port=port, user=user, connect_timeout=5,
                           private_key=(tmp_path / "wrong").read_text(), known_hosts=str(tmp_path / "kh"))
        good = Connection(**{**wrong.__dict__, "private_key": (tmp_path / "good").read_text()})
        yield good, wrong
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_wrong_key_is_refused_by_a_real_sshd_with_a_clear_error(tmp_path, sshd):
    good, wrong = sshd
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="Permission denied"):
        with oumi_launch.connected(tmp_path / "ssh", "site", wrong, "debug", None, None, [], 60):
            pass
    assert time.monotonic() - started < 30
    assert not (tmp_path / "ssh" / "cm").exists()
    # and the right key opens the master, which `connected` closes again
    with oumi_launch.connected(tmp_path / "ssh2", "site", good, "debug", None, None, [], 60) as (site, seconds):
        assert seconds > 0 and oumi_launch.master_alive(site)
    assert not oumi_launch.master_alive(site) and not site.control_path.exists()


def test_master_closed_is_measured_on_the_master_process(tmp_path, sshd):
    good, _ = sshd
    with oumi_launch.connected(tmp_path / "ssh", "site", good, "debug", None, None, [], 60) as (site, _):
        pid = oumi_launch.recorded_master_pid(site)
        assert pid and oumi_launch.is_master_process(site, pid) and oumi_launch.master_check(site) == pid
        assert not oumi_launch.master_closed(site, pid)
    assert oumi_launch.master_closed(site, pid) and not oumi_launch.process_alive(pid)  # gone, or a zombie


def test_a_master_whose_socket_vanished_is_not_reported_closed(tmp_path, sshd):
    """The old check (no socket file = closed) said 'closed' while the ssh process still ran."""
    good, _ = sshd
    site = oumi_launch.write_site(tmp_path / "ssh", "site", good, "debug", None)
    oumi_launch.open_master(site, good.where, 60)
    pid = oumi_launch.recorded_master_pid(site)
    try:
        site.control_path.unlink()  # the socket is gone, the master process is not
        assert oumi_launch.master_check(site) is None
        assert oumi_launch.master_alive(site) and not oumi_launch.master_closed(site, pid)
    finally:
        oumi_launch.close_master(site)  # finds it by its recorded pid and ends it
    assert oumi_launch.master_closed(site, pid)


def test_a_recorded_pid_of_another_process_is_never_signalled(tmp_path):
    site = oumi_launch.write_site(tmp_path / "ssh", "site", _conn(), "debug", None)
    other = subprocess.Popen(["sleep", "30"])
    try:
        site.master_pid_file.write_text(f"{other.pid}\n")  # a pid reused by an unrelated process
        assert not oumi_launch.is_master_process(site, other.pid) and not oumi_launch.master_alive(site)
        oumi_launch.close_master(site)
        assert other.poll() is None  # still running: not ours, not killed
    finally:
        other.kill()
        other.wait()


# -- job state through stacks/slurm/jobs.py; job_completed measured, also when the job failed -----------------------
def test_job_record_uses_the_shared_job_query(monkeypatch, tmp_path):
    site = oumi_launch.write_site(tmp_path / "ssh", "site", _conn(), "debug", None)
    asked = []

    def canned(_site, script, timeout=120, check=True):
        asked.append(script)
        return subprocess.CompletedProcess(script, 0, "JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 "
                                           "SubmitTime=100 StartTime=103 EndTime=160 WorkDir=/home/a/x "
                                           "StdOut=/home/a/o.out NodeList=vm\n", "")
    monkeypatch.setattr(oumi_launch, "remote", canned)
    rec = oumi_launch.job_record(site, "7")
    assert asked == ["SLURM_TIME_FORMAT=%s scontrol show job -o 7"]
    assert rec["state"] == "FAILED" and rec["exit_code"] == "1:0" and rec["work_dir"] == "/home/a/x"
    assert rec["submit_to_start_seconds"] == 3 and rec["run_seconds"] == 57


def _fake_launch(monkeypatch, tmp_path, state: str, exit_code: str):
    @contextmanager
    def fake_connected(folder, alias, conn, *a, **kw):
        site = oumi_launch.write_site(folder, alias, conn, "debug", None)
        yield site, 0.25
    monkeypatch.setattr(oumi_launch, "connected", fake_connected)
    monkeypatch.setattr(oumi_launch, "launch_up", lambda *a, **kw: {
        "job_id": "42", "oumi_status": state, "returncode": 0, "timed_out": False, "seconds": 9.0,
        "output": "Job 42 queued on cluster x"})
    monkeypatch.setattr(oumi_launch, "wait_until_done", lambda *a, **kw: {
        "state": state, "exit_code": exit_code, "reason": "NonZeroExitCode", "work_dir": "/w", "stdout": "",
        "submit_time": 1.0, "start_time": 2.0, "end_time": 5.0, "submit_to_start_seconds": 1.0, "run_seconds": 3.0})
    monkeypatch.setattr(oumi_launch, "fetch_file", lambda *a, **kw: "Traceback\nRuntimeError: out of memory\n")
    monkeypatch.setattr(oumi_launch, "cleanup_remote", lambda *a, **kw: None)
    monkeypatch.setattr(oumi_launch, "retrieve", lambda *a, **kw: [])
    return {"name": "mlops_3_1-job", "stack": "t", "connection": {"kind": "ssh", "host": "h", "port": 22,
                                                                   "user": "u", "private_key": "K"},
            "remote_root": "/r", "local_dir": str(tmp_path / "state" / "oumi" / "x"),
            "report_dir": str(tmp_path / "reports"), "launcher_python": "py", "partition": "debug", "gres": None,
            "cpus": 1, "container_image": None, "binds": [], "env": {}, "time_limit_minutes": 1,
            "job_files": {"a.yaml": "x: 1\n"}, "copies": {}, "run": "true"}


def test_a_failed_oumi_job_fails_with_job_completed_0_in_the_error_and_on_disk(monkeypatch, tmp_path):
    props = _fake_launch(monkeypatch, tmp_path, "FAILED", "1:0")
    with pytest.raises(ClusterError) as err:
        oumi_launch.run_launch(props)
    text = str(err.value)
    assert "ended FAILED with exit code 1:0" in text and "RuntimeError: out of memory" in text
    assert "measured: job_completed=0 final_state=FAILED exit_code=1:0" in text
    saved = json.loads((tmp_path / "reports" / "launch_result.json").read_text())
    assert saved["job_completed"] == 0 and saved["final_state"] == "FAILED" and saved["job_id"] == "42"


def test_a_completed_oumi_job_exports_job_completed_1(monkeypatch, tmp_path):
    outs = oumi_launch.run_launch(_fake_launch(monkeypatch, tmp_path, "COMPLETED", "0:0"))
    assert outs["job_completed"] == 1 and outs["final_state"] == "COMPLETED"
    metrics = oumi_launch.launch_metrics({**outs, "report_dir": "/r"})
    assert metrics["job_completed"] == 1
    # a state from before job_completed was an output: measured from state and exit code (<exit>:<signal>)
    assert oumi_launch.launch_metrics({**outs, "job_completed": None, "exit_code": "2:0",
                                       "report_dir": "/r"})["job_completed"] == 0


# -- MLOPS-3.2: the evaluation job and its scores -------------------------------------------------------------------
def test_eval_config_sizes_and_run_script():
    cfg = oumi_eval.eval_config(yaml.safe_load(oumi_eval.EVAL_CONFIG.read_text()), 5, 64, 4)
    assert [t["num_samples"] for t in cfg["tasks"]] == [5, 5]
    assert {t["task_name"] for t in cfg["tasks"]} == {"mlops_gsm8k", "mlops_self_instruct"}
    assert all("eval/" in t["eval_kwargs"]["data_path"] or "test" in t["eval_kwargs"]["data_path"]
               for t in cfg["tasks"])  # held-out data only
    script = oumi_eval.run_script("/py", {"base": "/m/base", "finetuned": "/m/ft"})
    assert "/py -m oumi evaluate -c mlops_eval.yaml --model.model_name /m/base --output_dir @OUT@/base" in script
    assert "--output_dir @OUT@/finetuned" in script and "OUMI_EXTRA_DEPS_FILE" in script


def _result(tmp_path, label, gsm, si) -> dict:
    path = tmp_path / label / "custom_1" / "task_result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"results": {"mlops_gsm8k": gsm, "mlops_self_instruct": si}}))
    return {"name": f"{label}/custom_1/task_result.json", "local_path": str(path), "bytes": 1, "sha256": "x",
            "retrieved": True, "intact": True}


def test_scores_of_both_models_and_their_difference(tmp_path):
    files = [_result(tmp_path, "base", {"exact_match": 0.25, "loss": 1.5, "perplexity": 4.5, "num_samples": 8},
                     {"rouge_l_f1": 0.2, "loss": 2.0, "perplexity": 7.4, "num_samples": 8}),
             _result(tmp_path, "finetuned", {"exact_match": 0.5, "loss": 1.0, "perplexity": 2.7, "num_samples": 8},
                     {"rouge_l_f1": 0.1, "loss": 2.5, "perplexity": 12.2, "num_samples": 8})]
    outs = {"connect_seconds": 0.3, "submit_to_start_seconds": 1.0, "final_state": "COMPLETED", "job_id": "9",
            "exit_code": "0:0", "run_seconds": 50, "oumi_launch_seconds": 70, "ssh_master_closed": True,
            "files": files, "report_dir": "/r"}
    m = oumi_eval.eval_metrics(outs, ["base", "finetuned"])
    assert m["base_gsm8k_exact_match"] == 0.25 and m["finetuned_self_instruct_rouge_l_f1"] == 0.1
    assert m["difference"]["gsm8k_exact_match"] == 0.25 and m["difference"]["gsm8k_loss"] == -0.5
    assert m["job_completed"] == 1 and m["results_intact"] == 1 and m["base_gsm8k_samples"] == 8
    only_base = oumi_eval.eval_metrics({**outs, "files": files[:1]}, ["base"])
    assert "difference" not in only_base and "finetuned_gsm8k_exact_match" not in only_base
