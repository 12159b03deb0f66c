"""Explanations from forward passes only: occlusion, KernelSHAP and LIME in numpy.

onnxruntime has no gradients, so every method here perturbs the instance (features, or
patches of an image, swapped for a baseline), runs the perturbed inputs through the model in
batches, and fits attributions to the answers. Nothing here knows of HTTP or of the serving
core: `explain_batch` takes a `run` function (rows -> the model's outputs), so the runtime
(serving/explaining.py, on its explain queue) and `modelservice explain` (tools/explain.py)
compute the same thing.

- `groups.py`: which elements of an instance move together (a feature, or a patch of an
  image across its channels).
- `methods.py`: one class per method, one interface: `plan` the perturbations (masks over
  the groups), then `attribute` from the model's answers to them.
- `params.py`: the request's parameters, validated, each error naming the parameter.
- `explainer.py`: one request: the instances and the baseline, then per instance its plan,
  its rows in chunks, its attributions.
"""
