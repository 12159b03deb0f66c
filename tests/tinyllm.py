"""A tiny random Llama-style language model, made offline (test helper).

transformers' LlamaConfig with two layers and a small hidden size, random weights from a
fixed seed, and a byte-level BPE tokenizer trained with `tokenizers` on a built-in corpus,
saved as a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a chat template): what onnxruntime-genai's model builder takes.
The weights are scaled up from the usual init so the logits of a random model have clear
gaps: greedy decoding then picks the same token in fp32 ONNX and in torch.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model is served on Kubernetes with onnxruntime and FastAPI.",
    "Language models generate one token at a time, reading back what they wrote.",
    "Hello, how are you today? I am fine, thank you, and you?",
    "Once upon a time there was a small cluster with one real node.",
    "Tokens per second, time to first token and inter-token latency are measured.",
    "The user asks a question and the assistant answers it briefly.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Letters: a b c d e f g h i j k l m.",
] * 4

# The model's chat template: system/user/assistant turns, then the assistant's prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB = 384
CONTEXT = 512
SEED = 1234
# (hidden, intermediate, layers, attention heads, key/value heads). "tiny": steps of a
# fraction of a millisecond, overhead-bound. "wide": the same vocabulary and tokenizer with
# steps of a few milliseconds on two cores, for what only a step of some length shows (a
# decode run interrupted for a new request).
SIZES = {"tiny": (64, 128, 2, 4, 2), "wide": (768, 2048, 4, 12, 4)}


def make_tiny_llama(folder: Path, size: str = "tiny") -> Path:
    """Write the Hugging Face folder of the model of `size` (SIZES) into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)

    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=CONTEXT,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = fast.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    # The builder reads the chat template from tokenizer_config.json; transformers 5 may
    # keep it in chat_template.jinja only.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return folder


def cached_tiny_llama(cache: Path, size: str = "tiny") -> tuple[Path, Path]:
    """(Hugging Face folder, onnxruntime-genai fp32 folder) of the Llama of `size`, exported
    with `modelservice export-llm`'s builder into `cache`/tinyllm[-size]-<digest>/ once.
    The digest covers what makes the folder: this recipe, the exporter and
    onnxruntime-genai's version (a new builder writes another graph). The export takes
    about a minute."""
    import hashlib
    from importlib.metadata import version

    from modelservice_runtime.tools import export_llm

    recipe = (
        Path(__file__).read_bytes()
        + Path(export_llm.__file__).read_bytes()
        + version("onnxruntime-genai").encode()
    )
    name = "tinyllm" if size == "tiny" else f"tinyllm-{size}"
    root = cache / f"{name}-{hashlib.sha256(recipe).hexdigest()[:12]}"
    hf, genai = root / "hf", root / "genai-fp32"
    if not (genai / "genai_config.json").is_file():
        make_tiny_llama(hf, size)
        export_llm.build(hf, genai, "fp32")
    return hf, genai
