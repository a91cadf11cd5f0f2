"""Adapters leaving the project: merged weights and GGUF files."""
