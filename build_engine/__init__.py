"""Build pipeline: Hugging Face weights -> llama.cpp GGUF engines under models/<name>/."""
