"""Passages and training pairs from notes: LLM-chosen chunk boundaries, synthetic Q&A, teacher data."""
