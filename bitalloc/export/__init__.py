"""Deployment writers: one module per format (compressed-tensors, GGUF, GPTQ dynamic) and their palettes."""
