"""tools/stack.sh's history and drift wiring, with a `pulumi` that only plays its part: each `up` stamps the run
(time, commit) into outputs.json, appends it to reports/<stack>/history.jsonl and renders a report that compares it
with the run before; `drift` is `pulumi preview --expect-no-changes` and names the file its output is kept in."""
import json
import os
import shutil
import subprocess
from pathlib import Path

from validation.targets import task_result

ROOT = Path(__file__).resolve().parents[2]
STACK = "unit-history-check"
NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}


def _outputs(p95: float) -> dict:
    metrics = {"p95_ms": p95, "cold_start_seconds": 4.0, "error_rate": 0.0, "uptime_fraction": 1.0,
               "malformed_requests_4xx_fraction": 1.0}
    return {"validation": {"stack": STACK, "tasks": ["mlops_4_1"], "profile": "smoke", "platform": NO_GPU},
            "mlops_4_1": task_result("mlops_4_1", metrics, {"device": "cpu"}, NO_GPU)}


def _fake_pulumi(tmp_path: Path, preview_rc: int = 0) -> Path:
    """`stack output --json` prints $FAKE_OUTPUTS; `preview` prints a line and exits preview_rc; the rest succeed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pulumi").write_text(f'''#!/bin/sh
echo "$*" >> {tmp_path}/pulumi.calls
case "$1 $2" in
  "stack output") cat "$FAKE_OUTPUTS" ;;
  "preview --non-interactive") echo "~ 1 to update"; exit {preview_rc} ;;
esac
''')
    (bin_dir / "pulumi").chmod(0o755)
    return bin_dir


def _stack_sh(tmp_path: Path, action: str, outputs: dict | None = None, preview_rc: int = 0):
    fake = tmp_path / "fake-outputs.json"
    fake.write_text(json.dumps(outputs or {}))
    env = {**os.environ, "PATH": f"{_fake_pulumi(tmp_path, preview_rc)}:/usr/bin:/bin", "FAKE_OUTPUTS": str(fake),
           "PULUMI_BACKEND_URL": f"file://{tmp_path}/state", "PULUMI_CONFIG_PASSPHRASE": "unit-test-passphrase"}
    return subprocess.run(["bash", "tools/stack.sh", action, STACK], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_every_up_joins_the_history_and_the_report_compares_it_with_the_run_before(tmp_path):
    config, reports = ROOT / f"Pulumi.{STACK}.yaml", ROOT / "reports" / STACK
    config.write_text("config: {}\n")
    try:
        first = _stack_sh(tmp_path, "up", _outputs(10.0))
        assert first.returncode == 0, first.stderr
        assert "history: run #1 (PASS) added" in first.stdout
        again = _stack_sh(tmp_path, "up", _outputs(10.0))  # nothing re-ran: the same outputs
        assert "nothing re-ran, not added" in again.stdout
        second = _stack_sh(tmp_path, "up", _outputs(30.0))
        assert "history: run #2 (PASS) added" in second.stdout
        runs = [json.loads(line) for line in (reports / "history.jsonl").read_text().splitlines()]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert [r["tasks"]["mlops_4_1"]["metrics"]["p95_ms"] for r in runs] == [10.0, 30.0]
        assert runs[0]["commit"] == head and runs[0]["timestamp"] < runs[1]["timestamp"]
        run = json.loads((reports / "outputs.json").read_text())["_run"]
        assert run["exit_code"] == 0 and run["finished_at"] == runs[1]["timestamp"]
        report = (reports / "report.md").read_text()
        assert "This is run #2 of `history.jsonl`" in report
        assert "- mlops_4_1 `p95_ms`: 10 → 30, +200.0% ⚠️ regressed (tolerance 25%)" in report
        assert (reports / "trend_mlops_4_1.png").exists()
    finally:
        config.unlink()
        shutil.rmtree(reports, ignore_errors=True)


def test_drift_is_a_preview_that_expects_no_changes_and_keeps_its_output(tmp_path):
    config, reports = ROOT / f"Pulumi.{STACK}.yaml", ROOT / "reports" / STACK
    config.write_text("config: {}\n")
    try:
        proc = _stack_sh(tmp_path, "drift", preview_rc=255)
        assert proc.returncode == 255
        assert f"preview --non-interactive --diff --expect-no-changes --stack {STACK}" in \
            (tmp_path / "pulumi.calls").read_text()
        assert f"stack '{STACK}' differs from its code and config" in proc.stderr
        assert (reports / "drift.txt").read_text() == "~ 1 to update\n"
        assert _stack_sh(tmp_path, "preview").returncode == 0
        assert (reports / "preview.txt").read_text() == "~ 1 to update\n"
    finally:
        config.unlink()
        shutil.rmtree(reports, ignore_errors=True)
