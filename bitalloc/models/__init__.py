"""Models: loading (bundled names, HF folders, hub ids, GGUF files) and unit discovery."""
