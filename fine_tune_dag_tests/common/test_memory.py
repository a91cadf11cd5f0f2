"""Per-stage peak memory: what each stage reports is its own peak, not the process's lifetime one; and the memory
available to a stage, a container's limit included."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from fine_tune_dag.core.common import memory
from fine_tune_dag.core.common.memory import available_memory_bytes, release_free_heap, resident_bytes

MIB = 2**20
GIB = 2**30


def test_available_memory_is_the_systems_or_a_containers_room_if_nearer(tmp_path: Path, monkeypatch):
    meminfo, limit, usage = tmp_path / "meminfo", tmp_path / "memory.max", tmp_path / "memory.current"
    meminfo.write_text(f"MemTotal:       25165824 kB\nMemFree:         1048576 kB\nMemAvailable:   {20 * 2**20} kB\n")
    monkeypatch.setattr(memory, "_MEMINFO", meminfo)
    monkeypatch.setattr(memory, "_CGROUP_MEMORY", ((limit, usage),))
    assert available_memory_bytes() == 20 * GIB  # no cgroup files: not in a container
    limit.write_text("max\n")
    usage.write_text(f"{2 * GIB}\n")
    assert available_memory_bytes() == 20 * GIB  # a container without a limit
    limit.write_text(f"{8 * GIB}\n")
    assert available_memory_bytes() == 6 * GIB  # its limit less what it holds
    monkeypatch.setattr(memory, "_MEMINFO", tmp_path / "absent")
    assert available_memory_bytes() is None  # a system that does not say (macOS, Windows)


# In a fresh process: in the test run's own, memory other tests left behind (free heap, mapped weights the kernel
# may reclaim) served the ballast without raising the peak
_PEAKS_CHILD = """
from fine_tune_dag.core.common.memory import PeakMemory, peak_rss_mib
with PeakMemory() as heavy:
    ballast = b"x" * (300 << 20)  # written, so resident
    del ballast
with PeakMemory() as light:
    small = b"y" * (1 << 20)
    del small
assert not heavy.since_start and not light.since_start
print(heavy.mib, light.mib, peak_rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak can be reset only on Linux")
def test_a_block_reports_its_own_peak_not_an_earlier_blocks():
    child = subprocess.run([sys.executable, "-c", _PEAKS_CHILD], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    heavy, light, now = map(float, child.stdout.split())
    assert heavy - light > 250, (heavy, light)
    assert light <= now + 1


# Freed 3 MiB blocks, each allocated behind a small block that outlives it, as a training step leaves
# activations behind small tensors: the heap cannot shrink past the small blocks.
_FRAGMENTING_CHILD = """
import contextlib
import sys
import weakref
from fine_tune_dag.core.common.memory import freed_tensors_returned, resident_bytes
warm = b"w" * (8 << 20)
del warm  # glibc now takes blocks up to this large from the heap, unless told otherwise
# fill the free chunks the imports left (under 1 MiB in all), so each small block below lands after its large one
# wherever those chunks happen to lie
holes = [bytearray(1024) for _ in range(2048)]
with freed_tensors_returned() if sys.argv[1] == "lean" else contextlib.nullcontext(True) as changed:
    assert changed
    before = resident_bytes()
    large, small = [], []
    for _ in range(100):
        large.append(b"x" * (3 << 20))
        small.append(bytearray(1024))  # from the heap (pymalloc serves 512 bytes and less)
    del large
    print((resident_bytes() - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_freed_tensor_sized_blocks_leave_the_process_inside_freed_tensors_returned():
    def held_after_freeing(mode: str) -> int:
        child = subprocess.run([sys.executable, "-c", _FRAGMENTING_CHILD, mode], capture_output=True, text=True)
        assert child.returncode == 0, child.stderr
        return int(child.stdout)

    assert held_after_freeing("default") > 200  # glibc keeps the 300 MiB it freed resident
    assert held_after_freeing("lean") < 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_release_free_heap_returns_what_small_blocks_left_behind():
    blocks = [bytes([i % 256]) * 4000 for i in range(60_000)]  # 240 MiB of small blocks, all from the heap
    keep = blocks[-1]
    del blocks
    before = resident_bytes()
    release_free_heap()
    assert (before - resident_bytes()) >> 20 > 150, keep[:1]


# bfloat16 matmuls, forward and backward, over 150 sequence lengths, as training steps and decoding meet them
_NEW_SHAPES_CHILD = """
import fine_tune_dag
import torch
from fine_tune_dag.core.common.memory import release_free_heap, resident_bytes
layer = torch.nn.Linear(576, 1536, dtype=torch.bfloat16)
inputs = torch.randn(8, 300, 576, dtype=torch.bfloat16)
def steps(lengths):
    for length in lengths:
        layer(inputs[:, :length].clone().requires_grad_()).sum().backward()
steps(range(100, 105))
release_free_heap()
before = resident_bytes()
steps(range(105, 255))
release_free_heap()
print((resident_bytes() - before) >> 20)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    reason="oneDNN's bfloat16 kernels, measured by resident memory",
)
def test_importing_the_package_bounds_what_kernels_for_new_shapes_keep():
    def held_after_new_shapes(capacity: str | None) -> int:
        env = {
            k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
        }
        if capacity is not None:  # as a user who sets them would: the package leaves them be
            env |= {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": capacity, "LRU_CACHE_CAPACITY": capacity}
        child = subprocess.run([sys.executable, "-c", _NEW_SHAPES_CHILD], capture_output=True, text=True, env=env)
        assert child.returncode == 0, child.stderr
        return int(child.stdout)

    assert held_after_new_shapes("1024") > 250  # the libraries' default: every shape's kernels stay (~3 MiB each)
    assert held_after_new_shapes(None) < 60


def test_a_stage_that_loads_its_own_model_lets_the_synthesis_model_go(tiny_model_dir):
    from fine_tune_dag.assets.common import loads_its_own_model
    from fine_tune_dag.core.common.llm_types import LLMRequest
    from fine_tune_dag.resources import llm

    teacher = llm._local_client(tiny_model_dir, "cpu", "float32", 2, 0, 4.0, "auto")
    teacher.complete([LLMRequest((("user", "Say one word."),), "test", "1", max_new_tokens=2)])
    loaded = weakref.ref(teacher._loaded[0])
    del teacher

    @loads_its_own_model
    def training(context: object) -> str:
        return "alive" if loaded() is not None else "let go"

    assert training(None) == "let go"
