"""Load: 200 notes backfilled in one go (bench/load.py) — every partition materialized, nothing failed,
one adapter trained, evaluated and promoted. Run with -s to see the figures."""

import importlib
from pathlib import Path
from types import ModuleType

import pytest

NOTES = 200
BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/load.py as a module; bench/ on sys.path, as when it runs as a script (it imports incremental)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("load")


def test_two_hundred_notes_backfill_in_one_go(load, tmp_path, record_property):
    figures = load.run_load(NOTES, tmp_path)
    print("\n" + load.table(figures))
    for name, value in (
        ("seconds", figures.total.seconds),
        ("cpu_seconds", figures.total.cpu_seconds),
        ("peak_rss_mib", figures.peak_rss_mib),
    ):
        record_property(name, round(value, 1))

    assert figures.failed_runs == []
    assert figures.partitions == dict.fromkeys(load.NOTE_ASSETS, NOTES)
    assert figures.adapters_trained == figures.adapters_evaluated == figures.promotions == 1
    assert sum(figures.dataset_pairs.values()) >= NOTES
    assert figures.dataset_pairs.get("test", 0) > 0  # evaluation had something to score
    assert figures.llm_calls > 0
