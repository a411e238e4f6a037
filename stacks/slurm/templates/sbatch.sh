#!/bin/bash
# Rendered by mlops-validation (stacks/slurm/job.py); submitted by workloads/slurm_submit.py.
${directives}
set -euo pipefail
export JOB_DIR=${job_dir}
cd "$$JOB_DIR"
# What the scheduler gave this job, read back by the stack (GRES shows up as CUDA_VISIBLE_DEVICES).
cat > job_env.json <<JSON
{"started_at": "$$(date +%s.%N)", "hostname": "$$(hostname -s)", "SLURM_JOB_ID": "$${SLURM_JOB_ID:-}",
 "CUDA_VISIBLE_DEVICES": "$${CUDA_VISIBLE_DEVICES:-}", "SLURM_JOB_GPUS": "$${SLURM_JOB_GPUS:-}",
 "SLURM_GPUS_ON_NODE": "$${SLURM_GPUS_ON_NODE:-}", "SLURM_NTASKS": "$${SLURM_NTASKS:-}",
 "SLURM_CPUS_PER_TASK": "$${SLURM_CPUS_PER_TASK:-}"}
JSON
${command}
