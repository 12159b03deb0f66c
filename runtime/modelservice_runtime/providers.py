"""onnxruntime's execution-provider names, once: the model session (serving/model.py), the
worker count (process/workers.py) and the language-model engine choose by them."""

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)
