"""The run history (validation/history.py) and its comparison in the report, on made-up histories."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from validation import history
from validation.history import Rules, append, compare, entry, load, load_rules, rule
from validation.report import render
from validation.targets import task_result
from tests.unit.test_report import NO_GPU, ON_CPU, REGISTRY

SERVING = {"p95_ms": 12.0, "p50_ms": 6.0, "cold_start_seconds": 4.0, "error_rate": 0.0, "uptime_fraction": 1.0,
           "malformed_requests_4xx_fraction": 1.0, "device": "cpu", "requests": 900,
           "stages": [{"stage": "users=1", "p50_ms": 5, "p95_ms": 9, "p99_ms": 12, "throughput_rps": 300}]}
SLURM = {"submission_success_rate": 1.0, "gres_distinct_fraction": 1.0, "gres_count_matches_fraction": 1.0,
         "gres_overcommit_refused": 1, "connect_seconds": 0.2, "submit_to_start_p95_seconds": 1.5,
         "submit_to_start_seconds": [0.5, 1.5], "slurm_version": "22.05.8"}


def outputs(when: str, p95=12.0, success=1.0, profile="smoke", exit_code=0, commit="0123456789abcdef") -> dict:
    """A stack's outputs.json as tools/stack.sh writes it, with the figures given."""
    return {"validation": {"stack": "dev", "tasks": ["mlops_4_1", "slurm"], "profile": profile, "platform": NO_GPU},
            "mlops_4_1": task_result("mlops_4_1", {**SERVING, "p95_ms": p95}, ON_CPU, NO_GPU),
            "slurm": task_result("slurm", {**SLURM, "submission_success_rate": success}, {"device": "n/a"}, NO_GPU),
            "_run": {"action": "up", "exit_code": exit_code, "pulumi_seconds": 300.0, "finished_at": when,
                     "commit": commit, "dirty": False}}


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_each_run_is_appended_once_with_its_commit_verdict_and_metrics(tmp_path):
    source = write(tmp_path / "outputs.json", outputs("2026-12-01T03:00:00+00:00"))
    assert "run #1 (PASS) added" in append(source)
    assert "already in" in append(source)  # `make report`-like re-runs add nothing
    run = load(tmp_path / "history.jsonl").runs[0]
    assert run["commit"] == "0123456789abcdef" and run["verdict"] == "PASS" and run["stack"] == "dev"
    assert run["tasks"]["mlops_4_1"]["metrics"]["p95_ms"] == 12.0
    assert run["tasks"]["slurm"]["targets"]["slurm_submission_success"] == "pass"
    # a successful `make up` that re-ran nothing has the same outputs: not a new measurement
    write(source, outputs("2026-12-01T04:00:00+00:00"))
    assert "nothing re-ran, not added" in append(source)
    # a failed run is always kept, even with the same outputs
    write(source, outputs("2026-12-01T05:00:00+00:00", exit_code=1))
    assert "run #2 (FAIL) added" in append(source)
    write(source, outputs("2026-12-01T06:00:00+00:00", p95=30.0))
    assert "run #3 (PASS) added" in append(source)
    assert [r["exit_code"] for r in load(tmp_path / "history.jsonl").runs] == [0, 1, 0]


def test_an_empty_outputs_file_of_a_failed_up_is_a_failed_run(tmp_path):
    source = write(tmp_path / "outputs.json", {"_run": {"exit_code": 255, "finished_at": "2026-12-01T03:00:00Z"}})
    append(source)
    run = load(tmp_path / "history.jsonl").runs[0]
    assert run["verdict"] == "FAIL" and run["tasks"] == {} and run["exit_code"] == 255


def test_a_torn_or_foreign_line_is_skipped_and_named_and_the_next_run_stays_whole(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(entry(outputs("2026-12-01T03:00:00Z"))) + "\n" + '{"timestamp": "x", "tas')
    append(write(tmp_path / "outputs.json", outputs("2026-12-01T04:00:00Z", p95=13.0)))
    loaded = load(path)
    assert [r["timestamp"] for r in loaded.runs] == ["2026-12-01T03:00:00Z", "2026-12-01T04:00:00Z"]
    assert loaded.skipped == ["line 2: not JSON (Unterminated string starting at)"]
    path.write_text(path.read_text() + "[1, 2]\n")
    assert load(path).skipped[-1] == "line 4: not a run (no `timestamp` and `tasks`)"


