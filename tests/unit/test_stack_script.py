"""tools/stack.sh refuses the embedded default's published passphrase for a stack the repo does not ship for this
machine, before Pulumi is run (so no site secret is ever encrypted with it)."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stack_sh(action: str, name: str, passphrase: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": passphrase, "PATH": "/usr/bin:/bin"}  # no pulumi on PATH
    return subprocess.run(["bash", "tools/stack.sh", action, name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_site_stack_with_the_public_passphrase_is_refused_naming_the_fix():
    site = ROOT / "Pulumi.unit-site-check.yaml"
    site.write_text((ROOT / "examples" / "Pulumi.mysite.yaml").read_text())
    try:
        for action in ("up", "preview"):
            proc = _stack_sh(action, "unit-site-check", "mlops-validation-dev-only")
            assert proc.returncode == 2, proc.stderr
            assert "public passphrase: export PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE" in proc.stderr
        # with a passphrase of its own it gets past the check (and then needs pulumi, absent from this PATH)
        proc = _stack_sh("preview", "unit-site-check", "a-site-secret-passphrase")
        assert "public passphrase" not in proc.stderr
    finally:
        site.unlink()


def _fake_pulumi(tmp_path: Path) -> Path:
    """A `pulumi` that records its arguments and succeeds, so the script's own logic is what is tested."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/pulumi.calls\n')
    (bin_dir / "pulumi").chmod(0o755)
    return bin_dir


def _lock(tmp_path: Path, pid: int) -> Path:
    folder = tmp_path / "state" / ".pulumi" / "locks" / "organization" / "mlops-validation" / "dev"
    folder.mkdir(parents=True)
    lock = folder / "0b1c.json"
    lock.write_text(f'{{"pid":{pid},"username":"root","hostname":"{os.uname().nodename}",'
                    '"timestamp":"2026-12-02T01:55:46Z"}')
    return lock


def _preview_env(tmp_path: Path) -> dict:
    return {**os.environ, "PATH": f"{_fake_pulumi(tmp_path)}:/usr/bin:/bin",
            "PULUMI_BACKEND_URL": f"file://{tmp_path}/state"}


def test_a_lock_left_by_an_interrupted_run_is_cleared_with_one_line(tmp_path):
    _lock(tmp_path, pid=2 ** 22 + 7)  # no such process
    proc = subprocess.run(["bash", "tools/stack.sh", "down", "dev"], cwd=ROOT, env=_preview_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert "clearing the lock of stack 'dev' that an interrupted run left (pulumi cancel)" in proc.stderr
    assert (tmp_path / "pulumi.calls").read_text().splitlines()[0] == "cancel --yes --stack dev"


def test_a_lock_held_by_a_running_pulumi_is_named_not_broken(tmp_path):
    holder = subprocess.Popen(["bash", "-c", "exec -a pulumi-up-holder sleep 30"])
    try:
        _lock(tmp_path, pid=holder.pid)
        proc = subprocess.run(["bash", "tools/stack.sh", "up", "dev"], cwd=ROOT, env=_preview_env(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert f"is being updated by pulumi (pid {holder.pid}" in proc.stderr and "make unlock STACK=dev" in proc.stderr
        assert not (tmp_path / "pulumi.calls").exists()  # nothing was cancelled
    finally:
        holder.kill()
        holder.wait()
