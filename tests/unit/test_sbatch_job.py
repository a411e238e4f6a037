"""stacks/slurm/job.py: the rendered job script, and the SbatchJob component under Pulumi mocks (no provider plugin,
no cluster): what the pulumi-command resource is given (commands, triggers, connection) and what it exports."""
import base64
import hashlib
import hmac
import json

import pulumi
import pytest
from pulumi.runtime import rpc

from stacks.slurm.job import (SbatchJobArgs, WorkloadContext, job_folder, known_host_key, render_script,
                              submit_command, workload_command)
from stacks.slurm.jobs import elapsed_seconds, parse_scontrol

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-1234\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTests000000000000000000000000"


def test_render_script_has_directives_gres_and_env_capture():
    script = render_script("mnist", "/shared/jobs/mnist-1", "python -m workloads.mnist", "gpu", "gpu:1", 1, 4, 30)
    assert script.startswith("#!/bin/bash\n")
    for line in ["#SBATCH --job-name=mnist", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                 "#SBATCH --output=/shared/jobs/mnist-1/slurm-%j.out", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=4", "python -m workloads.mnist", "export JOB_DIR=/shared/jobs/mnist-1"]:
        assert line in script
    assert '"CUDA_VISIBLE_DEVICES": "${CUDA_VISIBLE_DEVICES:-}"' in script


def test_render_script_without_gres():
    assert "--gres" not in render_script("j", "/d", "true", "p", None, 1, 1, 5)


def test_parse_scontrol_one_line():
    line = ("JobId=7 JobName=probe UserId=root(0) JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:01:05 "
            "NodeList=vm Command=(null) TresPerNode=gres:gpu:1")
    f = parse_scontrol(line)
    assert f["JobState"] == "COMPLETED" and f["ExitCode"] == "0:0" and f["NodeList"] == "vm"
    assert f["TresPerNode"] == "gres:gpu:1"


def test_elapsed_seconds():
    assert elapsed_seconds("00:01:05") == 65
    assert elapsed_seconds("1-02:00:00") == 93600
    assert elapsed_seconds("03:07") == 187


def test_workload_command_plain_and_apptainer():
    plain = workload_command("/env/bin/python", "/shared/code", "workloads.mnist", "--x 1", "/shared")
    assert plain.splitlines() == ["cd /shared/code", "export PYTHONPATH=/shared/code",
                                  "/env/bin/python -m workloads.mnist --x 1"]
    # inside an image: tests/unit/test_container.py


def test_workload_command_multi_task_runs_under_srun():
    cmd = workload_command("py", "/c", "workloads.cifar10", "--a", "/s", tasks=2)
    assert cmd.splitlines()[-1] == "srun --ntasks=2 --kill-on-bad-exit=1 py -m workloads.cifar10 --a"


def test_job_folder_is_the_digest_of_the_jobs_identity():
    a = job_folder("/s/jobs", "mnist", ["cluster-1", "code-1", ["data-1"], "cmd"])
    assert a.startswith("/s/jobs/mnist-") and len(a.rsplit("-", 1)[1]) == 8
    assert a == job_folder("/s/jobs/", "mnist", ["cluster-1", "code-1", ["data-1"], "cmd"])
    assert a != job_folder("/s/jobs", "mnist", ["cluster-1", "code-1", ["data-2"], "cmd"])


def test_submit_command_line():
    cmd = submit_command("python3", "/s/code/workloads/slurm_submit.py", "submit", "/s/jobs/m-0123abcd", "m", 2100,
                         1.0, metrics_file=False)
    assert cmd == ("python3 /s/code/workloads/slurm_submit.py submit --job-dir /s/jobs/m-0123abcd --name m "
                   "--timeout 2100 --poll 1 --no-metrics")
    assert submit_command("python3", "/x/s.py", "delete", "/s/jobs/m-1") == "python3 /x/s.py delete --job-dir /s/jobs/m-1"


# -- host keys from known_hosts -------------------------------------------------------------------------------------
def test_known_host_key_plain_port_and_hashed_entries(tmp_path):
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQFakeRsa"
    salt = b"0123456789abcdefghij"
    hashed = "|1|{}|{}".format(base64.b64encode(salt).decode(),
                               base64.b64encode(hmac.new(salt, b"login.example.org", hashlib.sha1).digest()).decode())
    (tmp_path / "kh").write_text(f"# comment\n[127.0.0.1]:16819 {HOST_KEY}\n"
                                 f"other.example.org,login2 {rsa}\n@revoked login.example.org {rsa}\n"
                                 f"login.example.org {rsa}\n{hashed} {HOST_KEY}\n")
    kh = str(tmp_path / "kh")
    assert known_host_key(kh, "127.0.0.1", 16819) == HOST_KEY
    assert known_host_key(kh, "127.0.0.1", 22) is None  # another port is another entry
    assert known_host_key(kh, "login2", 22) == rsa
    assert known_host_key(kh, "login.example.org", 22) == HOST_KEY  # the hashed ed25519 entry wins over rsa
    assert known_host_key(str(tmp_path / "missing"), "127.0.0.1", 16819) is None


# -- the component under Pulumi mocks ---------------------------------------------------------------------------------
DOC = {"job_id": "42", "name": "mnist", "state": "COMPLETED", "exit_code": "0:0", "node": "vm", "reason": "None",
       "elapsed_seconds": 12, "submit_to_start_seconds": 0.4, "gres_env": {"CUDA_VISIBLE_DEVICES": "0"},
       "metrics": {"accuracy": 0.98}, "job_dir": "/s/jobs/mnist-0123abcd", "log_path": "/s/jobs/x/slurm-42.out",
       "log_tail": "done"}


class Recorder(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}

    def new_resource(self, args):
        self.resources[args.name] = args
        outs = dict(args.inputs)
        if args.typ.startswith("command:"):
            outs["stdout"] = json.dumps(DOC)
        return [f"{args.name}-id", outs]

    def call(self, args):
        return {}


def is_secret(value) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def build(tmp_path, connection: dict, submit_via="ssh", data=("mnist-data-digest",), time_limit=30):
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="mlops-validation", stack="jobtest", preview=False)
    exported: dict = {}

    @pulumi.runtime.test
    def run():
        ctx = WorkloadContext(connection=pulumi.Output.secret(connection), cluster_id="cluster-7",
                              root=pulumi.Output.from_input("/shared/mlops-validation/jobtest"),
                              code_dir=pulumi.Output.from_input("/shared/mlops-validation/jobtest/code"),
                              python="/venv/bin/python", partition="debug", gpus_per_node=2, cpus_per_task=2,
                              code_version="code-abc", submit_via=submit_via)
        job = ctx.job("mnist", "workloads.mnist", "--epochs 1", gpus=1, cpus=2, time_limit_minutes=time_limit,
                      data=[pulumi.Output.from_input(d) for d in data])
        return pulumi.Output.all(job.summary(), job.metrics, job.job_dir).apply(
            lambda v: exported.update(summary=v[0], metrics=v[1], job_dir=v[2]))

    run()
    return recorder, exported


