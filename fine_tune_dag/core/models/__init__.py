"""Base models and adapters on disk: resolving, loading, the bundled model, and the memory they may take."""
