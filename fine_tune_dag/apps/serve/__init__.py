"""`fine-tune-dag serve`: the OpenAI-compatible app and its playground page."""