def test_direction_and_tolerance_come_from_the_targets_table():
    assert rule("mlops_4_1", "p95_ms") == history.Rule("lower", 0.25)  # lt, unit ms
    assert rule("mlops_1_1", "test_accuracy") == history.Rule("higher", 0.02)  # gt, unit fraction
    assert rule("mlops_2_1", "scaling_efficiency").better == "higher"  # a bound (≤ 1), overridden in the table
    assert rule("slurm", "connect_seconds").better is None  # no target: no best, no regression
    own = Rules(tolerance=0.5, metrics={"mlops_4_1.p95_ms": {"better": "none"}})
    assert rule("mlops_4_1", "p95_ms", own).better is None and rule("slurm", "connect_seconds", own).tolerance == 0.5


@pytest.mark.parametrize("block, says", [
    ("tolerance: -1", "history.tolerance: Input should be greater than or equal to 0"),
    ("units: {ms: fast}", "history.units.ms:"),
    ("units: {sec: 0.5}", "history.units.sec: no target has this unit (they have: %, GPUs,"),
    ("metrics: {mlops_4_1.p95: {tolerance: 0.1}}", "history.metrics.mlops_4_1.p95: no target measures it"),
    ("metrics: {mlops_4_1.p95_ms: {better: up}}", "history.metrics.mlops_4_1.p95_ms.better:"),
    ("speed: 1", "history.speed: Extra inputs are not permitted"),
])
def test_a_bad_history_block_is_one_error_naming_the_key(tmp_path, block, says):
    table = tmp_path / "targets.yaml"
    table.write_text(f"history:\n  {block}\ntargets: []\n")
    with pytest.raises(ValueError) as caught:
        load_rules(table)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_shipped_history_block_loads():
    assert load_rules().tolerance > 0


def _runs(values, key="p95_ms", task="mlops_4_1"):
    """A made-up history: one run a value of one metric (the others as in SERVING/SLURM)."""
    runs = []
    for i, value in enumerate(values):
        run = entry(outputs(f"2026-11-{i + 1:02d}T03:00:00Z"))
        run["tasks"][task]["metrics"][key] = value
        runs.append(run)
    return runs


figures = st.lists(st.floats(min_value=0.01, max_value=1e4, allow_nan=False), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(earlier=figures, now=st.floats(min_value=0.01, max_value=1e4, allow_nan=False))
def test_lower_is_better_previous_best_and_regression(earlier, now):
    fig = {f.key: f for f in compare(outputs("2026-12-02T03:00:00Z", p95=now), _runs(earlier)).figures["mlops_4_1"]}
    p95 = fig["p95_ms"]
    assert p95.previous == earlier[-1] and p95.previous_run == len(earlier)
    assert p95.best == min(earlier) and p95.best_run == earlier.index(min(earlier)) + 1
    assert p95.regressed == (now > earlier[-1] * 1.25)
    assert p95.new_best == (now < min(earlier))
    assert p95.series == [(i + 1, v) for i, v in enumerate(earlier)] + [(len(earlier) + 1, now)]


@settings(max_examples=60, deadline=None)
@given(earlier=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8),
       now=st.floats(min_value=0.0, max_value=1.0))
def test_higher_is_better_with_a_tolerance_of_the_previous_value(earlier, now):
    current = outputs("2026-12-02T03:00:00Z", success=now)
    success = {f.key: f for f in compare(current, _runs(earlier, "submission_success_rate", "slurm")).figures["slurm"]}
    fig = success["submission_success_rate"]
    assert fig.best == max(earlier)
    assert fig.regressed == (earlier[-1] - now > 0.02 * earlier[-1])


