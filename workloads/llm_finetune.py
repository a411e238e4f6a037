"""MLOPS-1.2 / 2.2: supervised fine-tuning of SmolLM2-135M-Instruct on GSM8K + Self-Instruct seed tasks.

    python -m workloads.llm_finetune --model-dir DIR --data-dir SFTDIR --out-dir OUT [--max-steps N]
        [--global-batch-size B] [--seq-len L] [--lr F] [--eval-samples N] [--seed S] [--device auto|cpu|cuda]
        [--trainer torch|oumi]
    torchrun --nproc_per_node=N -m workloads.llm_finetune ...   # or: srun --ntasks=N python -m workloads.llm_finetune

DIR is a Hugging Face model directory (python -m workloads.smollm prepare --out DIR). SFTDIR holds
gsm8k_train.jsonl and self_instruct_seed_tasks.jsonl (trained on) and gsm8k_test.jsonl (held out; a fixed subset
of --eval-samples records gives heldout_loss_before/after). sft/eval/ is never read. Every record is
{instruction, input, output}; it is rendered with the model's chat template as one user turn and one assistant
turn, and the loss covers the assistant turn only (its text, <|im_end|> and the newline after it).

Data parallelism keeps the run the same at every world size: every step takes the same GLOBAL batch (drawn from
one seeded permutation), rank r takes every world-th record of it, and the loss is the sum of token losses over
the global batch divided by the global count of assistant tokens, so DDP's gradient average equals the
single-process gradient. On CUDA the forward runs under bf16 autocast with fp32 master weights; on CPU in fp32.
Rank 0 writes OUT/metrics.json (atomically) and the fine-tuned model to OUT/model.

--trainer oumi runs `oumi train` (TRL_SFT, workloads/oumi/smollm2_sft.yaml filled in with this run's settings) in
the python given by --oumi-python / $OUMI_PYTHON (oumi 0.9 pins torch<2.13 and transformers<5.17, so it lives in
its own venv), as one process or, with --oumi-nproc N, under torchrun, through workloads.oumi_cpu_ranks: each
training process writes OUT/oumi_ranks/rank<N>.json with its own counts, world size, backend and device, and the
figures here are summed from those (rank 0's trainer alone sees only its share). This process measures the
held-out loss before and after and writes the same metrics.json (trainer "oumi", loss curve from
trainer_state.json).

Both trainers count the work in the trainer itself, never from the arguments: tokens_trained (non-padding tokens
fed to the model, summed over all ranks), samples_trained (sequences, summed), optimizer_steps; world_size and
backend are what the ranks' process group reports, rank_devices the device each rank computed on.
"""
from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: total_seconds includes loading torch

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from workloads import distributed  # noqa: E402
from workloads.gpu_monitor import GpuUtilizationSampler  # noqa: E402
from workloads.metrics_io import sha256_file, write_json_atomic  # noqa: E402
from workloads.runtime import host_facts, positive_int  # noqa: E402

TRAIN_FILES = ("gsm8k_train.jsonl", "self_instruct_seed_tasks.jsonl")
HELDOUT_FILE = "gsm8k_test.jsonl"
EVAL_SUBSET_SEED = 1234  # the held-out subset is the same whatever --seed is
IGNORE = -100
# Dense bf16 peak of one H100/H200 SXM (datasheet, without sparsity): the MFU denominator, per GPU.
H200_BF16_DENSE_PEAK = 989e12
OUMI_CONFIG = Path(__file__).resolve().parent / "oumi" / "smollm2_sft.yaml"
OUMI_MICRO_BATCH = 32  # records per GPU per forward under --trainer oumi (the rest is gradient accumulation)


class InputError(Exception):
    """Bad input the user can fix (a missing file or directory, a malformed record); the message names it."""


# ----------------------------------------------------------------------------------------------- data

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"missing data file {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise InputError(f"{path}:{lineno}: not JSON ({e})") from None
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("instruction", "output")):
                raise InputError(f"{path}:{lineno}: expected an object with string instruction/input/output")
            records.append(rec)
    if not records:
        raise InputError(f"data file {path} has no records")
    return records


def check_inputs(model_dir: Path, data_dir: Path) -> None:
    """Fail before any heavy loading, naming the first missing thing."""
    if not model_dir.is_dir():
        raise InputError(f"missing model dir {model_dir} (make it with: python -m workloads.smollm prepare "
                         f"--out {model_dir})")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"model dir {model_dir} has no config.json (not a Hugging Face model directory)")
    if not data_dir.is_dir():
        raise InputError(f"missing data dir {data_dir}")
    for name in (*TRAIN_FILES, HELDOUT_FILE):
        if not (data_dir / name).is_file():
            raise InputError(f"missing data file {data_dir / name}")


