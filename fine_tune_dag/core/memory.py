"""Peak resident memory of this process over one stretch of work, so each stage can report its own peak.

Linux keeps a process's peak (VmHWM) and lets the process reset it to the current size (writing 5 to
/proc/self/clear_refs), which gives a per-stage peak with no sampling thread. Elsewhere the lifetime peak
(getrusage) is reported, which still bounds the stage's.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_mib() -> float:
    """The process's peak resident memory since the last reset (Linux), or since it started."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Start counting the peak from the current size; False where the system keeps only a lifetime peak."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.mib`: the most this process held inside the block."""

    def __init__(self) -> None:
        self.mib = 0.0
        self.since_start = True  # the peak includes what came before the block

    def __enter__(self) -> PeakMemory:
        self.since_start = not reset_peak_rss()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.mib = round(peak_rss_mib(), 1)
