"""The CI workflows (.github/workflows/): actionlint finds nothing, every `run:` step is a Makefile target, and the
Pulumi CLI they install is the one tools/bootstrap.sh pins."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = shutil.which("actionlint", path=f"{ROOT}/.tools/bin")
    assert found, "actionlint is not in .tools/bin: run make setup (tools/bootstrap.sh builds it)"
    return found


def _lint(*files: Path) -> subprocess.CompletedProcess:
    # shellcheck and pyflakes are left out: the run: steps are make targets, and the result must not depend on
    # which of them this machine happens to have
    return subprocess.run([_actionlint(), "-no-color", "-shellcheck=", "-pyflakes=",
                           "-config-file", str(ROOT / ".github" / "actionlint.yaml"), *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _steps(path: Path):
    for job in (yaml.safe_load(path.read_text())["jobs"] or {}).values():
        yield from job.get("steps") or []


def test_the_three_workflows_are_there():
    assert [p.name for p in WORKFLOWS] == ["drift.yml", "preview.yml", "validate.yml"]


def test_actionlint_finds_nothing_in_the_workflows():
    proc = _lint(*WORKFLOWS)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: [self-hosted, mlops-validation]\n"
                   "    steps:\n      - run: make up STACK=${{ vars.MLOPS_STACK }\n      - uses: actions/checkout@v4\n"
                   "        with: {no-such-input: 1}\n")
    proc = _lint(bad)
    assert proc.returncode == 1 and "no-such-input" in proc.stdout


def test_every_run_step_is_a_makefile_target():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for path in WORKFLOWS:
        runs = [step["run"].strip() for step in _steps(path) if "run" in step]
        assert runs, f"{path.name} runs no Makefile target"
        for command in runs:
            words = command.split()
            assert words[0] == "make" and words[1] in targets and "\n" not in command, (path.name, command)
            assert all(re.fullmatch(r'[A-Z_]+="\$[A-Z_]+"', w) for w in words[2:]), (path.name, command)


@pytest.mark.parametrize("workflow, target", [("preview.yml", "preview"), ("drift.yml", "drift"),
                                              ("validate.yml", "revalidate"), ("validate.yml", "acceptance")])
def test_each_workflow_runs_its_target(workflow, target):
    runs = [s.get("run", "") for s in _steps(ROOT / ".github" / "workflows" / workflow)]
    assert any(r.startswith(f"make {target} ") for r in runs)


def test_the_pulumi_cli_they_install_is_the_bootstraps():
    pinned = re.search(r"^PULUMI_CLI_VERSION=v(\S+)", (ROOT / "tools" / "bootstrap.sh").read_text(), re.M).group(1)
    for path in WORKFLOWS:
        installs = [s for s in _steps(path) if str(s.get("uses", "")).startswith("pulumi/actions@")]
        assert [s["with"]["pulumi-version"] for s in installs] == [pinned], path.name
        assert not any("command" in s["with"] for s in installs), "pulumi runs through make, not the action"


def test_triggers_preview_on_infrastructure_pull_requests_drift_and_validation_on_a_schedule():
    load = lambda name: yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())  # noqa: E731
    preview, drift, validate = load("preview.yml"), load("drift.yml"), load("validate.yml")
    on = lambda w: w[True]  # noqa: E731  (YAML 1.1 reads the key `on` as True)
    assert {"stacks/**", "workloads/**", "__main__.py", "Pulumi*.yaml"} <= set(on(preview)["pull_request"]["paths"])
    assert preview["permissions"]["pull-requests"] == "write"
    assert on(drift)["schedule"] and on(validate)["schedule"]
    upload = [s for s in _steps(ROOT / ".github" / "workflows" / "validate.yml")
              if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload and upload[0]["with"]["path"].startswith("reports/")
