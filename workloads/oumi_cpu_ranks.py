"""`oumi` CLI for data-parallel ranks on CPU-only nodes: the embedded default's MLOPS-2.2 path.

    torchrun --nproc_per_node=2 -m workloads.oumi_cpu_ranks train -c CONFIG   # instead of: -m oumi train ...

Oumi 0.9 starts its ranks with `torch.cuda.set_device(local_rank)` and the NCCL backend
(oumi/core/distributed.py: init_distributed), so on a node without an NVIDIA driver every rank dies with
"Found no NVIDIA driver". This entry point swaps in the same initialisation over gloo when CUDA is absent and
then runs Oumi's own CLI unchanged; with CUDA present it changes nothing. The trainer, data pipeline and
gradient all-reduce are Oumi's and Hugging Face's; only the process-group backend differs.
"""
from __future__ import annotations

import sys
from datetime import timedelta
from typing import Optional


def init_gloo(backend: str = "nccl", timeout_minutes: Optional[float] = None) -> None:
    """oumi.core.distributed.init_distributed, over gloo and without a CUDA device."""
    import torch.distributed as dist
    from oumi.core.distributed import get_device_rank_info

    info = get_device_rank_info()
    dist.init_process_group(backend="gloo", rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(minutes=timeout_minutes) if timeout_minutes else None)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        import oumi.core.distributed

        # Patched before oumi.train is imported, so its `from oumi.core.distributed import init_distributed`
        # picks this one up (importing oumi.train here would shadow the oumi.train() function Oumi's CLI calls).
        oumi.core.distributed.init_distributed = init_gloo
    from oumi.cli.main import run

    sys.argv[0] = "oumi"
    return run()


if __name__ == "__main__":
    sys.exit(main())
