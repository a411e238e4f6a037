"""MLOPS-3.2: evaluation functions for `oumi evaluate` (custom backend), offline, on the local JSONL sets.

Oumi loads this module from `OUMI_EXTRA_DEPS_FILE`; an evaluation config then names the tasks:

    tasks:
      - {evaluation_backend: custom, task_name: mlops_gsm8k, num_samples: 8,
         eval_kwargs: {data_path: sft/gsm8k_test.jsonl}}
      - {evaluation_backend: custom, task_name: mlops_self_instruct, num_samples: 8,
         eval_kwargs: {data_path: sft/eval/self_instruct_user_oriented_eval.jsonl}}

Records are {instruction, input, output}; the prompt is built exactly as Oumi's `text_sft_jsonl` (alpaca) turns
them into a user message at training time, and the answer is generated greedily by the model Oumi's engine built from the config.

- mlops_gsm8k: exact match of the final answer (the number after "####" in the reference; in the prediction
  the number after "####" when the model writes one, else its last number), and the loss/perplexity of the
  reference solution under the model (mean token NLL of the answer given the prompt, teacher-forced).
- mlops_self_instruct (the 252 user-oriented instructions, each with one human-written answer): ROUGE-L F1
  between the generated and the reference answer, plus the reference answer's loss/perplexity. Why: the tasks are
  open-ended and no judge model is available offline; ROUGE-L is the automatic metric the Self-Instruct paper
  itself reports, it is deterministic and cheap, and the reference perplexity (no generation involved) shows
  whether fine-tuning moved the model towards human-written answers even where greedy text differs.

Each task also writes its per-sample predictions to <output_dir>/<task>_samples.jsonl.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

GSM8K_TASK = "mlops_gsm8k"
SELF_INSTRUCT_TASK = "mlops_self_instruct"

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


# -- plain functions (unit-tested on tiny inputs) ------------------------------------------------------------------
def load_records(path: str, limit: Optional[int] = None) -> list[dict]:
    """The first `limit` records of a JSONL file of {instruction, input, output} (the same subset every run)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = {"instruction", "input", "output"} - set(record)
            if missing:
                raise ValueError(f"{path}:{line_no}: record lacks {sorted(missing)}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def prompt_of(record: dict) -> str:
    """The user message, as oumi's TextSftJsonLinesDataset builds it from an alpaca record."""
    return f"{record['instruction']}\n\n{record['input']}".strip()


def normalize_number(text: str) -> Optional[str]:
    """'$1,234.50' -> '1234.5', '18.' -> '18', '-3' -> '-3'; None if it is no number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return str(int(value)) if value == int(value) else repr(value)


def final_answer(text: str) -> Optional[str]:
    """The final numeric answer of a GSM8K-style solution: the number after the last '####' if there is one, else
    the last number in the text; normalized. None if there is no number."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(tail)
        if found:
            return normalize_number(found[0])
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def exact_match(prediction: str, reference: str) -> bool:
    wanted = final_answer(reference)
    return wanted is not None and final_answer(prediction) == wanted


def rouge_l_f1(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer  # Google's reference implementation (pip rouge-score)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def answer_token_ids(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of the chat-formatted (prompt, answer) pair and where the answer starts (prompt tokens are not
    scored). The prompt part is the template with the generation prompt, which must be a prefix of the pair."""
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template's generation prompt is not a prefix of the formatted answer")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    return ids, min(len(prompt_ids), len(ids))


def reference_loss(model, tokenizer, prompts: list[str], answers: list[str], max_length: int = 1024) -> dict:
    """Mean token NLL (nats) of the reference answers given their prompts, teacher-forced, and its perplexity."""
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            ids, start = answer_token_ids(tokenizer, prompt, answer, max_length)
            if len(ids) - start < 1 or start < 1:
                continue
            input_ids = torch.tensor([ids], device=device)
            logits = model(input_ids=input_ids).logits.float()
            # token t is predicted from position t-1; score the answer tokens only
            logprobs = torch.log_softmax(logits[0, start - 1:-1], dim=-1)
            targets = input_ids[0, start:]
            total_nll -= logprobs.gather(1, targets.unsqueeze(1)).sum().item()
            total_tokens += targets.numel()
    if total_tokens == 0:
        raise ValueError("no answer tokens to score (prompts longer than max_length?)")
    mean = total_nll / total_tokens
    return {"loss": mean, "perplexity": math.exp(mean), "answer_tokens": total_tokens}


# -- Oumi glue ---------------------------------------------------------------------------------------------------
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to chat-formatted prompts, batched with left padding.

    Not Oumi's NATIVE engine.infer(): with transformers 5.16 its GenerationConfig(use_cache=...) is not honoured
    and every token recomputes the whole sequence (16 tokens x 4 prompts on this CPU: 22 s against 2.4 s with
    use_cache=True passed to generate). The model and tokenizer are still the ones Oumi built from the config."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def _model_and_tokenizer(config, inference_engine):
    # Oumi's NATIVE engine already holds the model: score with it rather than load a second copy.
    model, tokenizer = getattr(inference_engine, "_model", None), getattr(inference_engine, "_tokenizer", None)
    if model is None or tokenizer is None:
        from oumi.builders import build_model, build_tokenizer

        model, tokenizer = build_model(config.model), build_tokenizer(config.model)
    return model, tokenizer


def _generation(config) -> tuple[int, int]:
    return config.generation.max_new_tokens or 256, config.generation.batch_size or 1


def _records(task_params, data_path: str) -> list[dict]:
    return load_records(data_path, task_params.num_samples)


def _write_samples(config, task: str, rows: list[dict]) -> None:
    if config.output_dir:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{task}_samples.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_gsm8k(task_params, config, inference_engine, data_path: str) -> dict[str, Any]:
    records = _records(task_params, data_path)
    prompts = [prompt_of(r) for r in records]
    model, tokenizer = _model_and_tokenizer(config, inference_engine)
    predictions = generate(model, tokenizer, prompts, *_generation(config))
    rows = [{"prompt": p, "reference": final_answer(r["output"]), "predicted": final_answer(pred),
             "correct": exact_match(pred, r["output"]), "generation": pred}
            for p, r, pred in zip(prompts, records, predictions)]
    loss = reference_loss(model, tokenizer, prompts, [r["output"] for r in records])
    _write_samples(config, GSM8K_TASK, rows)
    correct = sum(r["correct"] for r in rows)
    return {"exact_match": correct / len(rows), "num_correct": correct, "num_samples": len(rows),
            "num_with_number": sum(r["predicted"] is not None for r in rows), **loss}


def evaluate_self_instruct(task_params, config, inference_engine, data_path: str) -> dict[str, Any]:
    records = _records(task_params, data_path)
    prompts = [prompt_of(r) for r in records]
    model, tokenizer = _model_and_tokenizer(config, inference_engine)
    predictions = generate(model, tokenizer, prompts, *_generation(config))
    scores = [rouge_l_f1(pred, r["output"]) for pred, r in zip(predictions, records)]
    loss = reference_loss(model, tokenizer, prompts, [r["output"] for r in records])
    _write_samples(config, SELF_INSTRUCT_TASK, [{"prompt": p, "reference": r["output"], "generation": pred,
                                                 "rouge_l_f1": s}
                                                for p, r, pred, s in zip(prompts, records, predictions, scores)])
    return {"rouge_l_f1": sum(scores) / len(scores), "num_samples": len(scores), **loss}


try:  # registered when Oumi loads the module; the plain functions above need no Oumi
    from oumi.core.registry import register_evaluation_function
except ImportError:  # pragma: no cover - only in environments without oumi
    pass
else:
    @register_evaluation_function(GSM8K_TASK)
    def mlops_gsm8k(task_params, config, inference_engine, data_path: str) -> dict[str, Any]:
        return evaluate_gsm8k(task_params, config, inference_engine, data_path)

    @register_evaluation_function(SELF_INSTRUCT_TASK)
    def mlops_self_instruct(task_params, config, inference_engine, data_path: str) -> dict[str, Any]:
        return evaluate_self_instruct(task_params, config, inference_engine, data_path)
