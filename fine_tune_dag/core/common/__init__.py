"""Torch-free vocabulary every stage shares: chat rendering, statistics, markdown, LLM request types, fingerprints, errors."""
