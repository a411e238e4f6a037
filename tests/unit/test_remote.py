import time

import pytest

from stacks.slurm.remote import ClusterError, ClusterUnreachable, Connection
from tests.ports import closed_port


def test_local_run_write_read_and_sync(tmp_path):
    conn = Connection(kind="local", env={"MLOPS_TEST": "yes"})
    assert conn.run("echo $MLOPS_TEST").stdout.strip() == "yes"
    conn.write_file(str(tmp_path / "a" / "b.txt"), b"hello", mode=0o600)
    assert conn.read_file(str(tmp_path / "a" / "b.txt")) == "hello"
    assert conn.read_file(str(tmp_path / "nope")) is None
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("x")
    conn.sync_dir(str(src), str(tmp_path / "dst"))
    assert (tmp_path / "dst" / "sub" / "f").read_text() == "x"


def test_failed_command_names_the_command_and_stderr():
    with pytest.raises(ClusterError) as err:
        Connection(kind="local").run("echo oops >&2; exit 4")
    assert "exited 4" in str(err.value) and "oops" in str(err.value)


def test_timeout_is_bounded():
    with pytest.raises(ClusterError, match="did not finish within 1 s"):
        Connection(kind="local").run("sleep 5", timeout=1)


def test_unreachable_ssh_host_fails_fast_and_names_it():
    conn = Connection.from_props({"kind": "ssh", "host": "127.0.0.1", "port": float(closed_port()), "user": "me",
                                  "private_key": "not a key", "connect_timeout": 3.0})
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as err:
        conn.run("true")
    assert time.monotonic() - started < 10
    assert f"me@127.0.0.1:{conn.port}" in str(err.value) and "Connection refused" in str(err.value)


def test_a_known_hosts_file_given_is_checked_strictly():
    with Connection(kind="ssh", host="h", known_hosts="/site/known_hosts")._ssh_options() as opts:
        assert "StrictHostKeyChecking=yes" in opts and "UserKnownHostsFile=/site/known_hosts" in opts
        assert "StrictHostKeyChecking=accept-new" not in opts
    with Connection(kind="ssh", host="h")._ssh_options() as opts:  # the user's own known_hosts: ssh's first-use rule
        assert "StrictHostKeyChecking=accept-new" in opts