def _ssh(tmp_path, **kw) -> dict:
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:16819 {HOST_KEY}\n")
    return {"kind": "ssh", "host": "127.0.0.1", "port": 16819, "user": "root", "private_key": KEY,
            "known_hosts": str(tmp_path / "known_hosts"), **kw}


def _command(recorder, typ="command:remote:Command"):
    (cmd,) = [r for r in recorder.resources.values() if r.typ == typ]
    return cmd


def test_the_job_is_a_remote_command_with_submit_show_and_delete(tmp_path):
    recorder, exported = build(tmp_path, _ssh(tmp_path))
    cmd = _command(recorder)
    assert cmd.name == "mnist-job"
    inputs = cmd.inputs
    job_dir = inputs["create"].split("--job-dir ")[1].split()[0]
    assert job_dir.startswith("/shared/mlops-validation/jobtest/jobs/mnist-") and len(job_dir.rsplit("-", 1)[1]) == 8
    submit = "python3 /shared/mlops-validation/jobtest/code/workloads/slurm_submit.py"
    assert inputs["create"] == f"{submit} submit --job-dir {job_dir} --name mnist --timeout 2100 --poll 1"
    assert inputs["update"] == f"{submit} show --job-dir {job_dir}"
    assert inputs["delete"] == f"{submit} delete --job-dir {job_dir}"
    script = inputs["stdin"]
    assert script.startswith("#!/bin/bash\n") and "#SBATCH --gres=gpu:1" in script
    assert f"#SBATCH --output={job_dir}/slurm-%j.out" in script and "/venv/bin/python -m workloads.mnist --epochs 1" in script
    assert inputs["triggers"] == ["cluster-7", "code-abc", "mnist-data-digest", script]
    assert inputs["logging"] == "stderr" and inputs["addPreviousOutputInEnv"] is False
    # what the stack reads back: the submit script's JSON document
    assert exported["summary"] == {k: DOC[k] for k in ("job_id", "state", "exit_code", "node", "elapsed_seconds",
                                                        "submit_to_start_seconds", "gres_env", "log_path")}
    assert exported["metrics"] == {"accuracy": 0.98} and exported["job_dir"] == DOC["job_dir"]


