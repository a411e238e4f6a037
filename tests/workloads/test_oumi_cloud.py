"""The `mlops_slurm` Oumi cloud (workloads/oumi_cloud.py). Needs oumi: run with .venv-oumi
(`make test` does); skipped in environments without it."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("oumi")

from oumi.core.configs import JobConfig, JobResources  # noqa: E402
from oumi.core.launcher import ClusterUnreachableError  # noqa: E402
from oumi.launcher.clients import slurm_client  # noqa: E402
from oumi.launcher.clusters.slurm_cluster import _create_job_script  # noqa: E402

from workloads import oumi_cloud  # noqa: E402
from workloads.oumi_cloud import RUN_MARKER, Site, SiteError, in_apptainer  # noqa: E402
from tests.ports import closed_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _site(tmp_path, **overrides) -> Path:
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host x\n  HostName 127.0.0.1\n")
    raw = {"clusters": ["root@x"], "ssh_config": str(cfg), "control_path": str(tmp_path / "cm"),
           "partition": "debug", "gres": "gpu:1", **overrides}
    path = tmp_path / "site.json"
    path.write_text(json.dumps(raw))
    return path


def test_site_loads_and_gives_oumi_its_ssh_options(tmp_path):
    site = Site.load(str(_site(tmp_path)))
    assert site.clusters == ["root@x"] and site.partition == "debug" and site.gres == "gpu:1"
    assert site.ssh_options == f"-F {tmp_path}/ssh_config -S {tmp_path}/cm"


@pytest.mark.parametrize("overrides, message", [
    ({"clusters": []}, "'clusters' is required"),
    ({"ssh_config": "/nonexistent/ssh_config"}, "does not exist"),
    ({"control_path": "/tmp/with space/cm"}, "without spaces or quotes"),
    ({"partitoin": "debug"}, "unknown key(s) ['partitoin']"),
])
def test_bad_site_file_names_the_key(tmp_path, overrides, message):
    with pytest.raises(SiteError, match=re.escape(message)):
        Site.load(str(_site(tmp_path, **overrides)))


def test_bad_cluster_name_is_refused_by_oumis_own_check(tmp_path):
    with pytest.raises(ValueError, match="Must be in the format 'user@hostname'"):
        Site.load(str(_site(tmp_path, clusters=["no-user-here"])))


def test_apptainer_wraps_the_body_and_keeps_sbatch_lines_first():
    run = "#SBATCH --time=5\nset -euo pipefail\necho \"$HOME\" 'x'\n"
    wrapped = in_apptainer(run, "/shared/img.sif", ["/shared"])
    lines = wrapped.splitlines()
    assert lines[0] == "#SBATCH --time=5"
    assert lines[-1] == f'apptainer exec --nv --bind /shared /shared/img.sif bash -c "${RUN_MARKER}"'
    # the body survives byte for byte: run the wrapper with a stand-in `apptainer` that just runs its command
    job = JobConfig(name="t", user="root", resources=JobResources(cloud="slurm"), run=wrapped,
                    envs={"GREETING": "hi"})
    script = _create_job_script(job)
    assert script.index("#SBATCH --time=5") < script.index("export GREETING=hi")


def test_apptainer_wrapper_runs_the_body(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apptainer").write_text('#!/bin/bash\n# apptainer exec --nv [--bind B]... IMAGE CMD...\n'
                                    'shift 2; while [ "$1" = --bind ]; do shift 2; done; shift; exec "$@"\n')
    (fake / "apptainer").chmod(0o755)
    wrapped = in_apptainer("#SBATCH --time=1\nset -eu\necho \"body:$GREETING:'q'\"\n", "/img.sif", ["/a"])
    out = subprocess.run(["bash", "-c", wrapped], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "GREETING": "hi"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "body:hi:'q'\n"


def test_apptainer_refuses_a_body_with_its_marker():
    with pytest.raises(ValueError, match=RUN_MARKER):
        in_apptainer(f"echo a\n{RUN_MARKER}\n", "/img.sif", [])


def test_cloud_without_a_site_has_no_clusters(monkeypatch):
    monkeypatch.delenv(oumi_cloud.SITE_ENV, raising=False)
    before = slurm_client._CTRL_PATH
    cloud = oumi_cloud.site_slurm_cloud_builder()
    assert cloud.list_clusters() == [] and slurm_client._CTRL_PATH == before


def test_unreachable_login_node_is_oumis_cluster_unreachable_error_and_leaves_no_master(tmp_path, monkeypatch):
    """Real ssh through the site's config, to a port where nothing listens."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host dead\n  HostName 127.0.0.1\n  Port {closed_port()}\n  BatchMode yes\n"
                   f"  ConnectTimeout 5\n  UserKnownHostsFile {tmp_path}/kh\n")
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"clusters": ["root@dead"], "ssh_config": str(cfg),
                                "control_path": str(tmp_path / "cm")}))
    monkeypatch.setenv(oumi_cloud.SITE_ENV, str(site))
    before = slurm_client._CTRL_PATH
    started = time.monotonic()
    try:
        with pytest.raises(ClusterUnreachableError, match="root@dead"):
            oumi_cloud.site_slurm_cloud_builder()
        assert slurm_client._CTRL_PATH == f"-F {cfg} -S {tmp_path}/cm"
    finally:
        slurm_client._CTRL_PATH = before
    assert time.monotonic() - started < 60
    assert not (tmp_path / "cm").exists()


def test_oumi_lists_the_cloud_when_loaded_from_extra_deps_file(tmp_path):
    deps = tmp_path / "deps.txt"
    deps.write_text(f"{ROOT / 'workloads' / 'oumi_cloud.py'}\n")
    env = {**os.environ, "OUMI_EXTRA_DEPS_FILE": str(deps), "DO_NOT_TRACK": "1", "COLUMNS": "200"}
    env.pop(oumi_cloud.SITE_ENV, None)
    out = subprocess.run([sys.executable, "-m", "oumi", "launch", "which"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert oumi_cloud.CLOUD_NAME in out.stdout
