"""ModelService inference runtime and model toolkit.

The runtime serves ONNX models over the Open Inference Protocol (KServe V2) and KServe V1;
the toolkit exports, quantizes and fetches models. Heavy dependencies (torch, onnxruntime)
are imported by the commands that need them, so `modelservice --help` stays fast and the
runtime image never needs torch.
"""

import os as _os

from modelservice_cli import __version__ as __version__

# numpy's OpenBLAS threads (used here only by the explanations' least-squares fits) would
# spin against onnxruntime's pool and the event loop for the same cores: a 2048 x 63 lstsq
# measured 0.1-1.5 s with its default threads on a busy 2-core machine, 14-36 ms with one.
# Set before numpy loads (this package is imported first); a user's own setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
