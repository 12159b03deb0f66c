"""Random-weight Llama models of realistic compute for bench/llm.py, built offline and cached.

Each recipe is a Hugging Face folder (transformers' LlamaConfig, random weights from a fixed
seed, a byte-level BPE tokenizer trained with `tokenizers` on a generated corpus, as
tests/tinyllm.py does), exported with export-llm's builder call to onnxruntime-genai fp32
and int4, and converted with llama.cpp's converter to GGUF f32 and Q4_0 (when the llama.cpp
build of hack/build-llamacpp.sh is there). Everything lives in .cache/bench-models/<name>/,
rebuilt when the recipe, onnxruntime-genai's version or llama.cpp's version changes
(recipe.json / gguf.json there).

The end-of-sequence row of lm_head is zeroed: its logit is then always 0 while the largest of
the other thousands of random logits is almost surely above 0, so greedy decoding never ends
early and every server produces exactly max_tokens tokens (the bench checks the counts).

    .cache/venv/bin/python -m bench.llm_models [llama25m llama500m ...]   # build, print paths
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".cache" / "bench-models"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class Recipe:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 4096
    context: int = 2048
    seed: int = 1234
    init: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        return self.layers * per_layer + 2 * self.vocab * h + h

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """KV cache per token of one row: layers x (K and V) x kv_heads x head_dim x bytes."""
        return self.layers * 2 * self.kv_heads * self.head_dim * dtype_bytes


RECIPES = {
    r.name: r
    for r in (
        # LLM_PEER.md's model, with a real vocabulary: about 25M parameters.
        Recipe("llama25m", hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1376),
        # About 0.5B parameters (2 GB in fp32).
        Recipe(
            "llama500m", hidden=1536, layers=20, heads=12, kv_heads=4, intermediate=4096, vocab=8192
        ),
    )
}


def corpus(seed: int, lines: int = 20000) -> list[str]:
    """A generated text of made-up words (Zipf-like frequencies) with punctuation and
    numbers: enough distinct pairs for a BPE vocabulary of several thousand tokens."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w"]
    onsets += ["st", "tr", "ch", "sh", "th", "pl", "gr", "br", "cl", "fr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
    words = []
    for _ in range(6000):
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.append(
            "".join(
                rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(syllables)
            )
        )
    weights = [1 / (i + 1) for i in range(len(words))]
    out = []
    for _ in range(lines):
        n = rng.randint(5, 18)
        sentence = " ".join(rng.choices(words, weights, k=n))
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 10000)}"
        out.append(sentence.capitalize() + rng.choice([".", ".", ",", "?", "!"]))
    return out


