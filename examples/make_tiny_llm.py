"""Make a tiny Hugging Face Llama folder offline, for `modelservice export-llm` to convert.

    python examples/make_tiny_llm.py [DIR]      # default: ./tiny-llama

Two layers, random weights from a fixed seed and a byte-level BPE tokenizer trained on a
few sentences (tests/tinyllm.py, the model the tests use): it speaks nonsense, quickly, and
shows the whole path without a download. It needs the export extra (torch, transformers,
tokenizers): pip install 'modelservice[runtime,genai,export]'. Run it from the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/

from tests.tinyllm import make_tiny_llama

if __name__ == "__main__":
    folder = make_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))
    print(folder)
