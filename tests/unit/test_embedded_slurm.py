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
