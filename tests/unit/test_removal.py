"""`delete` on a site: a folder is removed only inside its own parent, and what cannot be removed (or reached)
fails `pulumi destroy` naming the path. Real bash, real folders; the cluster is this machine (kind local)."""
import os
import subprocess
from pathlib import Path

import pytest

from stacks.oumi import launch as oumi_launch
from stacks.slurm import staging
from stacks.slurm.remote import ClusterError, Connection
from tests.ports import closed_port

LOCAL = Connection(kind="local")


def test_a_folder_inside_its_root_is_removed(tmp_path):
    (tmp_path / "code" / "workloads" / "sub").mkdir(parents=True)
    (tmp_path / "code" / "workloads" / "sub" / "f").write_text("x")
    LOCAL.remove(str(tmp_path / "code" / "workloads"), str(tmp_path / "code"))
    assert not (tmp_path / "code" / "workloads").exists() and (tmp_path / "code").is_dir()


@pytest.mark.parametrize("path, root", [("{t}/root/../victim", "{t}/root"), ("{t}/victim", "{t}/root"),
                                        ("{t}/root", "{t}/root"), ("{t}/root/.", "{t}/root"), ("/", "/")])
def test_a_path_outside_its_root_is_refused_and_left(tmp_path, path, root):
    (tmp_path / "root").mkdir()
    (tmp_path / "victim").mkdir()
    path, root = path.format(t=tmp_path), root.format(t=tmp_path)
    with pytest.raises(ClusterError, match=f"cannot remove {path} on localhost: refusing to remove"):
        LOCAL.remove(path, root)
    assert (tmp_path / "victim").is_dir() and (tmp_path / "root").is_dir()


def test_a_link_is_removed_never_its_target(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("x")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    LOCAL.remove(str(tmp_path / "root" / "link"), str(tmp_path / "root"))
    assert not (tmp_path / "root" / "link").exists() and (tmp_path / "elsewhere" / "keep").is_file()


def test_a_folder_that_cannot_be_removed_is_named():
    # procfs refuses every unlink, even root's: a removal that really fails, with nothing removed.
    with pytest.raises(ClusterError, match="cannot remove /proc/1/task on localhost: cannot remove /proc/1/task: "
                                           "it is still there"):
        LOCAL.remove("/proc/1/task", "/proc/1")


def test_staging_delete_fails_naming_the_path_when_the_cluster_cannot_be_reached(tmp_path):
    conn = {"kind": "ssh", "host": "127.0.0.1", "port": closed_port(), "user": "root", "connect_timeout": 2,
            "known_hosts": str(tmp_path / "known_hosts")}
    with pytest.raises(ClusterError, match=r"cannot remove /shared/code/workloads on root@127\.0\.0\.1:\d+: "
                                           "cannot reach the cluster"):
        staging._StagingProvider().delete("id", {"connection": conn, "destination": "/shared/code/workloads"})


def test_staging_delete_removes_the_copy(tmp_path):
    (tmp_path / "datasets" / "mnist").mkdir(parents=True)
    staging._StagingProvider().delete("id", {"connection": {"kind": "local"},
                                             "destination": str(tmp_path / "datasets" / "mnist") + "/"})
    assert not (tmp_path / "datasets" / "mnist").exists()


# -- Oumi's leftovers: the paths come from outputs and from scontrol's WorkDir ------------------------------------
@pytest.fixture
def local_site(tmp_path, monkeypatch):
    """The Oumi site's remote commands run here with HOME=tmp_path (the cluster user's home)."""
    home = tmp_path / "home"
    (home / "oumi_launcher" / "20261202_0442").mkdir(parents=True)
    (home / "oumi_slurm_logs").mkdir()
    (home / "oumi_slurm_logs" / "42.out").write_text("log")
    (tmp_path / "root" / "oumi" / "job-1a2b3c4d").mkdir(parents=True)

    def run_here(_site, script, timeout=120, check=True):
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": str(home)})
        assert not check
        return proc
    monkeypatch.setattr(oumi_launch, "remote", run_here)

    class Site:
        cluster = "mlops-oumi-test"
    return Site(), home


def test_oumi_cleanup_removes_each_leftover_inside_its_folder(local_site, tmp_path):
    site, home = local_site
    out_dir = str(tmp_path / "root" / "oumi" / "job-1a2b3c4d")
    oumi_launch.cleanup_remote(site, None, oumi_launch.leftovers(
        str(tmp_path / "root"), out_dir, str(home / "oumi_launcher" / "20261202_0442"), "42"))
    assert not Path(out_dir).exists() and not (home / "oumi_launcher" / "20261202_0442").exists()
    assert not (home / "oumi_slurm_logs" / "42.out").exists() and (home / "oumi_launcher").is_dir()


@pytest.mark.parametrize("work_dir", ["{home}", "{home}/oumi_launcher/..", "{t}/elsewhere", "/"])
def test_oumi_cleanup_refuses_a_workdir_from_scontrol_outside_oumis_folder(local_site, tmp_path, work_dir):
    site, home = local_site
    (tmp_path / "elsewhere").mkdir()
    work_dir = work_dir.format(home=home, t=tmp_path)
    with pytest.raises(ClusterError, match=f"oumi: cleanup on mlops-oumi-test failed .*refusing to remove {work_dir}"):
        oumi_launch.cleanup_remote(site, None, oumi_launch.leftovers(None, None, work_dir, "42"))
    assert home.is_dir() and (tmp_path / "elsewhere").is_dir()
    assert not (home / "oumi_slurm_logs" / "42.out").exists()  # the rest is still removed


def test_oumi_job_id_cannot_reach_outside_the_log_folder(local_site, tmp_path):
    site, home = local_site
    (home / "keep.out").write_text("x")
    with pytest.raises(ClusterError, match="refusing to remove"):
        oumi_launch.cleanup_remote(site, None, oumi_launch.leftovers(None, None, None, "../keep"))
    assert (home / "keep.out").is_file()


def test_oumi_destroy_fails_naming_what_is_left_when_the_cluster_cannot_be_reached(tmp_path, monkeypatch):
    def unreachable(*a, **kw):
        raise ClusterError("oumi: cannot reach the cluster at root@h:22 over ssh: Connection refused")
    monkeypatch.setattr(oumi_launch, "connected", unreachable)
    (tmp_path / "state" / "oumi" / "x").mkdir(parents=True)
    props = {"local_dir": str(tmp_path / "state" / "oumi" / "x"), "stack": "t", "partition": "debug",
             "connection": {"kind": "ssh", "host": "h", "port": 22, "user": "root"}, "job_id": "42",
             "out_dir": "/r/oumi/job-1a2b3c4d", "remote_work_dir": "/home/u/oumi_launcher/1", "remote_root": "/r"}
    with pytest.raises(ClusterError, match=r"Connection refused \(left on root@h:22: /r/oumi/job-1a2b3c4d, "
                                           r"/home/u/oumi_launcher/1\)"):
        oumi_launch.remove_launch(props)


def test_oumi_workdir_from_scontrol_is_never_run_as_shell(local_site, tmp_path):
    site, home = local_site
    evil = f"{home}/oumi_launcher/$(touch {tmp_path}/ran)"
    oumi_launch.cleanup_remote(site, None, oumi_launch.leftovers(None, None, evil, None))  # inside: removed, not run
    assert not (tmp_path / "ran").exists() and (home / "oumi_launcher" / "20261202_0442").is_dir()