def user_text(rec: dict) -> str:
    extra = (rec.get("input") or "").strip()
    return rec["instruction"].strip() + (f"\n\n{extra}" if extra else "")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside the assistant turn

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    @functools.cached_property
    def n_targets(self) -> int:
        """Tokens the loss is taken over: labels shifted by one (the first label is a prompt token, IGNORE)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode(tokenizer, rec: dict, seq_len: int) -> Example:
    """Chat-template one record; labels are the assistant turn only.

    The prompt (everything up to and including the assistant header) and the completion are tokenized
    separately and concatenated, so the label boundary is exact whatever BPE would merge across it."""
    messages = [{"role": "user", "content": user_text(rec)}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": rec["output"].strip()}],
                                         tokenize=False)
    if not full.startswith(prompt):
        raise InputError("the chat template's prompt is not a prefix of the full conversation; "
                         "cannot mask the prompt")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = (p_ids + c_ids)[:seq_len]
    labels = ([IGNORE] * len(p_ids) + c_ids)[:seq_len]
    return Example(ids, labels)


def encode_all(tokenizer, records: Sequence[dict], seq_len: int) -> list[Example]:
    # Drop records whose assistant turn is cut off completely (a prompt longer than seq_len): no loss to learn.
    return [ex for ex in (encode(tokenizer, r, seq_len) for r in records) if ex.n_label_tokens > 0]


def collate(examples: Sequence[Example], pad_id: int, device: torch.device):
    """Right-padded input_ids, attention_mask and labels (IGNORE on padding), on `device`."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def pack(examples: Sequence[Example], seq_len: int) -> list[list[Example]]:
    """First-fit decreasing: the examples in as few rows of `seq_len` tokens as fit them (deterministic)."""
    rows: list[list[Example]] = []
    free: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.input_ids)):
        n = len(ex.input_ids)
        row = next((i for i, room in enumerate(free) if room >= n), None)
        if row is None:
            rows.append([]), free.append(seq_len)
            row = len(rows) - 1
        rows[row].append(ex)
        free[row] -= n
    return rows


def collate_packed(rows: Sequence[Sequence[Example]], seq_len: int, pad_id: int, device: torch.device,
                   n_rows: int = 0):
    """input_ids, position_ids and labels of packed rows, all `seq_len` wide.

    Positions restart at 0 for each example, and no attention mask is passed: transformers then builds the
    block-diagonal causal mask from the position ids (masking_utils.find_packed_sequence_indices), so no example
    attends to another. The padded tail of a row is a segment of its own with IGNORE labels; rows up to `n_rows`
    are padding only (a fixed shape for the compiled model). Returns the tensors and the count of padding tokens."""
    shape = (max(len(rows), n_rows), seq_len)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.arange(seq_len).repeat(shape[0], 1)
    padding = (shape[0] - len(rows)) * seq_len
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at:at + n] = torch.tensor(e.labels)
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(seq_len - at)
        padding += seq_len - at
    on = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return on(ids), on(positions), on(labels), padding


def shifted_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over the label tokens, in fp32 (compiled on CUDA: one fused pass over the
    vocabulary-wide logits instead of an fp32 copy of them)."""
    shift_logits = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                             labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")


def token_loss_sum(model, ids, mask, labels, autocast_dtype, position_ids=None, loss=shifted_loss_sum):
    """Sum (not mean) of next-token cross-entropy over the label tokens, in fp32."""
    with torch.autocast(device_type=ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        # use_cache=False: with a cache, transformers does not derive the packed rows' block mask from the positions
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    return loss(logits, labels)


def n_targets(examples: Sequence[Example]) -> int:
    """Tokens the loss is taken over (labels shifted by one: the first label token of a sequence is never a
    target only if it sits at position 0, which the prompt prevents)."""
    return sum(e.n_targets for e in examples)


@torch.no_grad()
def heldout_loss(model, examples: Sequence[Example], info, device, pad_id, autocast_dtype,
                 batch_size: int = 8) -> float:
    """Mean token loss over `examples` (each rank takes every world-th one; sums all-reduced)."""
    model.eval()
    mine = list(examples[info.rank::info.world_size])
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        chunk = mine[i:i + batch_size]
        ids, mask, labels = collate(chunk, pad_id, device)
        total[0] += token_loss_sum(model, ids, mask, labels, autocast_dtype).double()
        total[1] += n_targets(chunk)
    distributed.all_reduce_sum(total, info)
    model.train()
    return float(total[0] / total[1])


def global_batches(n: int, global_batch: int, steps: int, seed: int):
    """The record indices of each step's global batch: consecutive slices of seeded permutations."""
    gen = torch.Generator().manual_seed(seed)
    perm: list[int] = []
    for _ in range(steps):
        while len(perm) < global_batch:
            perm += torch.randperm(n, generator=gen).tolist()
        yield perm[:global_batch]
        perm = perm[global_batch:]


