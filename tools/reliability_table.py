"""docs/reliability.md from the suites' own output: reports/faults/results.json (tests/faults, written by each
fault test), and reports/soak/{sbatch,predictor}.json (tools/load_test.py).

    .venv/bin/python tools/reliability_table.py [--out docs/reliability.md]

Only the generated blocks between the markers are replaced; the rest of the page is prose kept by hand."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "reports" / "faults" / "results.json"
SOAK = ROOT / "reports" / "soak"


def _s(value) -> str:
    return "—" if value is None else f"{value:.1f} s"


def faults_table(results: dict) -> str:
    rows = ["| fault or input | what happened | time to detect | time to recover | data lost |",
            "|---|---|---|---|---|"]
    for r in results.get("faults", []):
        rows.append(f"| {r['fault']} | {r['happened']} | {_s(r['detect_seconds'])} | {_s(r['recover_seconds'])} "
                    f"| {r['data_lost']} |")
    if results.get("suite_seconds") is not None:
        rows.append(f"\nThe suite (`make faults`) took {results['suite_seconds']:.0f} s, measured "
                    f"{results['faults'][-1]['at'] if results.get('faults') else ''} on this machine (2 cores, "
                    f"shared).")
    return "\n".join(rows)


def load_table() -> "str | None":
    """The load rows from this machine's soak results; None where there are none (a fresh clone: reports/ is not
    kept), so that the page keeps the rows measured before instead of losing them."""
    rows = ["| load | figures | target | when |", "|---|---|---|---|"]
    sbatch = SOAK / "sbatch.json"
    if sbatch.exists():
        r = json.loads(sbatch.read_text())
        failures = "; ".join(f"{n}× {why}" for why, n in r["failures_by_reason"].items()) or "none"
        rows.append(f"| {r['submissions']} sbatch submissions through the job path ({r['parallel']} at a time) | "
                    f"{r['succeeded']}/{r['submissions']} completed (success rate {r['success_rate']:.2%}); failures: "
                    f"{failures}; submit-to-start P50 {r['submit_to_start_p50_s']} s, P95 "
                    f"{r['submit_to_start_p95_s']} s; {r['jobs_per_second']} jobs/s over {r['wall_seconds']} s | "
                    f"{r['target']} | {r['at']}, {r['machine']}: `{r['command']}` |")
    soak = SOAK / "predictor.json"
    if soak.exists():
        r = json.loads(soak.read_text())
        p95s = ", ".join(f"{v:.1f}" for v in r["p95_ms_per_stage"])
        rows.append(f"| CPU predictor (MNIST) soak, {r['rate_rps']:g} req/s for {r['seconds']} s | "
                    f"{r['successful_requests']}/{r['requests']} correct (success {r['success_rate']:.3%}), uptime "
                    f"{r['uptime_fraction']:.3%}; P95 per {r['stage_seconds']:g}-s stage [{p95s}] ms, max/min "
                    f"{r['p95_ms_max_over_min']}; P50/P95/P99 {r['p50_ms']}/{r['p95_ms']}/{r['p99_ms']} ms | "
                    f"{r['target']} | {r['at']}, {r['machine']}: `{r['command']}` |")
    return "\n".join(rows) if len(rows) > 2 else None


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"reliability_table: no <!-- {name}:begin/end --> markers in the page")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = p.parse_args(argv)
    text = args.out.read_text()
    if FAULTS.exists():
        text = replace_block(text, "faults", faults_table(json.loads(FAULTS.read_text())))
    load = load_table()
    if load is not None:
        text = replace_block(text, "load", load)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
