"""Evaluation: perplexity and KL divergence to the unquantized model on held-out text."""
