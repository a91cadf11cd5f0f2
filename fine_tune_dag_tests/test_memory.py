"""Per-stage peak memory: what each stage reports is its own peak, not the process's lifetime one."""

from __future__ import annotations

import sys

import pytest

from fine_tune_dag.core.memory import PeakMemory, peak_rss_mib

MIB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak can be reset only on Linux")
def test_a_block_reports_its_own_peak_not_an_earlier_blocks():
    with PeakMemory() as heavy:
        ballast = b"x" * (300 * MIB)  # written, so resident
        del ballast
    with PeakMemory() as light:
        small = b"y" * MIB
        del small
    assert not heavy.since_start and not light.since_start
    assert heavy.mib - light.mib > 250, (heavy.mib, light.mib)
    assert light.mib <= peak_rss_mib() + 1
