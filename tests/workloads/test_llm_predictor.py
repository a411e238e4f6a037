"""The LLM predictor's batching and its static-cache generator, in process and on CPU: bucketing, left packing,
EOS cutting and the batch taker as plain functions; StaticGenerator (the GPU path's steps, run eagerly here) must
give the same tokens as Hugging Face `generate` on a tiny random Llama, for prompts of different lengths in one
padded batch; the TextGenerator gives the same answers through its static and eager paths, and a prompt too long
for every bucket falls back to the eager path. With CUDA, the captured graphs must agree with the eager steps
(and, with LLM_PREDICTOR_MODEL=<HF folder>, a real model's answers with `generate`'s; timings printed)."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from workloads.serving import llm_predictor as lp

WORDS = ["<unk>", "<pad>", "</s>", "what", "is", "the", "capital", "of", "france", "?", "paris", "hello", "a", "b",
         "c", "d", "e", "f", "g", "h"]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llm")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>") \
        .save_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=320,
                         pad_token_id=1, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_llm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llm), dtype=torch.float32).eval()


def reference(model, tokens: list[int], n: int, device="cpu") -> list[int]:
    """generate() on one unpadded prompt: what the static path must reproduce."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([tokens], device=device), max_new_tokens=n, do_sample=False,
                             pad_token_id=1)
    return lp.cut_tokens(out[0, len(tokens):].tolist(), n, frozenset({2}))


PROMPTS = [[3, 4, 5, 6, 7, 8, 9], [11], [12, 13, 14, 15, 16, 17, 18, 19, 12, 13, 14], [10, 11, 12]]


# -- pure helpers ---------------------------------------------------------------------------------------------
def test_batch_buckets_are_powers_of_two_up_to_the_maximum():
    assert lp.batch_buckets(1) == (1,)
    assert lp.batch_buckets(8) == (1, 2, 4, 8)
    assert lp.batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert lp.batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    with pytest.raises(ValueError):
        lp.batch_buckets(0)


