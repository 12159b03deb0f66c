import numpy as np
import onnxruntime as ort


def test_mlp_exports_with_dynamic_batch(mlp_onnx):
    sess = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((5, 64), np.float32)})[0]
    assert out.shape == (5, 10)
