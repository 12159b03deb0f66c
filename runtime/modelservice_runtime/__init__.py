"""ModelService inference runtime and model toolkit.

The runtime serves ONNX models over the Open Inference Protocol (KServe V2) and KServe V1;
the toolkit exports, quantizes and fetches models. Heavy dependencies (torch, onnxruntime)
are imported by the commands that need them, so `modelservice --help` stays fast and the
runtime image never needs torch.
"""

__version__ = "0.1.0"
