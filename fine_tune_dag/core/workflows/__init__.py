"""The work behind the assets that do more than one store call, free of Dagster: train and register an adapter,
evaluate one (assemble the contenders, measure them, report and record), edge cases, comparisons to label, DPO,
the promotion gate, sweeps, cross-validation and cost estimates.

They log through a `logging.Logger`-like object and raise `StageError` for what the user must fix; the asset
layer passes `context.log` and turns the error into a `dg.Failure`. Metadata they return is plain values:
`Path` (a file), `Markdown` (rendered text), dicts and lists (JSON), numbers and strings.
"""
