"""Stand-ins shared by the test suite and the benchmarks; installed by the `dev` extra, never shipped with the product.

- `models.build_tiny_model`: a 2-layer random Llama with a small ChatML tokenizer.
- `notes.write_sample_notes`: small Markdown notes written on the fly.
- `scripted.ScriptedLLM` / `scripted_definitions`: deterministic answers, and the graph wired to them.
- `daemon.LocalDaemon`: sensor and automation ticks executed in-process.
- `gemini_stub.GeminiStub`: the Gemini REST API on 127.0.0.1, with scripted faults.
"""
