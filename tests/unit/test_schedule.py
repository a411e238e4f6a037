"""The scheduled re-validation on the embedded default (tools/schedule.sh, tools/systemd/): the rendered units
pass systemd-analyze verify, run `make revalidate` on the stack at the given time, and bad input is one line."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _schedule(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "tools/schedule.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_the_rendered_units_run_make_revalidate_at_the_time_and_verify(tmp_path):
    proc = _schedule("render", "dev", "Mon *-*-* 04:00:00", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    service = (tmp_path / "mlops-validation@.service").read_text()
    timer = (tmp_path / "mlops-validation@dev.timer").read_text()
    assert f"WorkingDirectory={ROOT}\n" in service
    assert f"ExecStart={shutil.which('make')} revalidate STACK=%i\n" in service
    assert "OnCalendar=Mon *-*-* 04:00:00\n" in timer and "Persistent=true" in timer
    assert not any(f"@{name}@" in service + timer for name in ("REPO", "MAKE", "STACK", "ONCALENDAR"))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd, in tools/bootstrap.sh's apt list)"
    for unit in ("mlops-validation@dev.timer", "mlops-validation@dev.service"):
        verify = subprocess.run([analyze, "verify", "--man=no", unit], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
        assert verify.returncode == 0 and "mlops-validation" not in verify.stderr, verify.stderr


def test_a_bad_time_or_stack_is_one_line_naming_it(tmp_path):
    proc = _schedule("render", "dev", "Funday 25:00", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "SCHEDULE 'Funday 25:00' is no systemd calendar event" in proc.stderr
    proc = _schedule("render", "no-such-stack", "daily", str(tmp_path))
    assert proc.returncode == 2 and "no stack of this repo (no Pulumi.no-such-stack.yaml)" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_install_where_systemd_does_not_run_says_so_and_remove_takes_the_units_away(tmp_path):
    if not Path("/run/systemd/system").exists():
        proc = _schedule("install", "dev", env={"SYSTEMD_UNIT_DIR": str(tmp_path)})
        assert proc.returncode == 2 and "systemd is not running on this machine" in proc.stderr
        assert not list(tmp_path.iterdir())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/systemctl.calls\n')
    (bin_dir / "systemctl").chmod(0o755)
    units = tmp_path / "units"
    assert _schedule("render", "dev", "daily", str(units)).returncode == 0
    assert _schedule("render", "itest", "daily", str(units)).returncode == 0
    env = {"SYSTEMD_UNIT_DIR": str(units), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert _schedule("remove", "dev", env=env).returncode == 0
    assert sorted(p.name for p in units.iterdir()) == ["mlops-validation@.service", "mlops-validation@itest.timer"]
    assert _schedule("remove", "itest", env=env).returncode == 0
    assert not list(units.iterdir())  # the service template goes with the last timer
