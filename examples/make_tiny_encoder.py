"""Make a tiny sentence encoder folder offline, for `modelservice serve` to serve on
POST /v1/embeddings.

    python examples/make_tiny_encoder.py [DIR]      # default: ./tiny-encoder

A two-layer BERT with random weights from a fixed seed, exported to ONNX, with a WordPiece
tokenizer trained on a few sentences and sentence-transformers' pooling and Normalize files
(tests/tinyencoder.py, the model the tests use): its vectors mean nothing, but the folder has
the layout a real sentence-transformers export has. It needs the export extra (torch,
transformers, tokenizers): pip install 'modelservice[runtime,genai,export]'. Run it from the
repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/

from tests.tinyencoder import make_tiny_encoder

if __name__ == "__main__":
    folder = make_tiny_encoder(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-encoder"))
    print(folder)