def heldout_facts(loss_before: float, loss_after: float, samples: int) -> dict:
    """The held-out comparison and the data it used, the same for both trainers."""
    return {"heldout_loss_before": round(loss_before, 6), "heldout_loss_after": round(loss_after, 6),
            "heldout_loss_dropped": loss_after < loss_before, "heldout_samples": samples,
            "heldout_file": HELDOUT_FILE, "heldout_subset_seed": EVAL_SUBSET_SEED, "train_files": list(TRAIN_FILES)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MLOPS-1.2/2.2: SFT of SmolLM2-135M-Instruct, writes metrics.json")
    p.add_argument("--model-dir", required=True, help="HF model dir (python -m workloads.smollm prepare --out DIR)")
    p.add_argument("--data-dir", required=True, help="shared/datasets/sft")
    p.add_argument("--out-dir", required=True, help="where metrics.json and model/ are written")
    p.add_argument("--max-steps", type=positive_int, default=200)
    p.add_argument("--global-batch-size", type=positive_int, default=32)
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW peak learning rate (linear warm-up, then cosine "
                                                           "to 10%%)")
    p.add_argument("--eval-samples", type=positive_int, default=64, help="held-out gsm8k_test records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--trainer", choices=["torch", "oumi"], default="torch")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --max-steps")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads per rank (default: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK, else the "
                        "CPUs shared between the ranks on this node)")
    p.add_argument("--oumi-python", default=os.environ.get("OUMI_PYTHON") or sys.executable,
                   help="--trainer oumi: the python that has oumi 0.9 (its own venv; default $OUMI_PYTHON, else this "
                        "python)")
    p.add_argument("--oumi-config", default=str(OUMI_CONFIG), help="--trainer oumi: base training config")
    p.add_argument("--oumi-nproc", type=positive_int, default=1,
                   help="--trainer oumi: processes (GPUs) oumi trains with, via torchrun in the oumi python; the "
                        "global batch stays --global-batch-size")
    p.add_argument("--no-save", action="store_true", help="skip writing OUT/model (benchmark runs)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                   help="pack each rank's share of the step's examples into rows of --seq-len tokens (first-fit "
                        "decreasing, per-example positions, no cross-example attention) instead of padding each "
                        "example to the longest")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model's forward (auto: on CUDA)")
    return p.parse_args(argv)


def fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def main(argv=None) -> int:
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model_dir, data_dir, out_dir = Path(args.model_dir), Path(args.data_dir), Path(args.out_dir)
    try:
        check_inputs(model_dir, data_dir)
    except InputError as e:
        return fail(str(e))
    if args.trainer == "oumi":
        return run_oumi(args, model_dir, data_dir, out_dir, started_at)
    try:
        info = distributed.discover()
    except ValueError as e:
        return fail(str(e))
    if args.global_batch_size % info.world_size:
        return fail(f"--global-batch-size {args.global_batch_size} is not a multiple of the world size "
                    f"{info.world_size}")
    device = distributed.pick_device(args.device, info)
    torch.set_num_threads(args.threads or distributed.cpu_threads(info))
    backend = distributed.init(info, device)
    is_main = info.is_main

    def log(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    task = "mlops_1_2" if info.world_size == 1 else "mlops_2_2"
    log(f"{task}: torch {torch.__version__}, world {info.world_size} ({info.launcher}), device {device}, "
        f"backend {backend}, {torch.get_num_threads()} threads/rank")
    try:
        rc = _run(args, info, device, backend, task, model_dir, data_dir, out_dir, started_at, log)
    finally:
        distributed.shutdown(info)
    return rc


def _run(args, info, device, backend, task, model_dir, data_dir, out_dir, started_at, log) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.chat_template is None:
        return fail(f"the tokenizer in {model_dir} has no chat template")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        train_records = [r for name in TRAIN_FILES for r in read_jsonl(data_dir / name)]
        test_records = read_jsonl(data_dir / HELDOUT_FILE)
    except InputError as e:
        return fail(str(e))
    # Only as many training records are tokenized as the run can use (tokenizing all 7,648 takes seconds on CPU;
    # the subset is a seeded sample, so it doesn't depend on the world size either).
    needed = args.max_steps * args.global_batch_size
    sel = torch.randperm(len(train_records), generator=torch.Generator().manual_seed(args.seed)).tolist()
    if needed < len(train_records):
        sel = sel[:needed]
    train = encode_all(tokenizer, [train_records[i] for i in sel], args.seq_len)
    eval_idx = torch.randperm(len(test_records), generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED)).tolist()
    heldout = encode_all(tokenizer, [test_records[i] for i in eval_idx[:args.eval_samples]], args.seq_len)
    t_data = time.perf_counter() - t0
    if not train or not heldout:
        return fail(f"--seq-len {args.seq_len} leaves no assistant token in any "
                    f"{'training' if not train else 'held-out'} record (the prompts alone are longer)")
    log(f"data: {len(train)} train records tokenized of {len(train_records)} "
        f"({', '.join(TRAIN_FILES)}), {len(heldout)} held-out from {HELDOUT_FILE}, seq_len {args.seq_len}, "
        f"{t_data:.1f}s")

    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(device)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    t_model = time.perf_counter() - t1
    log(f"model: {type(model).__name__} {n_params:,} parameters from {model_dir} in {t_model:.1f}s")
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = model
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    forward = torch.compile(ddp) if compiled else ddp
    loss = torch.compile(shifted_loss_sum) if compiled else shifted_loss_sum
    opt_kwargs = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95), **opt_kwargs)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, args.max_steps))

    loss_before = heldout_loss(model, heldout, info, device, pad_id, autocast_dtype)
    log(f"held-out loss before: {loss_before:.4f} ({args.eval_samples} gsm8k_test records)")

    per_rank = args.global_batch_size // info.world_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sampler, gpu_note = None, "device is cpu: no GPU to sample"
    if device.type == "cuda" and info.is_main:
        sampler = GpuUtilizationSampler(device.index)
    # Rank-local counters kept on the device (no per-step host sync); summed over ranks at the end.
    step_losses = torch.zeros(args.max_steps, dtype=torch.float64, device=device)
    tokens_local = samples_local = rows_local = padding_local = optimizer_steps = 0
    # Steps excluded from the steady-state rate and from the GPU sampling: compilation, allocator, autotuning.
    warm_steps = min(3 if compiled else 2, args.max_steps - 1)
    t_warm, tokens_warm = None, 0
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    steps = list(global_batches(len(train), args.global_batch_size, args.max_steps, args.seed))
    # Packed: this rank's share of every step laid out before the loop, padded to the most rows any step needs, so
    # the compiled model sees one shape (no recompilation) and the loop does no packing.
    packed = [pack([train[i] for i in batch_idx[info.rank::info.world_size]], args.seq_len)
              for batch_idx in steps] if args.packing else []
    rows_per_step = max(map(len, packed), default=0)
    distributed.barrier(info, device)
    t_train = time.perf_counter()
    try:
        for step, batch_idx in enumerate(steps):
            if step == warm_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_warm, tokens_warm = time.perf_counter(), tokens_local
                if sampler and not sampler.start():
                    gpu_note, sampler = sampler.note, None
            global_examples = [train[i] for i in batch_idx]
            mine = global_examples[info.rank::info.world_size]
            denom = n_targets(global_examples)  # every rank knows the whole global batch: no communication
            if args.packing:
                ids, positions, labels, padding = collate_packed(packed[step], args.seq_len, pad_id, device,
                                                                 n_rows=rows_per_step)
                loss_sum = token_loss_sum(forward, ids, None, labels, autocast_dtype, positions, loss)
            else:
                ids, mask, labels = collate(mine, pad_id, device)
                padding = int(ids.numel() - sum(len(e.input_ids) for e in mine))
                loss_sum = token_loss_sum(forward, ids, mask, labels, autocast_dtype, loss=loss)
            rows_local += ids.shape[0]
            padding_local += padding
            # DDP averages gradients over ranks: scale by world so the result is sum / global token count.
            (loss_sum * (info.world_size / denom)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            optimizer_steps += 1
            sched.step()
            opt.zero_grad(set_to_none=True)
            step_losses[step] = loss_sum.detach().double() / denom
            tokens_local += sum(len(e.input_ids) for e in mine)  # non-padding tokens, known on the host
            samples_local += len(mine)
            if info.is_main and (step + 1) % max(1, args.max_steps // 10) == 0:
                print(f"step {step + 1}/{args.max_steps} loss(rank0 share) {float(step_losses[step]):.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} elapsed {time.perf_counter() - t_train:.1f}s", flush=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t_train
        steady_seconds = time.perf_counter() - t_warm if t_warm is not None else None
    finally:
        gpu_util = sampler.stop() if sampler else None
    if sampler:
        gpu_note = sampler.note

    distributed.all_reduce_sum(step_losses, info)  # each rank holds its share of the global-batch mean
    counts = torch.tensor([tokens_local, tokens_local - tokens_warm], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(counts, info)
    tokens_total, tokens_steady = float(counts[0]), float(counts[1])
    if device.type == "cuda":
        peak = torch.tensor([torch.cuda.max_memory_allocated(device)], dtype=torch.float64, device=device)
    else:  # ru_maxrss is in KiB on Linux
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024], dtype=torch.float64)
    peak_all = [peak.clone() for _ in range(info.world_size)]
    if info.distributed:
        torch.distributed.all_gather(peak_all, peak)
    peak_per_rank = [int(p.item()) for p in peak_all]

    loss_after = heldout_loss(model, heldout, info, device, pad_id, autocast_dtype)
    log(f"held-out loss after: {loss_after:.4f} (before {loss_before:.4f}); train {train_seconds:.1f}s")

    # Are the replicas still identical? (a cheap fingerprint: the sum of every parameter)
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()])
    divergence = distributed.max_divergence(fingerprint, info)
    # Each rank's own view (process group world size and backend, device, what its loop trained), gathered.
    records = distributed.gather_records(distributed.rank_record(
        device, tokens_trained=tokens_local, samples_trained=samples_local, optimizer_steps=optimizer_steps,
        rows_trained=rows_local, padding_tokens=padding_local))
    ranks = distributed.summarize_ranks(records)

    if not info.is_main:
        distributed.barrier(info, device)
        return 0

    tokens_per_second = tokens_total / train_seconds
    steady_tps = tokens_steady / steady_seconds if steady_seconds else None
    mfu = None
    if device.type == "cuda":
        mfu = 6 * n_params * (steady_tps or tokens_per_second) / (info.world_size * H200_BF16_DENSE_PEAK)

    model_info = None
    if not args.no_save:
        model_path = out_dir / "model"
        model.save_pretrained(str(model_path))
        tokenizer.save_pretrained(str(model_path))
        weights = model_path / "model.safetensors"
        model_info = {"path": str(model_path.resolve()), "sha256": sha256_file(weights),
                      "weights_file": weights.name, "format": "huggingface-safetensors", "dtype": "float32",
                      "parameters": n_params}

    loss_curve = [round(float(x), 6) for x in step_losses.cpu()]
    metrics = {
        "task": task,
        "trainer": "torch",
        "train_seconds": round(train_seconds, 3),
        "total_seconds": None,  # filled in last
        "steps": optimizer_steps,  # counted by the loop (rank 0), not --max-steps
        "max_steps": args.max_steps,
        "optimizer_steps": optimizer_steps,
        "global_batch_size": args.global_batch_size,
        "per_rank_batch_size": per_rank,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "warmup_steps": warmup,
        "seed": args.seed,
        "tokens_trained": sum(r["tokens_trained"] for r in records),  # non-padding tokens, over all ranks
        "samples_trained": sum(r["samples_trained"] for r in records),
        "rank_counts": [{k: r[k] for k in ("rank", "tokens_trained", "samples_trained", "optimizer_steps")}
                        for r in sorted(records, key=lambda r: r["rank"])],
        "tokens_note": "non-padding tokens (input_ids after truncation to seq_len) each rank fed to the model, "
                       "counted in its loop and summed over the ranks",
        "packing": args.packing,
        "compiled": compiled,
        "rows_trained": sum(r["rows_trained"] for r in records),  # sequences of the batches fed to the model
        "padding_fraction": round(sum(r["padding_tokens"] for r in records)
                                  / max(1, sum(r["padding_tokens"] + r["tokens_trained"] for r in records)), 4),
        "tokens_per_second": round(tokens_per_second, 2),
        "tokens_per_second_after_warmup": round(steady_tps, 2) if steady_tps else None,
        "warmup_steps_excluded_from_rate": warm_steps,
        "loss_curve": loss_curve,
        **heldout_facts(loss_before, loss_after, len(heldout)),
        "train_records_available": len(train_records),
        "peak_memory_bytes": max(peak_per_rank),
        "peak_memory_bytes_per_rank": peak_per_rank,
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        **ranks,  # world_size, backend (measured in the ranks), ranks_reporting, rank_devices, ...
        "launcher": info.launcher,
        "launcher_world_size": info.world_size,
        "backend_requested": backend,
        "device": device.type,
        "device_name": distributed.device_name(device),
        "precision": "bf16 autocast, fp32 weights and AdamW" if autocast_dtype else "fp32",
        "num_threads_per_rank": torch.get_num_threads(),
        "gpu_utilization": gpu_util,
        "gpu_utilization_note": gpu_note or (f"rank 0's GPU only, sampled from step {warm_steps + 1} (after the "
                                             f"warm-up steps) to the end of the loop"),
        "mfu": round(mfu, 5) if mfu is not None else None,
        "mfu_peak_flops": H200_BF16_DENSE_PEAK if device.type == "cuda" else None,
        "mfu_definition": "6 * parameters * tokens_per_second_after_warmup / (world_size * peak); parameters "
                          "include the tied embeddings, attention-score FLOPs and padding are not counted; "
                          "peak = dense bf16 of one H100/H200 SXM (datasheet)",
        "replica_max_divergence": divergence,
        "parameters": n_params,
        "model": model_info,
        "model_dir": str(model_dir.resolve()),
        "data_dir": str(data_dir.resolve()),
        "load_seconds": {"data": round(t_data, 3), "model": round(t_model, 3)},
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **host_facts(started_at),
    }
    metrics["total_seconds"] = round(time.perf_counter() - PROCESS_START, 3)
    write_json_atomic(out_dir / "metrics.json", metrics)
    log(f"wrote {out_dir / 'metrics.json'}: {tokens_per_second:.0f} tokens/s, held-out {loss_before:.4f} -> "
        f"{loss_after:.4f}, total {metrics['total_seconds']:.1f}s")
    distributed.barrier(info, device)
    return 0


