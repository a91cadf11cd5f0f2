"""Train/test splits by note, writing tasks built without an LLM, and the training mix."""
