"""The one shape every benchmark reports in, so `make bench` can put them all in one table.

A benchmark measures the project against the obvious alternative side by side in one run and
reports rows: what was measured, both figures, their ratio (higher is better for the project),
and the target when the issue set one. `--json PATH` writes the rows for `bench/run_all.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    benchmark: str  # the script's subject, e.g. "training"
    metric: str  # e.g. "tokens/s (ours vs TRL SFTTrainer)"
    project: float
    baseline: float | None  # None: a figure with nothing to compare against (wall time of the demo)
    ratio: float | None  # > 1: the project is ahead
    unit: str = ""
    target: float | None = None  # the ratio the project must reach, when there is one
    unmet: str = ""  # why the target is not met whatever the ratio: a condition it rests on failed
    bound: float | None = None  # the ratio at its interval's conservative end, when it has one: what "met" reads

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        judged = self.ratio if self.bound is None else self.bound
        return not self.unmet and judged >= self.target


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the result rows here (for bench/run_all.py)")


def report(rows: list[Row], json_path: Path | None) -> None:
    """Print the rows as a table and, when asked, write them as JSON."""
    print(format_table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps([{**asdict(r), "met": r.met} for r in rows], indent=2))


def format_table(rows: list[Row]) -> str:
    return "\n".join([*table_header(), *(format_row(r) for r in rows)])


def table_header() -> list[str]:
    header = f"{'benchmark':<14}{'metric':<52}{'project':>12}{'baseline':>12}{'ratio':>9}  target"
    return [header, "-" * len(header)]


def format_row(r: Row) -> str:
    """One line of the table; its first word is the benchmark, which `bench/run_all.py` reads back."""
    target = "" if r.target is None else f"≥{r.target:g}× {'met' if r.met else 'MISSED'}"
    if r.target is not None and r.bound is not None:
        target += f" (conservative bound {r.bound:.2f}×)"
    if r.unmet:
        target += f" ({r.unmet})"
    baseline = "—" if r.baseline is None else f"{r.baseline:.4g}"
    ratio = "—" if r.ratio is None else f"{r.ratio:.2f}×"
    return (
        f"{r.benchmark:<14}{(r.metric + (f' [{r.unit}]' if r.unit else '')):<52}"
        f"{r.project:>12.4g}{baseline:>12}{ratio:>9}  {target}"
    )


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children) so far, in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class LargestProcessPeak:
    """The most any one process of a tree (`root` and its descendants) held, sampled every `interval` seconds
    while the block runs. getrusage cannot say it for a tree whose stages reset their peak (VmHWM) to
    report their own, as the project's heavy assets do."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root, self.interval, self.mib = root, interval, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "LargestProcessPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        found, queue = [], [self.root]
        while queue:
            pid = queue.pop()
            found.append(pid)
            try:
                queue += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return found

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith(("VmHWM:", "VmRSS:")):  # the peak since its last reset, or now
                        self.mib = max(self.mib, int(line.split()[1]) / 1024)


def machine() -> str:
    """Where the figures came from, for RESULTS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


# dense bf16 tensor-core peaks from the datasheets, TFLOP/s, by a part of torch's device name
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: str, given: float | None) -> tuple[float, str]:
    """The bf16 peak a model-FLOPs share is measured against, and where it came from."""
    import torch  # here: the table and its runner need no torch

    if given:
        return given, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for part, tflops in GPU_PEAK_TFLOPS.items():
            if part in name:
                return tflops, f"{name} datasheet"
        raise SystemExit(f"no datasheet peak for {name}: pass --peak-tflops")
    a = torch.randn(4096, 4096, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(4):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * 4096**3 / best / 1e12, "measured bf16 matmul peak"
