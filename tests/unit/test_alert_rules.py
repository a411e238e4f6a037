"""The alert rules (monitoring/rules/*.yml) as Prometheus loads them: `promtool check rules` on each file, and
`promtool test rules` on the unit tests beside them (*_test.yml). promtool comes with Debian's `prometheus`,
which tools/bootstrap.sh installs: a missing promtool fails here, it is never skipped."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules"
RULE_FILES = sorted(p for p in RULES.glob("*.yml") if not p.name.endswith("_test.yml"))
TEST_FILES = sorted(RULES.glob("*_test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: tools/bootstrap.sh installs Debian's prometheus, which ships it"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=RULES)


def test_there_are_rules_and_tests():
    assert RULE_FILES and TEST_FILES


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_rules_check(rules: Path):
    done = promtool("check", "rules", rules.name)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tests", TEST_FILES, ids=lambda p: p.name)
def test_rules_unit_tests(tests: Path):
    done = promtool("test", "rules", tests.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for f in TEST_FILES for case in yaml.safe_load(f.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - tested == set(), f"alerts without a test that shows them firing: {sorted(alerts - tested)}"