def make_hf(recipe: Recipe, folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(recipe.seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=recipe.context,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=recipe.init,
    )
    torch.manual_seed(recipe.seed)
    with torch.no_grad():
        model = LlamaForCausalLM(config).eval()
        model.lm_head.weight[fast.eos_token_id].zero_()  # greedy never picks EOS
    model.generation_config.pad_token_id = fast.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    del model
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return folder


def _stamp(folder: Path, name: str, key: dict) -> bool:
    path = folder / name
    return path.is_file() and json.loads(path.read_text()) == key


def build(name: str, gguf: bool = True, log=print) -> Path:
    """The model's folder (hf/, genai-fp32/, genai-int4/ and, with a llama.cpp build,
    gguf-f32.gguf and gguf-q4_0.gguf), built what is missing."""
    import onnxruntime_genai as og
    from modelservice_runtime.tools.export_llm import build as export

    recipe = RECIPES[name]
    folder = ROOT / name
    key = {**dataclasses.asdict(recipe), "onnxruntime_genai": og.__version__, "eos_row": 0}
    if not _stamp(folder, "recipe.json", key):
        shutil.rmtree(folder, ignore_errors=True)
        log(f"{name}: building the HF folder ({recipe.params() / 1e6:.0f}M parameters)")
        make_hf(recipe, folder / "hf")
        for precision in ("fp32", "int4"):
            log(f"{name}: export-llm --precision {precision}")
            export(folder / "hf", folder / f"genai-{precision}", precision)
        (folder / "recipe.json").write_text(json.dumps(key))
    if gguf:
        llama = llamacpp_dir()
        gkey = {"llama_cpp": llama.name if llama else None}
        if llama and not _stamp(folder, "gguf.json", gkey):
            for old in folder.glob("*.gguf"):
                old.unlink()
            (folder / "gguf.json").write_text(json.dumps(gkey))
        f32, q4 = folder / "gguf-f32.gguf", folder / "gguf-q4_0.gguf"
        if llama and not f32.is_file():
            log(f"{name}: GGUF f32 with llama.cpp {llama.name}'s converter")
            to_gguf(folder / "hf", f32, llama)
        if llama and not q4.is_file():
            log(f"{name}: GGUF Q4_0 with llama-quantize")
            part = q4.with_suffix(".part")
            subprocess.run(
                [str(llama / "bin" / "llama-quantize"), str(f32), str(part), "Q4_0"],
                check=True, capture_output=True,
            )  # fmt: skip
            part.rename(q4)
    return folder


def genai_folder(name: str, precision: str, log=print) -> Path:
    """The model's onnxruntime-genai folder for `precision`: fp32 and int4 as `build` makes
    them; `int4-b<N>`, int4 weights in blocks of N (export-llm --int4-block-size N),
    exported from hf/ on first use."""
    from modelservice_runtime.tools.export_llm import build as export

    folder = ROOT / name / f"genai-{precision}"
    if precision.startswith("int4-b") and not (folder / "genai_config.json").is_file():
        log(f"{name}: export-llm --precision int4 --int4-block-size {precision[6:]}")
        export(ROOT / name / "hf", folder, "int4", int4_block_size=int(precision[6:]))
    return folder


def llamacpp_dir(build_it: bool = True) -> Path | None:
    """hack/build-llamacpp.sh's folder (building it the first time), None if it fails."""
    script = REPO / "hack" / "build-llamacpp.sh"
    if not build_it:
        found = sorted((REPO / ".cache" / "llama.cpp").glob("*/bin/llama-server"))
        return found[-1].parents[1] if found else None
    env = {**os.environ, "PY": sys.executable}
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"llama.cpp build failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return Path(done.stdout.strip().splitlines()[-1])


# Runs llama.cpp's converter with an unknown pre-tokenizer hash taken as gpt-2's (ours is a
# ByteLevel BPE with GPT-2's split pattern, trained here: no published hash can match), and
# with no need for sentencepiece (our tokenizer is BPE).
_CONVERT = """
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[1] + "/convert_hf_to_gguf.py"] + sys.argv[2:]
import convert_hf_to_gguf as c
try:
    from conversion.base import TextModel as base
except ImportError:
    base = getattr(c, "TextModel", None) or c.Model
orig = base.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.get_vocab_base_pre = pre
# Without sentencepiece installed its import fails before the converter looks for a
# tokenizer.model; with it, a folder without one raises FileNotFoundError and the converter
# goes on to the BPE vocabulary. Do that directly.
spm = base._set_vocab_sentencepiece
def no_spm(self, *a, **k):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError("no tokenizer.model")
    return spm(self, *a, **k)
base._set_vocab_sentencepiece = no_spm
c.main()
"""


def to_gguf(hf: Path, out: Path, llama: Path) -> None:
    part = out.with_suffix(".part")
    cmd = [sys.executable, "-c", _CONVERT, str(llama / "src"), str(hf), "--outtype", "f32",
           "--outfile", str(part)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode == 0 and part.is_file():
        part.rename(out)
    else:
        raise RuntimeError(f"convert_hf_to_gguf failed:\n{(done.stdout + done.stderr)[-2000:]}")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tiny() -> Path:
    """The tests' tiny model (tests/tinyllm.py) exported fp32, cached as the tests cache it."""
    from tests import tinyllm

    return tinyllm.cached_tiny_llama(REPO / ".cache" / "test-models")[1]


def main() -> None:
    names = sys.argv[1:] or list(RECIPES)
    for name in names:
        print(build(name))


if __name__ == "__main__":
    main()
