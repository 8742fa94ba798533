"""Running a quantized plan: a batch-1 decoder for Llama-architecture models on the kernels."""
