"""MLOPS-4.2: the KServe text-generation predictor for SmolLM2 (any Hugging Face causal-LM folder), with
request batching: concurrent requests wait up to --max-batch-delay-ms for each other and are generated together,
up to --max-batch-size prompts a forward pass (KServe's Python server has no batcher of its own; in a cluster the
agent sidecar's batcher does the same job in front of it).

    python -m workloads.serving.llm_predictor --model-name smollm2 --storage-uri s3://models/smollm2/<sha> \
        --http-port 8081 [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--max-new-tokens 16]

V1: {"instances": ["prompt", {"prompt": "...", "max_new_tokens": 8}, ...]} -> {"predictions": ["text", ...]}.
V2: a BYTES input "text_input" of shape [N] (optional INT32/INT64 "max_new_tokens" [1] or [N]) -> BYTES output
"text_output" [N]. Greedy decoding, so the same prompt gives the same answer. Bad requests are answered 400.
"""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
import time
from dataclasses import dataclass, field
from typing import Optional, Union

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from the storage URI, never from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import kserve  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from prometheus_client import Histogram  # noqa: E402

from workloads.serving.server import ModelFetchError, base_parser, fetch, serve, write_load_metrics  # noqa: E402

MAX_PROMPT_CHARS = 4000
BATCH_SIZES = Histogram("llm_batch_size", "prompts generated together in one batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))


@dataclass
class Pending:
    prompt: str
    max_new_tokens: int
    future: asyncio.Future = field(repr=False)


class TextGenerator(kserve.Model):
    def __init__(self, name: str, storage_uri: str, model_dir: Optional[str], device: str, dtype: str,
                 max_new_tokens: int, max_batch_size: int, max_batch_delay_ms: float, chat_template: bool):
        super().__init__(name)
        self.storage_uri, self.model_dir = storage_uri, model_dir
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = dtype
        self.default_new_tokens, self.max_new_tokens_limit = max_new_tokens, max(max_new_tokens, 256)
        self.max_batch_size, self.max_batch_delay_s = max_batch_size, max_batch_delay_ms / 1000
        self.use_chat_template = chat_template
        self.tokenizer = self.model = None
        self.queue: Optional[asyncio.Queue] = None
        self.batcher: Optional[asyncio.Task] = None
        self.timings: dict = {}

    def load(self) -> bool:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local, download_s = fetch(self.storage_uri, self.model_dir)
        if not (local / "config.json").is_file():
            raise ModelFetchError(f"{self.storage_uri} is not a Hugging Face model folder (no config.json)")
        started = time.perf_counter()
        dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(str(local))
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(local), dtype=dtype).to(self.device).eval()
        self._generate(["Hello"], 2)  # warm-up: first-call allocations and kernels
        self.timings = {"download_seconds": round(download_s, 3),
                        "model_load_seconds": round(time.perf_counter() - started, 3),
                        "device": self.device, "dtype": str(dtype).removeprefix("torch."),
                        "device_name": torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
                        "parameters": sum(p.numel() for p in self.model.parameters())}
        self.ready = True
        return self.ready

    # -- generation (runs in a worker thread, one batch at a time) -----------------------------------------
    def _render(self, prompt: str) -> str:
        if self.use_chat_template and self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def _generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        enc = self.tokenizer([self._render(p) for p in prompts], return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_batch_delay_s
            while len(batch) < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            BATCH_SIZES.observe(len(batch))
            longest = max(p.max_new_tokens for p in batch)
            try:
                texts = await asyncio.to_thread(self._generate, [p.prompt for p in batch], longest)
            except Exception as exc:  # a failed batch fails its requests, not the server
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, text in zip(batch, texts):
                if not p.future.done():
                    p.future.set_result(text if p.max_new_tokens == longest else self._truncate(text, p.max_new_tokens))

    def _truncate(self, text: str, max_new_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def _submit(self, prompts: list[tuple[str, int]]) -> list[str]:
        if self.batcher is None or self.batcher.done():
            self.queue = asyncio.Queue()
            self.batcher = asyncio.create_task(self._batch_loop())
        loop = asyncio.get_running_loop()
        pending = [Pending(p, n, loop.create_future()) for p, n in prompts]
        for item in pending:
            self.queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in pending)))

    # -- request parsing ------------------------------------------------------------------------------------
    def _checked(self, prompt, max_new_tokens) -> tuple[str, int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("each prompt must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"prompt longer than {MAX_PROMPT_CHARS} characters")
        n = self.default_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.max_new_tokens_limit:
            raise InvalidInput(f"max_new_tokens must be an integer 1..{self.max_new_tokens_limit} (got {n!r})")
        return prompt, int(n)

    def _v1_prompts(self, payload) -> list[tuple[str, int]]:
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list) or not payload["instances"]:
            raise InvalidInput('expected a JSON object with "instances": ["prompt" | {"prompt": ..., "max_new_tokens": N}, ...]')
        prompts = []
        for item in payload["instances"]:
            if isinstance(item, dict):
                unknown = set(item) - {"prompt", "max_new_tokens"}
                if unknown:
                    raise InvalidInput(f"unknown instance keys {sorted(unknown)}; allowed: prompt, max_new_tokens")
                prompts.append(self._checked(item.get("prompt"), item.get("max_new_tokens")))
            else:
                prompts.append(self._checked(item, None))
        return prompts

    def _v2_prompts(self, request: InferRequest) -> list[tuple[str, int]]:
        by_name = {i.name: i for i in request.inputs}
        if "text_input" not in by_name or set(by_name) - {"text_input", "max_new_tokens"}:
            raise InvalidInput(f"expected inputs text_input (BYTES [N]) and optional max_new_tokens; got {sorted(by_name)}")
        text = by_name["text_input"]
        if text.datatype != "BYTES":
            raise InvalidInput(f"text_input must be BYTES (got {text.datatype})")
        prompts = [t.decode() if isinstance(t, bytes) else t for t in np.asarray(text.data, dtype=object).ravel()]
        limits = [None] * len(prompts)
        if "max_new_tokens" in by_name:
            values = [int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                      for v in np.asarray(by_name["max_new_tokens"].data, dtype=object).ravel()]
            if len(values) not in (1, len(prompts)):
                raise InvalidInput("max_new_tokens must have 1 or N values")
            limits = values * len(prompts) if len(values) == 1 else values
        if not prompts:
            raise InvalidInput("text_input is empty")
        return [self._checked(p, n) for p, n in zip(prompts, limits)]

    async def predict(self, payload: Union[dict, InferRequest], headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            texts = await self._submit(self._v2_prompts(payload))
            out = InferOutput(name="text_output", shape=[len(texts)], datatype="BYTES")
            out.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4()))
        return {"predictions": await self._submit(self._v1_prompts(payload))}


def main(argv: list[str] | None = None) -> int:
    p = base_parser("KServe text-generation predictor with request batching (Hugging Face causal LM)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-new-tokens", type=int, default=16, help="default when a request names none")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-batch-delay-ms", type=float, default=10.0)
    p.add_argument("--no-chat-template", action="store_true", help="send prompts as raw text")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = TextGenerator(args.model_name, args.storage_uri, args.model_dir, args.device, args.dtype,
                          args.max_new_tokens, args.max_batch_size, args.max_batch_delay_ms, not args.no_chat_template)
    try:
        model.load()
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    write_load_metrics(args.metrics_file, **model.timings, max_batch_size=args.max_batch_size,
                       max_batch_delay_ms=args.max_batch_delay_ms, torch_threads=torch.get_num_threads())
    serve(model, args.host, args.http_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
