import os
from pathlib import Path

from stacks.slurm.embedded import Layout, _alive, _slurm_conf, running_pids


def test_slurm_conf_has_gres_ports_and_state_under_one_folder():
    lay = Layout(Path("/tmp/x"))
    conf = _slurm_conf(lay, "c1", "NodeName=vm CPUs=2", "debug", 2, 16817)
    assert "NodeName=vm CPUs=2 Gres=gpu:2 State=UNKNOWN" in conf
    assert "SlurmctldPort=16817" in conf and "SlurmdPort=16818" in conf
    assert "GresTypes=gpu" in conf and "PartitionName=debug Nodes=ALL Default=YES" in conf
    assert "StateSaveLocation=/tmp/x/slurm/state" in conf and "AuthInfo=socket=/tmp/x/munge/munge.socket" in conf
    # slurmd binds its NodeAddr, slurmctld its SlurmctldHost address (127.0.0.1) only, not every interface
    assert "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny" in conf and "SlurmctldHost=localhost(127.0.0.1)" in conf


def test_no_gres_line_without_gpus():
    assert "Gres=" not in _slurm_conf(Layout(Path("/tmp/x")), "c", "NodeName=vm", "p", 0, 1)


def test_liveness_and_pid_files(tmp_path):
    import os
    assert _alive(os.getpid()) and not _alive(2 ** 22 + 1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "munged.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "run" / "slurmd.pid").write_text("4194305\n")
    assert running_pids(str(tmp_path)) == {"munged": os.getpid()}


def _fake_nvidia_smi(tmp_path, monkeypatch, listing: str):
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")


def test_gpu_node_gres_comes_from_nvidia_smi(tmp_path, monkeypatch):
    import pytest

    from stacks.slurm.embedded import nvidia_devices

    # /dev/null stands in for the device files (their existence is checked)
    monkeypatch.setattr("stacks.slurm.embedded.Path.exists", lambda self: True)
    _fake_nvidia_smi(tmp_path, monkeypatch, "0, NVIDIA H200\\n1, NVIDIA H200\\n")
    assert nvidia_devices("NVIDIA H200", 1) == ["/dev/nvidia0", "/dev/nvidia1"]
    with pytest.raises(RuntimeError, match="gpusPerNode 4, but nvidia-smi lists 2 GPU"):
        nvidia_devices("NVIDIA H200", 4)
    with pytest.raises(RuntimeError, match="lists 2 GPU.*NVIDIA H200"):
        nvidia_devices("NVIDIA A100", 1)


def test_gpu_node_without_nvidia_smi_names_the_key(monkeypatch):
    import pytest

    from stacks.slurm.embedded import nvidia_devices

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="hpc.gpu is 'NVIDIA H200' but nvidia-smi cannot list"):
        nvidia_devices("NVIDIA H200", 1)


def test_gpu_login_sessions_get_the_node_gpu_environment():
    from stacks.slurm.embedded import gpu_session_env

    env = {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "NCCL_NVLS_ENABLE": "0", "HOME": "/root",
           "CUDA_HOME": "/usr/local/cuda", "NVIDIA_VISIBLE_DEVICES": "all", "AWS_SECRET": "x", "NCCL_BAD": "a b", "CUDA_VISIBLE_DEVICES": "3"}
    assert gpu_session_env(env) == (" CUDA_HOME=/usr/local/cuda LD_LIBRARY_PATH=/usr/local/nvidia/lib64"
                                    " NCCL_NVLS_ENABLE=0 NVIDIA_VISIBLE_DEVICES=all")
