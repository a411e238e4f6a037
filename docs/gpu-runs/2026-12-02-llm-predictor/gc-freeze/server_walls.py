"""Server-side wall times (KServe's kserve.trace line per V1 predict, HTTP 200) of each stage, from the full
predictor.log of a serving_bench.sh variant (in raw.tar.gz; the committed logs are cut). Stages are told apart by
time: the log's last 20 s of predict completions are the fixed-rate stage (stages of 20 s, back to back)."""
import datetime
import sys

for path in sys.argv[1:]:
    rows = []
    for line in open(path):
        if "smollm2:predict:" in line and "http_status:200" in line and "time:wall" in line:
            p = line.split()
            rows.append((datetime.datetime.strptime(f"{p[0]} {p[1]}", "%Y-%m-%d %H:%M:%S.%f").timestamp(), float(p[5])))
    rows.sort()
    walls = sorted(w for t, w in rows if t > rows[-1][0] - 20)
    q = lambda f: round(walls[int(f * (len(walls) - 1))] * 1000, 1)  # noqa: E731
    print(f"{path}: last 20 s (users=64,rate=200): n={len(walls)} server wall P50 {q(.5)} P95 {q(.95)} "
          f"P99 {q(.99)} max {round(walls[-1] * 1000, 1)} ms")
