"""Corpora (bundled and user text) and deterministic token windows."""