def test_bucket_picks_the_smallest_that_fits():
    assert [lp.bucket(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


def test_parse_buckets():
    assert lp.parse_buckets("64, 32,128,64") == (32, 64, 128)
    for bad in ("", "a,b", "0,8", "-1"):
        with pytest.raises(ValueError):
            lp.parse_buckets(bad)


def test_cache_buckets_hold_every_prompt_bucket_plus_the_new_tokens():
    assert lp.cache_buckets((32, 64, 128, 256, 512), 256) == (32, 64, 128, 256, 512, 767)
    assert lp.cache_buckets((8, 16), 6) == (8, 16, 21)
    for prompts, n in (((32, 64, 128, 256, 512), 256), ((8, 16), 6), ((5,), 1)):
        buckets = lp.cache_buckets(prompts, n)
        assert all(lp.bucket(p + k - 1, buckets) for p in prompts for k in range(1, n + 1))


def test_pack_left_pads_on_the_left_and_fills_the_batch_bucket():
    ids, valid = lp.pack_left([[5, 6, 7], [9]], rows=4, length=5, pad_id=1)
    assert ids.tolist() == [[1, 1, 5, 6, 7], [1, 1, 1, 1, 9], [1] * 5, [1] * 5]
    assert valid.tolist() == [[False, False, True, True, True], [False] * 4 + [True], [False] * 5, [False] * 5]
    with pytest.raises(ValueError):
        lp.pack_left([[1] * 6], rows=1, length=5, pad_id=0)  # longer than the bucket
    with pytest.raises(ValueError):
        lp.pack_left([[1], [2]], rows=1, length=5, pad_id=0)  # more prompts than rows
    with pytest.raises(ValueError):
        lp.pack_left([[]], rows=1, length=5, pad_id=0)


def test_cut_tokens_keeps_the_first_eos_and_the_limit():
    eos = frozenset({2, 7})
    assert lp.cut_tokens([4, 5, 2, 6, 6], 5, eos) == [4, 5, 2]
    assert lp.cut_tokens([4, 5, 6, 7, 6], 3, eos) == [4, 5, 6]
    assert lp.cut_tokens([7, 5], 2, eos) == [7]
    assert lp.cut_tokens([4, 5], 8, frozenset()) == [4, 5]


def test_take_batch_takes_what_is_queued_without_waiting():
    async def go():
        q = asyncio.Queue()
        for i in range(5):
            q.put_nowait(i)
        started = time.monotonic()
        first = await lp.take_batch(q, 3, 0.0)
        second = await lp.take_batch(q, 3, 0.0)
        return first, second, time.monotonic() - started

    first, second, took = asyncio.run(go())
    assert first == [0, 1, 2] and second == [3, 4] and took < 0.05


def test_take_batch_waits_up_to_the_delay_for_more():
    async def go():
        q = asyncio.Queue()
        q.put_nowait("a")
        asyncio.get_running_loop().call_later(0.05, q.put_nowait, "b")
        asyncio.get_running_loop().call_later(0.5, q.put_nowait, "late")
        started = time.monotonic()
        batch = await lp.take_batch(q, 8, 0.2)
        return batch, time.monotonic() - started

    batch, took = asyncio.run(go())
    assert batch == ["a", "b"] and 0.15 < took < 0.45


def test_take_batch_stops_when_full():
    async def go():
        q = asyncio.Queue()
        q.put_nowait(1)
        q.put_nowait(2)
        started = time.monotonic()
        return await lp.take_batch(q, 2, 5.0), time.monotonic() - started

    batch, took = asyncio.run(go())
    assert batch == [1, 2] and took < 0.5


# -- the static generator against generate() ------------------------------------------------------------------
def test_static_generator_matches_generate_on_a_padded_batch(tiny):
    gen = lp.StaticGenerator(tiny, pad_token_id=1, eos_token_ids=2, batch_sizes=(1, 2, 4, 8),
                             prompt_buckets=(8, 16), max_new_tokens=6, graphs=False)
    assert gen.warm_up() == 4 * 2 + 4 * len(gen.cache_buckets)
    limits = [6, 3, 6, 1]
    assert gen.shapes(PROMPTS, 6) == (4, 16, 21)
    out = gen.generate(PROMPTS, limits)
    assert out == [reference(tiny, p, n) for p, n in zip(PROMPTS, limits)]
    # the same state buffers serve the next batch, of another shape
    assert gen.generate(PROMPTS[1:2], [6]) == [reference(tiny, PROMPTS[1], 6)]
    assert gen.generate(PROMPTS[:3], [6, 6, 6]) == [reference(tiny, p, 6) for p in PROMPTS[:3]]


def test_static_generator_refuses_what_fits_no_bucket(tiny):
    gen = lp.StaticGenerator(tiny, 1, [2], (1, 2), (8,), 4, graphs=False)
    assert gen.shapes([[3] * 9], 2) is None      # prompt longer than the largest bucket
    assert gen.shapes([[3]] * 3, 2) is None      # more prompts than the largest batch
    assert gen.shapes([[3]], 5) is None          # more new tokens than the cache holds
    with pytest.raises(ValueError):
        gen.generate([[3] * 9], [2])


def test_prompt_buckets_are_clipped_to_the_models_positions(tiny):
    gen = lp.StaticGenerator(tiny, 1, 2, (1,), (16, 32, 60), 300, graphs=False)  # 320 positions
    assert gen.prompt_buckets == (16,) and gen.cache_buckets == (16, 32, 315)
    with pytest.raises(ValueError):
        lp.StaticGenerator(tiny, 1, 2, (1,), (32, 60), 300, graphs=False)


# -- the KServe model's two paths -----------------------------------------------------------------------------
def load_model(folder: Path, decode: str, **kwargs) -> lp.TextGenerator:
    model = lp.TextGenerator("tiny", str(folder), None, "cpu", "float32", max_new_tokens=4, max_batch_size=4,
                             max_batch_delay_ms=20, chat_template=False, decode=decode, **kwargs)
    assert model.load()
    return model


def test_static_and_eager_paths_answer_alike(tiny_llm):
    static = load_model(tiny_llm, "static", prompt_buckets=(4, 8))
    eager = load_model(tiny_llm, "eager")
    assert static.timings["cache"] == "static" and static.timings["compiled"] == "none"  # no graphs on CPU
    assert static.timings["prompt_buckets"] == [4, 8] and static.timings["batch_buckets"] == [1, 2, 4]
    assert eager.timings["cache"] == "dynamic" and eager.static is None
    short = [("what is the capital of france ?", 4), ("hello", 2), ("a b", 3)]
    long = [("a b c d e f g h a b c", 4)]  # 11 tokens: over the largest bucket (8)

    async def ask(model, prompts):  # concurrent requests, so they are batched (delay 20 ms)
        return await asyncio.gather(*(model._submit([p]) for p in prompts))

    def eager_batches():
        return REGISTRY.get_sample_value("llm_eager_batches_total")

    before = eager_batches()
    answers = asyncio.run(ask(static, short))
    assert eager_batches() == before  # all on the static path
    assert answers == asyncio.run(ask(eager, short))
    before = eager_batches()
    assert asyncio.run(ask(static, long)) == asyncio.run(ask(eager, long))
    assert eager_batches() == before + 2  # the static model fell back, the eager model is eager anyway


# -- CUDA only: the captured graphs -----------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU machine)")


@cuda
def test_cuda_graphs_match_the_eager_steps(tiny):
    model = tiny.to("cuda")
    try:
        graphs = lp.StaticGenerator(model, 1, 2, (1, 2, 4), (8, 16), 6, graphs=True)
        eager = lp.StaticGenerator(model, 1, 2, (1, 2, 4), (8, 16), 6, graphs=False)
        assert graphs.graphs and graphs.warm_up() == 3 * 2 + 3 * len(graphs.cache_buckets)
        eager.warm_up()
        limits = [6, 3, 6, 1]
        for _ in range(3):  # replays reuse the graphs' buffers: the answers must not drift
            assert graphs.generate(PROMPTS, limits) == eager.generate(PROMPTS, limits)
        assert graphs.generate(PROMPTS, limits) == [reference(model, p, n, "cuda") for p, n in zip(PROMPTS, limits)]
    finally:
        tiny.to("cpu")


QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "What is 12 times 7?",
             "Name three primary colours.", "Translate 'good morning' into Spanish.", "Who wrote Hamlet?",
             "Give me a synonym for happy.", "What is the boiling point of water?"]


@cuda
@pytest.mark.skipif(not os.environ.get("LLM_PREDICTOR_MODEL"), reason="LLM_PREDICTOR_MODEL names no model folder")
def test_real_model_on_cuda_agrees_with_generate_and_is_timed():
    """float32: the graphs give generate()'s tokens exactly, batched or alone. bfloat16: reported, not asserted
    (a padded batch and the static cache's longer masked attention round differently from generate's dynamic cache,
    and greedy decoding of a 135M model follows the rounding; seen 6/8 equal on an H200, 2026-12-02)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.environ["LLM_PREDICTOR_MODEL"]
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:  # as the predictor does
        tok.pad_token = tok.eos_token
    tokens = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=False))["input_ids"] for q in QUESTIONS]
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to("cuda").eval()
        gen = lp.StaticGenerator(model, tok.pad_token_id, model.generation_config.eos_token_id, (1, 8), (64,), 16)
        gen.warm_up()
        batch = gen.generate(tokens, [8] * len(tokens))
        alone = [gen.generate([t], [8])[0] for t in tokens]
        ref = []
        for t in tokens:
            with torch.inference_mode():
                out = model.generate(torch.tensor([t], device="cuda"), max_new_tokens=8, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            ref.append(lp.cut_tokens(out[0, len(t):].tolist(), 8, gen.eos_ids))
        same = sum(a == b for a, b in zip(batch, ref))
        print(f"\n{dtype}: batch of 8 == generate for {same}/8, alone == generate "
              f"{sum(a == b for a, b in zip(alone, ref))}/8, batch == alone {sum(a == b for a, b in zip(batch, alone))}/8")
        for q, a, b in zip(QUESTIONS, batch, ref):
            print(f"  {q!r}: static {tok.decode(a)!r} | generate {tok.decode(b)!r}")
        if dtype == torch.float32:
            assert batch == ref and alone == ref
    started = time.perf_counter()
    gen = lp.StaticGenerator(model, tok.pad_token_id, model.generation_config.eos_token_id, lp.batch_buckets(64),
                             lp.DEFAULT_PROMPT_BUCKETS, 256)
    count = gen.warm_up()
    print(f"captured {count} graphs in {time.perf_counter() - started:.2f} s; KV cache {gen.cache_bytes / 2**30:.2f} GiB")
    for rows in (1, 8, 32, 64):
        for _ in range(3):
            gen.generate([tokens[0]] * rows, [8] * rows)
        times = []
        for _ in range(21):
            t0 = time.perf_counter()
            gen.generate([tokens[0]] * rows, [8] * rows)
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"batch {rows:2d} x 8 new tokens: median {times[10] * 1e3:.2f} ms (min {times[0] * 1e3:.2f}, "
              f"max {times[-1] * 1e3:.2f}), {rows / times[10]:.0f} sequences/s")
