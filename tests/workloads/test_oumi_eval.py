"""MLOPS-3.2 evaluation functions (workloads/oumi_eval.py) on tiny inputs: answer extraction, ROUGE-L, the
reference loss against transformers' own loss, and a real `oumi evaluate` of a tiny random Llama through the
registered custom functions. Needs oumi: run with .venv-oumi (`make test` does); skipped elsewhere."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("oumi")
import torch  # noqa: E402
import yaml  # noqa: E402

from workloads import oumi_eval  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
RECORDS = [
    {"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"instruction": "Add the numbers.", "input": "4 and 7", "output": "4 + 7 = 11\n#### 11"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BPE tokenizer with SmolLM2's chat format and a 2-layer random Llama (seeded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_model")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["instruction"] + " " + r["input"] + " " + r["output"] for r in RECORDS] * 5
                            + ["user assistant"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                         bos_token_id=fast.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("text, wanted", [
    ("She makes 9 * 2 = $18 a day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("so the answer is $70,000.", "70000"),
    ("It is 2.50 dollars, i.e. 2.5", "2.5"),
    ("first 3 then -4", "-4"),
    ("#### 18.0 and later 7", "18"),
    ("no number here", None),
])
def test_final_answer(text, wanted):
    assert oumi_eval.final_answer(text) == wanted


def test_exact_match_compares_final_answers_only():
    reference = RECORDS[0]["output"]
    assert oumi_eval.exact_match("2 + 3 makes 5.", reference)
    assert oumi_eval.exact_match("#### 5\nThe answer is: 5", reference)
    assert not oumi_eval.exact_match("2 + 3 = 6", reference)
    assert not oumi_eval.exact_match("5", "no number in the reference")


def test_rouge_l_f1():
    assert oumi_eval.rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert oumi_eval.rouge_l_f1("dogs bark loudly", "the cat sat on the mat") == 0.0
    partial = oumi_eval.rouge_l_f1("the cat sat", "the cat sat on the mat")
    assert 0.0 < partial < 1.0 and partial == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_prompt_is_the_one_oumi_trains_on(tmp_path):
    from oumi.datasets.sft.sft_jsonlines import TextSftJsonLinesDataset

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    dataset = TextSftJsonLinesDataset(dataset_path=str(path), format="alpaca")
    for i, record in enumerate(oumi_eval.load_records(str(path))):
        assert dataset.conversation(i).messages[0].content == oumi_eval.prompt_of(record)


def test_load_records_takes_the_first_n_and_names_a_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert oumi_eval.load_records(str(path), 2) == RECORDS[:2]
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: record lacks \['input', 'output'\]"):
        oumi_eval.load_records(str(path))


def test_reference_loss_equals_transformers_loss_on_the_answer_tokens(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts, answers = [oumi_eval.prompt_of(r) for r in RECORDS], [r["output"] for r in RECORDS]
    got = oumi_eval.reference_loss(model, tok, prompts, answers)
    nll, tokens = 0.0, 0
    for p, a in zip(prompts, answers):
        ids, start = oumi_eval.answer_token_ids(tok, p, a, 1024)
        labels = torch.tensor([[-100] * start + ids[start:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        nll += loss * (len(ids) - start)
        tokens += len(ids) - start
    assert got["answer_tokens"] == tokens
    assert got["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    # random weights over a 300-token vocabulary: perplexity near the vocabulary size, far above a real model's
    assert got["perplexity"] > 100


def test_generation_is_greedy_and_batched(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts = [oumi_eval.prompt_of(r) for r in RECORDS]
    batched = oumi_eval.generate(model, tok, prompts, max_new_tokens=6, batch_size=2)
    one_by_one = [oumi_eval.generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert len(batched) == 3 and batched == one_by_one  # left padding: a prompt's answer does not depend on its batch


def test_oumi_evaluate_runs_the_registered_functions(tmp_path, tiny_model_dir):
    data = tmp_path / "sft"
    (data / "eval").mkdir(parents=True)
    (data / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:2]))
    (data / "eval" / "self_instruct_user_oriented_eval.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in RECORDS))
    cfg = yaml.safe_load((ROOT / "workloads" / "oumi" / "mlops_eval.yaml").read_text())
    cfg["model"]["model_name"] = str(tiny_model_dir)
    cfg["generation"].update(max_new_tokens=4, batch_size=2)
    for task in cfg["tasks"]:
        task["num_samples"] = 2
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "deps.txt").write_text(f"{ROOT / 'workloads' / 'oumi_eval.py'}\n")
    env = {**os.environ, "OUMI_EXTRA_DEPS_FILE": str(tmp_path / "deps.txt"), "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "oumi", "evaluate", "-c", "eval.yaml", "--output_dir", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for path in (tmp_path / "out").glob("custom_*/task_result.json"):
        results.update(json.loads(path.read_text())["results"])
    assert set(results) == {"mlops_gsm8k", "mlops_self_instruct"}
    assert results["mlops_gsm8k"]["num_samples"] == 2 and 0 <= results["mlops_gsm8k"]["exact_match"] <= 1
    assert 0 <= results["mlops_self_instruct"]["rouge_l_f1"] <= 1
    assert results["mlops_self_instruct"]["perplexity"] > 1
    samples = (tmp_path / "out" / "mlops_gsm8k_samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 and json.loads(samples[0])["reference"] == "5"
