"""Peak resident memory of this process over one stretch of work, so each stage can report its own peak; and
how much memory the system could still give it.

Linux keeps a process's peak (VmHWM) and lets the process reset it to the current size (writing 5 to
/proc/self/clear_refs), which gives a per-stage peak with no sampling thread. Elsewhere the lifetime peak
(getrusage) is reported, which still bounds the stage's.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MEMINFO = Path("/proc/meminfo")
# a container's memory limit and what its processes hold now (page cache included, so their difference is a lower
# bound), cgroup v2 then v1; /proc/meminfo inside a container shows the host's memory
_CGROUP_MEMORY = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)


def peak_rss_mib() -> float:
    """The process's peak resident memory since the last reset (Linux), or since it started."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def resident_bytes() -> int:
    """What this process holds now (Linux), or its peak so far elsewhere: an upper bound on it."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return int(peak_rss_mib() * 2**20)


def available_memory_bytes() -> int | None:
    """What new allocations could take now without swapping (Linux): MemAvailable (free memory and the caches the
    kernel would drop), or less inside a container whose memory limit is nearer. None where the system does not
    say (macOS, Windows)."""
    if not _MEMINFO.is_file():
        return None
    available = next(
        (int(line.split()[1]) * 1024 for line in _MEMINFO.read_text().splitlines() if line.startswith("MemAvailable:")),
        None,
    )
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit():  # "max": no limit
            room = max(0, int(limit) - usage)
            available = room if available is None else min(available, room)
        break
    return available


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


# glibc's mallopt parameter: allocations at least this large get their own mapping, returned on free
_M_MMAP_THRESHOLD = -3
# Within `freed_tensors_returned`, tensors at least this large are mapped and unmapped on their own. glibc's
# default starts at 128 KiB but rises to each freed mapping's size, after which activations of every size come
# from the heap: a training step on the bundled model left ~1.3 GiB of freed holes resident (bench/memory.py).
LARGE_ALLOCATION_BYTES = 2 * 2**20
# glibc's own ceiling for that rising threshold, where it settles in a process that has freed large tensors
HEAP_ALLOCATION_CEILING_BYTES = 32 * 2**20


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # musl's malloc has no such settings


def _large_allocations_mapped_from(size: int) -> bool:
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, size) == 1


@contextmanager
def freed_tensors_returned() -> Iterator[bool]:
    """Inside, blocks of 2 MiB and more (tensors) go back to the system when freed instead of staying resident in
    the heap; yields False where the C library is not glibc (macOS's allocator returns them already).

    Each such block then costs fresh pages, so this is for training, whose steps free GiBs of activations of
    changing shapes; decoding runs about a fifth slower under it, for no lower peak. Afterwards large blocks come
    from the heap again, as in a process where glibc's threshold has risen to its ceiling."""
    changed = _large_allocations_mapped_from(LARGE_ALLOCATION_BYTES)
    try:
        yield changed
    finally:
        if changed:
            _large_allocations_mapped_from(HEAP_ALLOCATION_CEILING_BYTES)
            release_free_heap()


def release_free_heap() -> None:
    """Give the heap's free pages back to the system (glibc keeps them after a stage, or a training step, that
    freed them)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# The caches of CPU kernels for bfloat16 matmuls (oneDNN's primitives and PyTorch's ideep LRU) each keep 1024 input
# shapes by default, about 3 MiB a shape, and training and decoding meet a new sequence length at nearly every step:
# 300 lengths held 882 MiB, and the demo's training grew 25 MiB a step. One step reuses a few dozen shapes.
KERNEL_CACHE_SHAPES = 32
_KERNEL_CACHE_CAPACITIES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches() -> None:
    """Cap both caches at `KERNEL_CACHE_SHAPES` unless the environment sets them. Each reads its capacity once,
    when the process runs its first such matmul, so this runs when the package is imported."""
    for name in _KERNEL_CACHE_CAPACITIES:
        os.environ.setdefault(name, str(KERNEL_CACHE_SHAPES))