def test_a_metric_without_a_target_has_no_best_and_never_regresses():
    runs = _runs([0.1, 0.2], key="connect_seconds", task="slurm")
    fig = {f.key: f for f in compare(outputs("2026-12-02T03:00:00Z"), runs).figures["slurm"]}["connect_seconds"]
    assert fig.previous == 0.2 and fig.best is None and not fig.regressed and fig.change == pytest.approx(0.0)


def test_from_zero_any_worse_figure_regresses():
    runs = _runs([0.0], key="error_rate")
    current = outputs("2026-12-02T03:00:00Z")
    current["mlops_4_1"]["metrics"]["error_rate"] = 0.0005
    fig = {f.key: f for f in compare(current, runs).figures["mlops_4_1"]}["error_rate"]
    assert fig.regressed and fig.change is None


def test_only_runs_of_the_same_profile_are_compared_and_a_recorded_run_against_those_before_it():
    runs = _runs([10.0, 11.0])
    runs.insert(1, entry(outputs("2026-11-01T12:00:00Z", p95=99.0, profile="full")))
    current = outputs("2026-12-02T03:00:00Z", p95=12.0)
    cmp = compare(current, runs + [entry(current), entry(outputs("2026-12-03T03:00:00Z", p95=1.0))])
    assert cmp.number == 4 and cmp.others == 1 and [n for n, _ in cmp.earlier] == [1, 3]
    p95 = {f.key: f for f in cmp.figures["mlops_4_1"]}["p95_ms"]
    assert p95.previous == 11.0 and p95.best == 10.0  # neither the full run's 99 nor the later run's 1


def test_a_target_that_passed_in_the_previous_run_and_fails_now_is_named():
    current = outputs("2026-12-02T03:00:00Z", success=0.9)
    assert compare(current, _runs([1.0], "submission_success_rate", "slurm")).target_changes == \
        ["slurm:slurm_submission_success pass → fail"]


def test_report_shows_figures_against_the_previous_run_and_the_best_flags_regressions_and_plots_trends(tmp_path):
    runs = _runs([10.0, 9.0, 11.0])
    current = outputs("2026-12-02T03:00:00Z", p95=20.0, success=0.9)
    text = render(current, tmp_path, tasks=REGISTRY, history=history.History(runs, ["line 7: not JSON (x)"]))
    assert "## Against earlier runs" in text
    assert "This is run #4 of `history.jsonl`, against 3 earlier run(s)" in text
    assert "the previous: run #3 (2026-11-03T03:00:00Z, 0123456789, PASS)" in text
    assert "**Regressions: 3**" in text
    assert "- mlops_4_1 `p95_ms`: 11 → 20, +81.8% ⚠️ regressed (tolerance 25%)" in text
    assert "- slurm `submission_success_rate`: 1 → 0.9, -10.0% ⚠️ regressed (tolerance 2%)" in text
    assert "- target slurm:slurm_submission_success pass → fail" in text
    assert "Lines of `history.jsonl` that are no run, skipped: line 7: not JSON (x)." in text
    assert "| p95_ms (lower) | 20 | 11 | +81.8% ⚠️ regressed (tolerance 25%) | 9 (run #2) |" in text
    assert "| metric | value | previous | change |" in text and "| p50_ms | 6 | 6 | ±0 |" in text
    assert "| device | cpu | — | — |" in text
    assert "![trend_mlops_4_1.png](trend_mlops_4_1.png)" in text
    assert (tmp_path / "trend_mlops_4_1.png").stat().st_size > 1000
    better = render(outputs("2026-12-02T03:00:00Z", p95=8.0), tmp_path, tasks=REGISTRY, history=history.History(runs))
    assert "No regression beyond the tolerances" in better and "| 9 (run #2) — this run is better ★ |" in better


def test_report_of_a_first_run_says_so_and_without_a_history_is_as_before(tmp_path):
    current = outputs("2026-12-02T03:00:00Z")
    first = render(current, tmp_path, tasks=REGISTRY, history=history.History())
    assert "This is run #1 of `history.jsonl`: no earlier run of this profile and GPU to compare with." in first
    assert "| metric | value |\n|---|---|" in first and "trend_" not in first
    plain = render(current, tmp_path, tasks=REGISTRY)
    assert "Against earlier runs" not in plain
