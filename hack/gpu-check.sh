#!/usr/bin/env bash
# Language models on a GPU: builds a ~500M-parameter random-weight Llama (nothing
# downloaded), exports it for CUDA in fp16 with onnxruntime-genai's builder, serves it with
# `modelservice serve --execution-provider cuda` and prints tokens/s served against
# in-process (onnxruntime-genai's Generator and the runtime's own scheduler, on CUDA), at 1
# and 16 streams. Needs a venv with modelservice[export,genai-gpu] (torch, transformers,
# onnxruntime-gpu, onnxruntime-genai-cuda) as PY. Not used by tests or CI.
#   PY=/path/to/venv/bin/python hack/gpu-check.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WORK=${1:-${TMPDIR:-/tmp}/modelservice-gpu-check}
export PYTHONPATH="$PWD/cli:$PWD/runtime:$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1
mkdir -p "$WORK"
step() { echo "== $(date +%T) $*"; }

"$PY" -c 'import onnxruntime as o; assert "CUDAExecutionProvider" in o.get_available_providers(), o.get_available_providers()'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ ! -f "$WORK/hf/config.json" ]; then
  step "random Llama, hidden 1536 x 20 layers (about 0.5B parameters)"
  "$PY" - "$WORK/hf" <<'PY'
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests import tinyllm

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(
    tinyllm.CORPUS,
    trainers.BpeTrainer(vocab_size=1024, special_tokens=tinyllm.SPECIAL,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                        show_progress=False),
)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>")
fast.chat_template = tinyllm.CHAT_TEMPLATE
fast.save_pretrained(out)
config = LlamaConfig(vocab_size=len(fast), hidden_size=1536, intermediate_size=4096,
                     num_hidden_layers=20, num_attention_heads=12, num_key_value_heads=4,
                     max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
                     eos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id)
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval()
print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
model.save_pretrained(out, safe_serialization=True)
PY
fi

if [ ! -f "$WORK/genai/genai_config.json" ]; then
  step "export for CUDA, fp16"
  "$PY" -m onnxruntime_genai.models.builder -i "$WORK/hf" -o "$WORK/genai" -p fp16 -e cuda \
    -c "$WORK/builder-cache"
fi

step "in-process against served, CUDA"
"$PY" -m bench.llm_engine_quick "$WORK/genai" --execution-provider cuda --tokens 128 \
  --rounds 3 --streams 1,16
step "done"
