"""hpc.container: the job lines that check the image and the binds before the workload starts (run in bash, with
the real Apptainer that setup builds for the broken image), the workload's own record of its container, what the
submit script returns of it, the share of a task's jobs that ran inside, and the image's build inputs."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.slurm.container import (EXEC_FLAGS, ContainerRun, build_script, image_digest, inside_fraction)
from stacks.slurm.job import workload_command
from validation.config import ConfigError, parse
from validation.targets import Target, judge

ROOT = Path(__file__).resolve().parents[2]
APPTAINER = ROOT / ".tools" / "bin" / "apptainer"  # built by `make setup` (tools/setup/apptainer.sh)
# Stands in for apptainer where the test is about the job lines, not Apptainer: `exec ... IMAGE CMD...` runs CMD.
FAKE = r'''#!/bin/bash
if [ "$1" = version ]; then echo 1.5.3-fake; exit 0; fi
shift; while [ $# -gt 0 ]; do case $1 in --bind|--env|--drop-caps) shift 2;; --*) shift;; *) shift; break;; esac; done
exec "$@"
'''


def _run(tmp_path: Path, container: ContainerRun, shared: Path, module="platform", gpus=0):
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    script = workload_command(sys.executable, str(ROOT), module, "", str(shared), container, gpus=gpus)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", f"cd {job_dir}\n{script}"], capture_output=True,
                          text=True, env={**os.environ, "JOB_DIR": str(job_dir)}, timeout=120), job_dir


@pytest.fixture
def fake(tmp_path) -> str:
    path = tmp_path / "apptainer"
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


def test_the_workload_runs_under_apptainer_exec_with_the_configured_flags_binds_and_nv():
    c = ContainerRun(image="/img/w.sif", apptainer="/t/apptainer", exec_mode="no-privs", binds=("/data",), nv=True)
    cmd = workload_command("python3", "/shared/code", "workloads.mnist", "--x 1", "/shared", c, gpus=1)
    assert cmd.splitlines()[-1] == ("/t/apptainer exec --no-privs --nv --bind /shared --bind /data "
                                    "--env PYTHONPATH=/shared/code /img/w.sif python3 -m workloads.container_facts "
                                    "--out $JOB_DIR/container.json workloads.mnist --x 1")
    assert "--nv" not in workload_command("python3", "/c", "workloads.mnist", "", "/s", c, gpus=0)
    no_gpu = ContainerRun(image="/img/w.sif", exec_mode="drop-caps")
    assert "exec --drop-caps CAP_SYS_RESOURCE --bind" in workload_command("p", "/c", "m", "", "/s", no_gpu, gpus=1)
    with pytest.raises(ValueError, match="execMode"):
        ContainerRun(image="/i.sif", exec_mode="root")


def test_a_missing_image_fails_the_job_naming_it(tmp_path, fake):
    out, _ = _run(tmp_path, ContainerRun(image=str(tmp_path / "gone.sif"), apptainer=fake), tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"container: image {tmp_path}/gone.sif does not exist on ")


def test_a_bind_that_does_not_exist_fails_the_job_naming_it(tmp_path, fake):
    image = tmp_path / "w.sif"
    image.write_bytes(b"x")
    out, _ = _run(tmp_path, ContainerRun(image=str(image), apptainer=fake, binds=("/no/such/bind",)), tmp_path)
    assert out.returncode == 2 and out.stderr.strip().startswith("container: bind /no/such/bind does not exist on ")
    out, _ = _run(tmp_path, ContainerRun(image=str(image), apptainer=fake), tmp_path / "no-shared")
    assert out.returncode == 2 and f"container: bind {tmp_path}/no-shared does not exist" in out.stderr


def test_a_broken_image_fails_the_job_naming_it_with_apptainers_reason(tmp_path):
    assert APPTAINER.exists(), "make setup builds Apptainer (tools/setup/apptainer.sh)"
    image = tmp_path / "broken.sif"
    image.write_bytes(b"not a SIF image\n" * 64)
    out, job_dir = _run(tmp_path, ContainerRun(image=str(image), apptainer=str(APPTAINER), exec_mode="no-privs"),
                        tmp_path)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"container: image {image} does not start: ") and "FATAL" in line
    assert not (job_dir / "container_env.json").exists()


def test_a_good_image_records_its_sha256_and_the_workloads_own_view(tmp_path, fake):
    image = tmp_path / "w.sif"
    image.write_bytes(b"image bytes")
    out, job_dir = _run(tmp_path, ContainerRun(image=str(image), apptainer=fake, exec_mode="no-privs"), tmp_path)
    assert out.returncode == 0, out.stderr
    env = json.loads((job_dir / "container_env.json").read_text())
    assert env["image_sha256"] == hashlib.sha256(b"image bytes").hexdigest()
    assert env["apptainer_version"] == "1.5.3-fake" and env["exec_flags"] == "--no-privs"
    inside = json.loads((job_dir / "container.json").read_text())
    # the fake runs the workload on this machine, outside any image: the record says so
    assert inside["image_root_marker"] is False and inside["apptainer_container"] is None
    assert inside["python_version"] and inside["torch_version"] is None or isinstance(inside["torch_version"], str)
    assert out.stdout.strip()  # `python -m platform` ran after the record, in the same process
    assert env["image_sha256_from"] == "measured"
    again, job_dir = _run(tmp_path, ContainerRun(image=str(image), apptainer=fake), tmp_path)
    assert json.loads((job_dir / "container_env.json").read_text())["image_sha256_from"] == "cache"
    image.write_bytes(b"another image")  # a new file: measured again
    _run(tmp_path, ContainerRun(image=str(image), apptainer=fake), tmp_path)
    env = json.loads((job_dir / "container_env.json").read_text())
    assert env["image_sha256_from"] == "measured" and env["image_sha256"] == hashlib.sha256(b"another image").hexdigest()


def test_the_submit_document_carries_the_containers_facts(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("slurm_submit", ROOT / "workloads" / "slurm_submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    record = {"job_id": "1", "state": "COMPLETED", "exit_code": "0:0", "node": "n", "log_path": str(tmp_path / "x")}
    assert submit.document(str(tmp_path), record)["container"] is None
    (tmp_path / "container_env.json").write_text('{"image_sha256": "ab"}')
    (tmp_path / "container.json").write_text('{"image_root_marker": true}')
    assert submit.document(str(tmp_path), record)["container"] == {"image_sha256": "ab",
                                                                   "inside": {"image_root_marker": True}}


def test_inside_fraction_needs_the_marker_the_image_and_its_sha256():
    good = {"image_sha256": "s", "inside": {"image_root_marker": True, "apptainer_container": "/i.sif"}}
    assert inside_fraction([good, good], "/i.sif", "s") == 1.0
    assert inside_fraction([good, {**good, "inside": {**good["inside"], "image_root_marker": False}}], "/i.sif", "s") == 0.5
    assert inside_fraction([good], "/other.sif", "s") == 0.0
    assert inside_fraction([good], "/i.sif", "rebuilt") == 0.0
    assert inside_fraction([good], "/i.sif", None) == 1.0  # a site's own image: no built sha256 to compare
    assert inside_fraction([None, {"image_sha256": "s"}], "/i.sif", "s") == 0.0  # no record from inside
    assert inside_fraction([], "/i.sif", "s") is None


def test_the_image_is_rebuilt_when_its_definition_or_the_requirements_change(tmp_path):
    definition, req = tmp_path / "apptainer.def", tmp_path / "requirements.txt"
    definition.write_text("Bootstrap: debootstrap\n")
    req.write_text("torch==1\n")
    first = image_digest((definition, req))
    req.write_text("torch==2\n")
    second = image_digest((definition, req))
    definition.write_text("Bootstrap: debootstrap\n# changed\n")
    assert len({first, second, image_digest((definition, req))}) == 3
    script = build_script("/t/apptainer", "/s/images/w.sif")
    assert "/t/apptainer build --force --mksquashfs-args '-comp lz4' /s/images/w.sif.part" in script
    assert "mv -f /s/images/w.sif.part /s/images/w.sif" in script


def test_container_config():
    s = parse({"hpc": {"container": {"runtime": "apptainer"}}})  # the embedded cluster builds its own image
    assert s.hpc.container.image is None and s.hpc.container_exec_mode == "no-privs"
    assert s.cluster_apptainer() == str(ROOT / ".tools" / "bin" / "apptainer") and s.platform["container"] is True
    assert parse({}).platform["container"] is False
    site = {"target": "ssh", "ssh": {"host": "h", "user": "u"}, "sharedStorage": "/beegfs", "gpusPerNode": 0}
    with pytest.raises(ConfigError, match="mlops-validation:hpc: container: runtime 'apptainer' on target 'ssh' "
                                          "needs 'image'"):
        parse({"hpc": {**site, "container": {"runtime": "apptainer"}}, "tasks": ["storage"]})
    ok = parse({"hpc": {**site, "container": {"runtime": "apptainer", "image": "/beegfs/w.sif"}}, "tasks": ["storage"]})
    assert ok.hpc.container_exec_mode == "plain" and ok.cluster_apptainer() == "apptainer"
    with pytest.raises(ConfigError, match="mlops-validation:hpc.container: .*absolute"):
        parse({"hpc": {"container": {"runtime": "apptainer", "binds": ["data"]}}})
    with pytest.raises(ConfigError, match="mlops-validation:hpc.container.execMode"):
        parse({"hpc": {"container": {"runtime": "apptainer", "execMode": "root"}}})
    assert set(EXEC_FLAGS) == {"plain", "no-privs", "drop-caps", "userns"}


def test_the_in_container_target_applies_where_the_config_runs_containers():
    row = Target(id="t", metric="m", task="storage", key="container_jobs_inside", op="ge", threshold=1, unit="",
                 applies_to="container", source="goal")
    off = {"gpu": None, "kubernetes": False, "container": False}
    na = judge(row, {}, {}, off)
    assert na["status"] == "not_applicable" and "`hpc.container`" in na["reason"]
    on = {**off, "container": True}
    assert judge(row, {"container_jobs_inside": 1.0}, {}, on)["status"] == "pass"
    assert judge(row, {"container_jobs_inside": 0.5}, {}, on)["status"] == "fail"
    assert judge(row, {}, {}, on)["status"] == "missing"
