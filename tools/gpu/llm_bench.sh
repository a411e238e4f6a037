#!/bin/bash
# MLOPS-1.2 / 2.2 on H200s with the Oumi trainer: the same entry point the SLURM jobs run
# (python -m workloads.llm_finetune --trainer oumi), 1 GPU then 2 GPUs (--oumi-nproc 2: torchrun inside), same
# data, steps and global batch. Run on nvidia-h200-x2 after tools/gpu/stash.sh has put the GGUF's first half and
# the Oumi wheels there (docs/benchmarks.md has the calls). Writes $OUT/log.txt and $OUT/<run>.json.
#   BUDGET=seconds SETTINGS="steps:batch ..." GPUS="1 2" MODEL=/tmp/smol bash tools/gpu/llm_bench.sh DATA_DIR
# MODEL: a prepared SmolLM2 folder (tools/gpu/serving_bench.sh leaves /tmp/smollm2); made from the GGUF if absent.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# /root/extra first: wheels carried with the data (gguf, and protobuf 6: the image's protobuf 7 has no wandb
# bindings, and Oumi imports wandb). A separate target, because google/ is shared by several wheels.
export HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PYTHONPATH=/root/extra:/root/site:$PWD
DATA=$1 L=$OUT/log.txt T0=$SECONDS MODEL=${MODEL:-/tmp/smol}
ls "$DATA"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /root/extra "$DATA"/*.whl
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import torch,transformers,oumi,trl,importlib.metadata as m,sys;print('python',sys.version.split()[0],'torch',torch.__version__,'transformers',transformers.__version__,'oumi',m.version('oumi'),'trl',trl.__version__,'gpus',torch.cuda.device_count())"; } >>$L 2>&1
python3 -c "import google.protobuf as p, oumi.train; print('protobuf', p.__version__)" 2>&1 | tail -3 | tee -a $L
python3 -c "import oumi.train" 2>/dev/null || { echo "oumi.train does not import: see above"; exit 6; }
if [ ! -f $MODEL/manifest.json ]; then
  cat /root/stash/gguf.part1 "$DATA/gguf.part2" > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
  (cd /tmp && sha256sum -c "$OLDPWD/$DATA/gguf.sha256") >>$L 2>&1 || { echo "GGUF reassembly failed (was the machine warm?)"; tail -5 $L; exit 4; }
  python3 -m workloads.smollm prepare --out $MODEL --gguf /tmp/SmolLM2-135M-Instruct.Q4_1.gguf >>$L 2>&1 || { tail -20 $L; exit 5; }
fi
for setting in ${SETTINGS:-200:32}; do
  steps=${setting%%:*} batch=${setting##*:}
  A="--model-dir $MODEL --data-dir $DATA/sft --max-steps $steps --global-batch-size $batch --seq-len 512 --eval-samples 64 --lr 5e-5 --device cuda --trainer oumi --oumi-python python3 --no-save"
  for n in ${GPUS:-1 2}; do
    if [ $((SECONDS-T0)) -gt ${BUDGET:-480} ]; then echo "time guard: skipped steps=$steps batch=$batch gpus=$n" | tee -a $L; continue; fi
    run=oumi_s${steps}_b${batch}_g$n; s=$EPOCHREALTIME
    python3 -m workloads.llm_finetune $A --oumi-nproc $n --out-dir /tmp/$run >>$L 2>&1
    rc=$?; echo "$run rc=$rc process_wall_s=$(awk "BEGIN{print $EPOCHREALTIME - $s}")" | tee -a $L
    cp /tmp/$run/metrics.json $OUT/$run.json 2>/dev/null; cp /tmp/$run/oumi_train.log $OUT/$run.oumi.log 2>/dev/null
    python3 -c "import json;m=json.load(open('/tmp/$run/metrics.json'));print({k:m.get(k) for k in ['train_seconds','tokens_per_second','mfu','heldout_loss_before','heldout_loss_after','gpu_utilization','steps','world_size','backend']})" 2>&1 | tee -a $L
  done
done
