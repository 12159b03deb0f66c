"""The serving engine for language models: a scheduler of its own (continuous batching over
the builder's decoder graph on onnxruntime), run in its own process, and what the HTTP side
needs to talk to it (ipc.py, client.py) and to turn its tokens into text (detokenize.py).
serving/generation.py and serving/openai_endpoints.py are the glue to the HTTP routes."""
