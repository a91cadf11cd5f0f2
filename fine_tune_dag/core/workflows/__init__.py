"""Steps several assets share (train and register an adapter, evaluate one), free of Dagster.

They log through a `logging.Logger`-like object and raise `StageError` for what the user must fix; the asset
layer passes `context.log` and turns the error into a `dg.Failure`. Metadata they return is plain values:
`Path` (a file), `Markdown` (rendered text), dicts and lists (JSON), numbers and strings.
"""
