"""`oumi` CLI with a record from every rank; on CPU-only nodes, over gloo (the embedded default's MLOPS-2.2 path).

    torchrun --nproc_per_node=2 -m workloads.oumi_cpu_ranks train -c CONFIG   # instead of: -m oumi train ...
    python -m workloads.oumi_cpu_ranks train -c CONFIG                         # one process

Oumi 0.9 starts its ranks with `torch.cuda.set_device(local_rank)` and the NCCL backend
(oumi/core/distributed.py: init_distributed), so on a node without an NVIDIA driver every rank dies with
"Found no NVIDIA driver". This entry point swaps in the same initialisation over gloo when CUDA is absent and
tells accelerate to treat the ranks as CPU ranks (ACCELERATE_USE_CPU: otherwise the Hugging Face trainer sees no GPU,
decides it is not distributed, and each rank trains alone on unsharded data without DDP), then runs Oumi's own CLI
unchanged; with CUDA present the process group is Oumi's own. The trainer, data pipeline and gradient all-reduce
are Oumi's and Hugging Face's; only the process-group backend differs.

With $MLOPS_RANK_RECORD_DIR set, each training process also writes DIR/rank<N>.json when its trainer has finished:
what that process itself saw and did, counted inside it (workloads.llm_finetune sums them; rank 0 alone cannot
see the other ranks' work): its rank, world size and backend as its process group reports them, the device its
model's parameters are on, the non-padding tokens (attention-mask sum) and sequences of every micro-batch its
trainer stepped on, the trainer's optimizer steps (state.global_step) and its all-reduced
num_input_tokens_seen, and a fingerprint of its parameters (to prove the replicas stayed identical).
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional

RECORD_ENV = "MLOPS_RANK_RECORD_DIR"


def init_gloo(backend: str = "nccl", timeout_minutes: Optional[float] = None) -> None:
    """oumi.core.distributed.init_distributed, over gloo and without a CUDA device."""
    import torch.distributed as dist
    from oumi.core.distributed import get_device_rank_info

    info = get_device_rank_info()
    dist.init_process_group(backend="gloo", rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(minutes=timeout_minutes) if timeout_minutes else None)


def install_rank_recorder(record_dir: Path) -> None:
    """Wrap transformers.Trainer.training_step (counts per micro-batch) and .train (writes the record at the end).

    Class attributes, so the wrap holds for TRL's SFTTrainer (its training_step calls super()) whenever Oumi
    builds it. The counts stay on the device (no host sync per step) until the end."""
    import torch
    import transformers

    counts = {"tokens": None, "samples": 0, "micro_batches": 0}
    step, train = transformers.Trainer.training_step, transformers.Trainer.train

    def training_step(self, model, inputs, *args, **kwargs):
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        if mask is not None:
            tokens = mask.sum()
        elif ids is not None:  # no mask: every position is a token
            tokens = torch.tensor(ids.numel(), device=ids.device)
        else:
            tokens = None
        if tokens is not None:
            tokens = tokens.detach().to(torch.int64)
            counts["tokens"] = tokens if counts["tokens"] is None else counts["tokens"] + tokens
        counts["samples"] += int(ids.shape[0]) if ids is not None else 0
        counts["micro_batches"] += 1
        return step(self, model, inputs, *args, **kwargs)

    def train_and_record(self, *args, **kwargs):
        if getattr(self.args, "include_num_input_tokens_seen", "no") in ("no", False):
            try:  # the trainer's own all-reduced count, as a cross-check of the summed per-rank counts
                self.args.include_num_input_tokens_seen = "non_padding"
            except Exception:  # a frozen TrainingArguments: no cross-check, nothing else changes
                pass
        result = train(self, *args, **kwargs)
        write_rank_record(self, record_dir, counts)
        return result

    transformers.Trainer.training_step = training_step
    transformers.Trainer.train = train_and_record


def write_rank_record(trainer, record_dir: Path, counts: dict) -> Path:
    import torch

    from workloads.distributed import rank_record
    from workloads.metrics_io import write_json_atomic

    model = trainer.model
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    with torch.no_grad():
        fingerprint = [float(p.detach().double().sum()) for p in params]
    record = rank_record(
        device,
        tokens_trained=int(counts["tokens"].item()) if counts["tokens"] is not None else 0,
        samples_trained=counts["samples"], micro_batches=counts["micro_batches"],
        optimizer_steps=int(trainer.state.global_step),
        trainer_num_input_tokens_seen=int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        accelerate_distributed_type=str(getattr(trainer.accelerator, "distributed_type", None)),
        model_wrapped=type(getattr(trainer, "model_wrapped", model)).__name__,
        param_fingerprint=fingerprint)
    return write_json_atomic(record_dir / f"rank{record['rank']}.json", record)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        import oumi.core.distributed

        # Patched before oumi.train is imported, so its `from oumi.core.distributed import init_distributed`
        # picks this one up (importing oumi.train here would shadow the oumi.train() function Oumi's CLI calls).
        oumi.core.distributed.init_distributed = init_gloo
        # Without this, transformers' TrainingArguments builds accelerate's PartialState with cpu=False, which
        # finds no GPU and settles on DistributedType.NO: every rank then trains alone on the whole unsharded
        # data, with no DDP and no gradient all-reduce (measured: both ranks stepped on the same sequences, and the
        # trainer's token count was rank 0's alone). cpu=True gives MULTI_CPU over the gloo group made above.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if os.environ.get(RECORD_ENV):
        install_rank_recorder(Path(os.environ[RECORD_ENV]))
    from oumi.cli.main import run

    sys.argv[0] = "oumi"
    return run()


if __name__ == "__main__":
    sys.exit(main())
