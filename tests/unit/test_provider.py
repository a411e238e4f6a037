"""The dynamic providers' diff/create/delete, without SLURM, a cluster or a daemon of the stack: the shared
replace-on-change rule (stacks/provider.py), and each provider's own create, delete and 'vanished' check against
fakes (a fake cluster connection, real short-lived processes, temporary folders)."""
import subprocess
import sys

import pytest

from stacks.k8s.gpu import _GpuNodeCheckProvider
from stacks.k8s.measure import _ServingMeasurementProvider
from stacks.local.process import _DaemonProvider, _RunProvider, _StateDirProvider, start_time
from stacks.provider import ReplacingProvider
from stacks.slurm import embedded, staging
from stacks.slurm.remote import ClusterError, Connection


class Job(ReplacingProvider):
    settings_only = ("connection",)


OLD = {"cluster_id": "c1", "code": "abc", "connection": {"key": "old"}, "result": 42, "__provider": "x"}


def test_a_changed_input_replaces_deleting_first():
    diff = Job().diff("id", OLD, {**OLD, "code": "def", "__provider": "y"})
    assert diff.changes and diff.replaces == ["code"] and diff.delete_before_replace


def test_a_connection_change_updates_in_place_keeping_what_was_measured():
    news = {**OLD, "connection": {"key": "rotated"}}
    diff = Job().diff("id", OLD, news)
    assert diff.changes and diff.replaces == []
    outs = Job().update("id", OLD, news).outs
    assert outs["connection"] == {"key": "rotated"} and outs["result"] == 42


def test_nothing_changed_is_no_change():
    diff = Job().diff("id", OLD, dict(OLD))
    assert not diff.changes and diff.replaces == []


def test_a_thing_that_vanished_outside_pulumi_is_made_again():
    class Gone(ReplacingProvider):
        def vanished(self, olds):
            return "pid"

    diff = Gone().diff("id", OLD, dict(OLD))
    assert diff.changes and diff.replaces == ["pid"]


# -- staging ------------------------------------------------------------------------------------------------
class FakeConnection:
    """Records the removals; `fail` makes them fail as an unreachable cluster would."""

    def __init__(self, fail=False):
        self.removed, self.fail = [], fail

    def remove(self, path, root, **_):
        self.removed.append((path, root))
        if self.fail:
            raise ClusterError(f"cannot remove {path} on x: cannot reach the cluster")


def test_staging_delete_removes_the_copy_inside_its_folder_and_fails_naming_it_when_it_cannot(monkeypatch):
    conn = FakeConnection()
    monkeypatch.setattr(staging.Connection, "from_props", staticmethod(lambda props: conn))
    staging._StagingProvider().delete("id", {"connection": {}, "destination": "/shared/x y/"})
    assert conn.removed == [("/shared/x y", "/shared")]
    gone = FakeConnection(fail=True)
    monkeypatch.setattr(staging.Connection, "from_props", staticmethod(lambda props: gone))
    with pytest.raises(ClusterError, match="cannot remove /shared/x on x"):  # shared storage outlives the cluster
        staging._StagingProvider().delete("id", {"connection": {}, "destination": "/shared/x"})
    assert staging._StagingProvider.settings_only == ("connection",)


def test_staging_create_checks_every_file_on_the_cluster_side(tmp_path):
    source, dest = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    (source / "a.txt").write_text("hello")
    files = staging.manifest(source)
    outs = staging._StagingProvider().create({"connection": {"kind": "local"}, "source": str(source),
                                               "destination": str(dest), "files": files}).outs
    assert outs["bytes"] >= 5 and (dest / "a.txt").read_text() == "hello"
    with pytest.raises(ClusterError, match="staged copy differs from the source"):
        staging.stage(Connection(kind="local"), str(source), str(dest), {"a.txt": "0" * 64})


# -- the embedded cluster ---------------------------------------------------------------------------------------
def test_embedded_cluster_is_started_again_when_its_daemons_died(monkeypatch):
    olds = {"state_dir": "/tmp/x", "pids": {"slurmctld": 10, "slurmd": 11}}
    monkeypatch.setattr(embedded, "running_pids", lambda d: {"slurmctld": 10, "slurmd": 11})
    assert not embedded._EmbeddedSlurmProvider().diff("id", olds, dict(olds)).changes
    monkeypatch.setattr(embedded, "running_pids", lambda d: {"slurmctld": 10})
    assert embedded._EmbeddedSlurmProvider().diff("id", olds, dict(olds)).replaces == ["pids"]
    stopped = []
    monkeypatch.setattr(embedded, "stop_cluster", lambda *a, **k: stopped.append((a, k)))
    embedded._EmbeddedSlurmProvider().delete("id", olds)
    assert stopped == [(("/tmp/x", olds["pids"]), {"remove": True})]


# -- local processes ------------------------------------------------------------------------------------------------
def test_daemon_that_died_is_replaced_and_delete_stops_its_group(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    olds = {"name": "sleeper", "pid": proc.pid, "process_start": start_time(proc.pid),
            "remove_on_delete": [str(tmp_path / "gone")]}
    (tmp_path / "gone").mkdir()
    provider = _DaemonProvider()
    assert not provider.diff("id", olds, dict(olds)).changes
    provider.delete("id", olds)
    proc.wait(timeout=15)
    assert provider.diff("id", olds, dict(olds)).replaces == ["pid"] and not (tmp_path / "gone").exists()


def test_state_dir_made_removed_and_made_again_when_deleted_by_hand(tmp_path):
    props = {"path": str(tmp_path / "state")}
    provider = _StateDirProvider()
    provider.create(props)
    assert (tmp_path / "state").is_dir() and not provider.diff("id", props, dict(props)).changes
    provider.delete("id", props)
    assert not (tmp_path / "state").exists() and provider.diff("id", props, dict(props)).replaces == ["path"]


def test_a_one_shot_run_is_done_again_only_when_its_inputs_change():
    # olds are the last outputs; news the new inputs, where Pulumi leaves out the outputs (None) it will fill
    olds = {"name": "publish", "module": "m", "args": ["a"], "result": {"uri": "s3://x"}}
    news = {"name": "publish", "module": "m", "args": ["a"]}
    assert not _RunProvider().diff("id", olds, news).changes
    assert _RunProvider().diff("id", olds, {**news, "args": ["b"]}).replaces == ["args"]


# -- Kubernetes checks ------------------------------------------------------------------------------------------------
def test_kubernetes_checks_are_not_measured_again_for_a_wait_or_a_kubeconfig_path():
    gpu = {"context": "c", "kubeconfig": None, "node_selector": {}, "gpus_per_pod": 1, "wait_seconds": 0}
    assert _GpuNodeCheckProvider().diff("id", gpu, {**gpu, "wait_seconds": 600}).replaces == []
    assert _GpuNodeCheckProvider().diff("id", gpu, {**gpu, "gpus_per_pod": 2}).replaces == ["gpus_per_pod"]
    measured = {"context": "c", "kubeconfig": "/a", "namespace": "n", "services": [], "settings": {}, "revision": "1"}
    assert _ServingMeasurementProvider().diff("id", measured, {**measured, "kubeconfig": "/b"}).replaces == []
    assert _ServingMeasurementProvider().diff("id", measured, {**measured, "revision": "2"}).replaces == ["revision"]