def test_the_key_travels_only_in_the_secret_connection_with_the_pinned_host_key(tmp_path):
    recorder, _ = build(tmp_path, _ssh(tmp_path))
    inputs = _command(recorder).inputs
    for name in ("create", "update", "delete", "stdin"):
        assert "PRIVATE KEY" not in inputs[name] and "not-a-real-key" not in inputs[name]
    assert "not-a-real-key" not in json.dumps(inputs["triggers"])
    conn = inputs["connection"]
    assert is_secret(conn)
    value = conn["value"] if is_secret(conn) else conn
    assert value["host"] == "127.0.0.1" and value["port"] == 16819 and value["user"] == "root"
    assert value["privateKey"] == KEY and value["hostKey"] == HOST_KEY
    assert value["perDialTimeout"] == 10 and value["dialErrorLimit"] == 3


def test_a_new_key_or_timeouts_change_no_trigger_but_new_data_or_code_do(tmp_path):
    base, _ = build(tmp_path, _ssh(tmp_path))
    rotated, _ = build(tmp_path, _ssh(tmp_path, private_key=KEY.replace("1234", "5678"), connect_timeout=30))
    a, b = _command(base).inputs, _command(rotated).inputs
    assert a["triggers"] == b["triggers"] and a["create"] == b["create"] and a["delete"] == b["delete"]
    assert a["connection"] != b["connection"]  # an in-place update: `update` reprints the record
    new_data, _ = build(tmp_path, _ssh(tmp_path), data=("other-digest",))
    c = _command(new_data).inputs
    assert c["triggers"] != a["triggers"] and c["triggers"][2] == "other-digest"
    assert c["create"] != a["create"]  # and a new job folder: the old one is deleted, not overwritten


def test_a_longer_time_limit_is_a_new_job_but_only_through_its_directive(tmp_path):
    a = _command(build(tmp_path, _ssh(tmp_path), time_limit=30)[0]).inputs
    b = _command(build(tmp_path, _ssh(tmp_path), time_limit=60)[0]).inputs
    assert a["triggers"][:3] == b["triggers"][:3] and "#SBATCH --time=60" in b["triggers"][3]
    assert "--timeout 3900" in b["create"]


def test_without_a_known_host_key_the_job_still_runs_and_the_host_key_is_unset(tmp_path):
    recorder, _ = build(tmp_path, _ssh(tmp_path, known_hosts=str(tmp_path / "none")))
    conn = _command(recorder).inputs["connection"]
    value = conn["value"] if is_secret(conn) else conn
    assert value.get("hostKey") in (None, "")


def test_local_submission_is_a_local_command_with_the_connection_environment(tmp_path):
    recorder, exported = build(tmp_path, {"kind": "local", "env": {"SLURM_CONF": "/state/etc/slurm.conf"}},
                               submit_via="local")
    cmd = _command(recorder, "command:local:Command")
    env = cmd.inputs["environment"]
    env = env["value"] if is_secret(env) else env
    assert env == {"SLURM_CONF": "/state/etc/slurm.conf"}
    assert cmd.inputs["addPreviousOutputInEnv"] is True  # delete also reads PULUMI_COMMAND_STDOUT here
    assert " submit --job-dir " in cmd.inputs["create"] and exported["metrics"] == {"accuracy": 0.98}
    assert not [r for r in recorder.resources.values() if r.typ == "command:remote:Command"]


def test_a_connection_of_the_other_kind_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="submit_via='local'"):
        build(tmp_path, {"kind": "local", "env": {}}, submit_via="ssh")


def test_args_default_timeout_is_time_limit_plus_five_minutes():
    assert SbatchJobArgs(connection={}, cluster_id="c", job_root="/r", command="true").timeout_seconds is None
