"""`modelservice export-llm HF_FOLDER -o OUT [--precision fp32|fp16|int4] [--int4-block-size N]`:
a local Hugging
Face folder -> an onnxruntime-genai folder (genai_config.json, the decoder .onnx and its
data, the tokenizer files), by onnxruntime-genai's model builder, with no hub downloads
(HF_HUB_OFFLINE=1). The result is checked with a short greedy generation on a fixed prompt
set; its size is reported, and for int4 the change against an fp32 export of the same
folder: the share of greedy tokens that agree, prompt by prompt, up to the first
difference.

The folder is built and checked beside OUT, then moved into place: a failed export leaves
OUT as it was. An OUT that already holds files (perhaps what a server is serving) is
refused unless --force, which replaces it whole, by a rename, only once the new one passed
its check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int4")
# Weights per scale in int4 (the builder's MatMulNBits block_size; 32 is its default and
# llama.cpp's Q4_0). Larger blocks are coarser and, on CPUs with int8 dot products, faster
# at batch: bench/matmul_nbits.py measured 16 rows of the 500M model's layers 1.4-1.7x
# faster at 128 than at 32.
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_INT4_BLOCK_SIZE = 32
# The fixed prompt set of the check and of the int4 comparison.
PROMPTS = (
    "Hello, how are you",
    "The quick brown fox",
    "Once upon a time",
    "A model is served on Kubernetes",
)
CHECK_TOKENS = 16


class ExportError(RuntimeError):
    """The folder cannot be exported; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_folder", metavar="HF_FOLDER", help="a local Hugging Face model folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="weights (default fp32)"
    )
    parser.add_argument(
        "--int4-block-size",
        type=int,
        choices=INT4_BLOCK_SIZES,
        default=None,
        help=f"weights per scale with --precision int4 (default {DEFAULT_INT4_BLOCK_SIZE}, as "
        "llama.cpp's Q4_0; larger is coarser and faster at batch on CPUs)",
    )
    parser.add_argument(
        "--execution-provider",
        choices=("cpu", "cuda"),
        default="cpu",
        help="the provider the model is built for (default cpu)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT when it already holds files (it is swapped in whole once the new "
        "export passed its check)",
    )


def build(
    hf_folder: Path,
    out: Path,
    precision: str,
    provider: str = "cpu",
    int4_block_size: int | None = None,
) -> Path:
    """Run the model builder on `hf_folder` into `out`; ExportError with its last lines."""
    check_input(hf_folder)
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    check_block_size(precision, int4_block_size)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-llm-cache-") as cache:
        cmd = [
            sys.executable, "-m", "onnxruntime_genai.models.builder",
            "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", provider, "-c", cache,
        ]  # fmt: skip
        if int4_block_size is not None:
            cmd += ["--extra_options", f"block_size={int4_block_size}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ExportError(f"the onnxruntime-genai model builder failed on {hf_folder}:\n{tail}")
    return out


def check_block_size(precision: str, int4_block_size: int | None) -> None:
    if int4_block_size is None:
        return
    if precision != "int4":
        raise ExportError(
            f"--int4-block-size applies to --precision int4 only (got --precision {precision})"
        )
    if int4_block_size not in INT4_BLOCK_SIZES:
        raise ExportError(
            f"--int4-block-size must be one of {INT4_BLOCK_SIZES}, got {int4_block_size}"
        )


def check_input(hf_folder: Path) -> None:
    """ExportError naming what is wrong with HF_FOLDER, and what it should be."""
    if not hf_folder.exists():
        raise ExportError(
            f"{hf_folder}: does not exist; pass a local Hugging Face model folder (config.json, "
            "model.safetensors, tokenizer.json), e.g. one made by python examples/make_tiny_llm.py"
        )
    if not hf_folder.is_dir() or not (hf_folder / "config.json").is_file():
        raise ExportError(
            f"{hf_folder}: not a Hugging Face model folder (no config.json); pass the folder "
            "save_pretrained wrote"
        )


def check_output(out: Path, force: bool) -> None:
    """Refuse an OUT holding files, unless `force`."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"-o {out}: is a file; the output is a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(
            f"-o {out}: the folder is not empty (a server may be serving it); pass --force to "
            "replace it once the new export has passed its check, or choose another -o"
        )


def publish(staged: Path, out: Path) -> None:
    """Move the checked folder `staged` to `out`, replacing what was there by renames."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def greedy(
    folder: Path, prompts: tuple[str, ...] = PROMPTS, tokens: int = CHECK_TOKENS
) -> list[list[int]]:
    """Greedy tokens for each prompt, in-process with onnxruntime-genai's Generator."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    results = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        out: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        results.append(out)
    return results


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of tokens of `a` matched by `b`, each prompt counted up to its first
    difference (after which greedy decoding follows another path)."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        total += len(x)
        for u, v in zip(x, y, strict=False):
            if u != v:
                break
            same += 1
    return same / total if total else 1.0


@dataclass(frozen=True)
class Report:
    out: Path
    precision: str
    size_bytes: int
    tokens: list[list[int]]
    fp32_size_bytes: int | None = None
    agreement_with_fp32: float | None = None


def export_llm(
    hf_folder: Path,
    out: Path,
    precision: str,
    provider: str = "cpu",
    force: bool = False,
    int4_block_size: int | None = None,
) -> Report:
    check_input(hf_folder)
    check_output(out, force)
    check_block_size(precision, int4_block_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.export-llm-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        report = _export(hf_folder, staged, precision, provider, int4_block_size)
        publish(staged, out)
    return dataclasses.replace(report, out=out)


def _export(
    hf_folder: Path, out: Path, precision: str, provider: str, int4_block_size: int | None
) -> Report:
    build(hf_folder, out, precision, provider, int4_block_size)
    tokens = greedy(out)
    if not all(tokens):
        raise ExportError(f"{out}: the check generation produced no tokens for some prompt")
    if precision != "int4":
        return Report(out, precision, folder_bytes(out), tokens)
    with tempfile.TemporaryDirectory(prefix="export-llm-fp32-") as ref:
        build(hf_folder, Path(ref), "fp32", provider)
        ref_tokens = greedy(Path(ref))
        ref_size = folder_bytes(Path(ref))
    return Report(
        out, precision, folder_bytes(out), tokens, ref_size, agreement(ref_tokens, tokens)
    )


def run(args: argparse.Namespace) -> int:
    try:
        report = export_llm(
            Path(args.hf_folder),
            Path(args.output),
            args.precision,
            args.execution_provider,
            args.force,
            args.int4_block_size,
        )
    except ExportError as e:
        print(f"modelservice export-llm: {e}", file=sys.stderr)
        return 1
    print(f"wrote {report.out} ({report.precision}, {report.size_bytes / 1e6:.2f} MB)")
    print(f"check: greedy generation of {CHECK_TOKENS} tokens on {len(PROMPTS)} prompts: ok")
    if report.agreement_with_fp32 is not None and report.fp32_size_bytes:
        print(
            f"int4 vs fp32: {report.size_bytes / report.fp32_size_bytes:.2f}x the size "
            f"({report.fp32_size_bytes / 1e6:.2f} MB fp32); greedy tokens agreeing with fp32 "
            f"on the fixed prompts: {100 * report.agreement_with_fp32:.1f}%"
        )
    return 0