# ---------------------------------------------------------------------------------------------- oumi

def oumi_config(args, model_dir: Path, data_dir: Path, model_out: Path) -> dict:
    """The base YAML with this run's model, data, steps, batch, seq len, lr and seed filled in."""
    import yaml

    path = Path(args.oumi_config)
    if not path.is_file():
        raise InputError(f"oumi config {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        train, training = cfg["data"]["train"], cfg["training"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise InputError(f"oumi config {path} is invalid: {type(e).__name__}: {e}".replace("\n", " ")) from None
    if args.global_batch_size % args.oumi_nproc:
        raise InputError(f"--global-batch-size {args.global_batch_size} is not a multiple of --oumi-nproc "
                         f"{args.oumi_nproc}")
    cfg.setdefault("model", {})
    cfg["model"].update(model_name=str(model_dir.resolve()), model_max_length=args.seq_len)
    train["datasets"] = [{"dataset_name": "text_sft_jsonl", "dataset_path": str((data_dir / n).resolve())}
                         for n in TRAIN_FILES]
    train["seed"] = args.seed
    cfg["data"].pop("validation", None)  # held-out loss is measured here, on the same subset as --trainer torch
    # Oumi pads each micro-batch to its longest record: beyond OUMI_MICRO_BATCH records a GPU's memory goes to
    # padded logits, so a larger per-GPU share is accumulated over micro-batches (the global batch is unchanged).
    per_rank = args.global_batch_size // args.oumi_nproc
    micro = max(d for d in range(1, min(per_rank, OUMI_MICRO_BATCH) + 1) if per_rank % d == 0)
    training.update(output_dir=str(model_out), max_steps=args.max_steps, learning_rate=args.lr, seed=args.seed,
                    data_seed=args.seed, per_device_train_batch_size=micro,
                    gradient_accumulation_steps=per_rank // micro, logging_steps=1, eval_strategy="no")
    if args.warmup_steps is not None:
        training.pop("warmup_ratio", None)
        training["warmup_steps"] = args.warmup_steps
    if args.device == "cpu":
        cfg["model"]["device_map"] = None
    return cfg


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them (SLURM's GRES sets it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def read_rank_records(ranks_dir: Path) -> list[dict]:
    """The records the training processes wrote (workloads.oumi_cpu_ranks), in rank order; unreadable ones skipped."""
    records = []
    for path in sorted(ranks_dir.glob("rank*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("rank"), int):
            records.append(record)
    return sorted(records, key=lambda r: r["rank"])


def run_oumi(args, model_dir: Path, data_dir: Path, out_dir: Path, started_at: str) -> int:
    """--trainer oumi: `oumi train` (TRL_SFT) in the oumi python as a child process; this process measures the
    held-out loss before and after with the same code and subset as --trainer torch, and writes metrics.json."""
    import subprocess

    import transformers
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = distributed.discover()
    if info.distributed:
        return fail("--trainer oumi runs as one process (oumi starts its own ranks): use --oumi-nproc N "
                    "instead of torchrun/srun with several tasks")
    model_out = out_dir / "model"
    try:
        cfg = oumi_config(args, model_dir, data_dir, model_out)
    except InputError as e:
        return fail(str(e))
    probe = subprocess.run([args.oumi_python, "-c", "import importlib.metadata as m, oumi, sys; sys.stdout.write(m.version('oumi'))"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return fail(f"oumi is not importable by {args.oumi_python} ({last}); pass --oumi-python or $OUMI_PYTHON")
    oumi_version = probe.stdout.strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "oumi_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    device = distributed.pick_device(args.device, info)
    if device.type == "cuda" and args.oumi_nproc > len(visible_gpus()):
        return fail(f"--oumi-nproc {args.oumi_nproc} needs {args.oumi_nproc} GPUs, but this process sees "
                    f"{len(visible_gpus())} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.set_num_threads(args.threads or distributed.cpu_threads(info))
    task = "mlops_1_2" if args.oumi_nproc == 1 else "mlops_2_2"
    print(f"{task}: oumi {oumi_version} via {args.oumi_python}, {args.oumi_nproc} process(es), device {device}",
          flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        test_records = read_jsonl(data_dir / HELDOUT_FILE)
    except InputError as e:
        return fail(str(e))
    eval_idx = torch.randperm(len(test_records), generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED)).tolist()
    heldout = encode_all(tokenizer, [test_records[i] for i in eval_idx[:args.eval_samples]], args.seq_len)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    def evaluate(path: Path) -> tuple[float, int]:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
        loss = heldout_loss(model, heldout, info, device, pad_id, autocast_dtype)
        n = sum(p.numel() for p in model.parameters())
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return loss, n

    loss_before, n_params = evaluate(model_dir)
    print(f"held-out loss before: {loss_before:.4f}", flush=True)

    base = [args.oumi_python]
    if args.oumi_nproc > 1:
        base += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.oumi_nproc}"]
    # workloads.oumi_cpu_ranks is Oumi's CLI with a record from each training process (its own counts, world
    # size, backend and device: rank 0's trainer alone sees only its share), and over gloo where there is no CUDA
    # (Oumi's ranks insist on NCCL).
    cmd = base + ["-m", "workloads.oumi_cpu_ranks", "train", "-c", str(cfg_path)]
    ranks_dir = out_dir / "oumi_ranks"
    if ranks_dir.exists():
        import shutil
        shutil.rmtree(ranks_dir)  # a record left by an earlier run must not count for this one
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MLOPS_RANK_RECORD_DIR=str(ranks_dir),
               PYTHONPATH=os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p))
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        # Exactly --oumi-nproc GPUs: a lone HF Trainer process that sees more GPUs wraps the model in
        # DataParallel over all of them (measured on an H200 pair: the "1-GPU" run trained 2 x the batch).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_gpus()[:args.oumi_nproc])
    sampler, gpu_note = None, "device is cpu: no GPU to sample"
    if device.type == "cuda":
        sampler = GpuUtilizationSampler(device.index)
        if not sampler.start():
            gpu_note, sampler = sampler.note, None
    log_path = out_dir / "oumi_train.log"
    t0 = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as log_file:
            rc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        gpu_util = sampler.stop() if sampler else None
    oumi_seconds = time.perf_counter() - t0
    if sampler:
        gpu_note = sampler.note or f"GPU {device.index} only"
    if rc != 0:
        lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if ln.strip()]
        import re
        # The first exception line is the cause (torchrun adds its own ChildFailedError after it).
        errs = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
        cause = (errs[0] if errs else (lines or ["no output"])[-1])[:300]
        return fail(f"oumi train failed (exit {rc}): {cause} (full log: {log_path})")
    state_path = model_out / "trainer_state.json"
    try:
        history = json.loads(state_path.read_text(encoding="utf-8"))["log_history"]
    except (OSError, ValueError, KeyError) as e:
        return fail(f"oumi train wrote no readable {state_path}: {e}")
    steps = [h for h in history if "loss" in h]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    train_seconds = float(summary.get("train_runtime") or oumi_seconds)
    trl_tokens = steps[-1].get("num_tokens") if steps else None
    records = read_rank_records(ranks_dir)
    ranks = distributed.summarize_ranks(records, expected_world=args.oumi_nproc)
    rank0 = next((r for r in records if r.get("rank") == 0), None)
    # Counted inside each training process and summed here: none reported means no figure, not a guess.
    tokens = sum(r["tokens_trained"] for r in records) if records else None
    fingerprints = [r.get("param_fingerprint") or [] for r in records]
    divergence = (max(max((abs(a - b) for a, b in zip(f, fingerprints[0])), default=0.0) for f in fingerprints)
                  if records and all(len(f) == len(fingerprints[0]) for f in fingerprints) else None)
    loss_after, _ = evaluate(model_out)
    print(f"held-out loss after: {loss_after:.4f} (before {loss_before:.4f}); oumi train {train_seconds:.1f}s",
          flush=True)
    tps = tokens / train_seconds if tokens and train_seconds > 0 else None
    mfu = 6 * n_params * tps / (args.oumi_nproc * H200_BF16_DENSE_PEAK) if device.type == "cuda" and tps else None
    weights = model_out / "model.safetensors"
    if device.type == "cuda":
        peak, peak_kind = None, "not measured for --trainer oumi on CUDA (the training runs in child processes)"
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        peak_kind = "max RSS of the largest child process (oumi train)"
    metrics = {
        "task": task,
        "trainer": "oumi",
        "oumi_version": oumi_version,
        "oumi_trainer_type": cfg["training"].get("trainer_type"),
        "oumi_config": str(cfg_path.resolve()),
        "oumi_log": str(log_path.resolve()),
        "train_seconds": round(train_seconds, 3),
        "oumi_process_seconds": round(oumi_seconds, 3),
        "total_seconds": None,
        "steps": len(steps),
        "max_steps": args.max_steps,
        "optimizer_steps": rank0["optimizer_steps"] if rank0 else None,  # the trainer's state.global_step
        "global_batch_size": args.global_batch_size,
        "per_rank_batch_size": args.global_batch_size // args.oumi_nproc,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "seed": args.seed,
        "tokens_trained": tokens,
        "samples_trained": sum(r["samples_trained"] for r in records) if records else None,
        "rank_counts": [{k: r.get(k) for k in ("rank", "tokens_trained", "samples_trained", "micro_batches",
                                                "optimizer_steps", "trainer_num_input_tokens_seen",
                                                "accelerate_distributed_type", "model_wrapped")} for r in records],
        "tokens_trained_trainer_state": rank0.get("trainer_num_input_tokens_seen") if rank0 else None,
        "trl_num_tokens": int(trl_tokens) if trl_tokens is not None else None,
        "tokens_per_second": round(tps, 2) if tps else None,
        "tokens_note": "non-padding (attention-mask) tokens of the micro-batches each training process stepped on, "
                       "counted inside it and summed over the ranks that reported (oumi_ranks/rank<N>.json), "
                       "over oumi's train_runtime; tokens_trained_trainer_state is the HF trainer's all-reduced "
                       "num_input_tokens_seen, trl_num_tokens TRL's logged num_tokens",
        "replica_max_divergence": divergence,
        # The trainer's own view of data parallelism in each rank: a rank whose model is not DDP-wrapped trains
        # alone (its gradients are never averaged with the others').
        "ranks_wrapped_ddp": sum(1 for r in records if "DistributedDataParallel" in str(r.get("model_wrapped"))),
        "loss_curve": [round(float(h["loss"]), 6) for h in steps],
        **heldout_facts(loss_before, loss_after, len(heldout)),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        **ranks,  # world_size, backend: what the training processes' process group reported; rank_devices, ...
        "oumi_rank_records": str(ranks_dir.resolve()),
        "launcher": "oumi" if args.oumi_nproc == 1 else "oumi via torchrun",
        "launcher_world_size": args.oumi_nproc,
        "backend_requested": None if args.oumi_nproc == 1 else ("nccl" if device.type == "cuda" else "gloo"),
        "device": device.type,
        "device_name": distributed.device_name(device),
        "gpu_utilization": gpu_util,
        "gpu_utilization_note": gpu_note,
        "mfu": round(mfu, 5) if mfu is not None else None,
        "mfu_peak_flops": H200_BF16_DENSE_PEAK if device.type == "cuda" else None,
        "parameters": n_params,
        "model": {"path": str(model_out.resolve()), "sha256": sha256_file(weights), "weights_file": weights.name,
                  "format": "huggingface-safetensors", "parameters": n_params} if weights.is_file() else None,
        "model_dir": str(model_dir.resolve()),
        "data_dir": str(data_dir.resolve()),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        **host_facts(started_at),
    }
    metrics["total_seconds"] = round(time.perf_counter() - PROCESS_START, 3)
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(f"wrote {out_dir / 'metrics.json'} (total {metrics['total_seconds']:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
