"""Load test: N note partitions backfilled in one go, from an empty instance to a promoted adapter.

N notes are written; then the notes sensor and the automation, ticked in-process by LocalDaemon (the
scripted LLM answering, a tiny random model as base model), drive the whole graph: one sensor tick
registers all N partitions and runs each, then dataset_splits, one training, its evaluation and the
promotion follow. Printed: wall time, CPU time and peak RSS per stage, where a note run's time goes,
runs, failures, partitions materialized, pairs and LLM calls — what a first import of a large notes
folder costs outside the models.

    python bench/load.py --notes 200 [--json rows.json] [--figures figures.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import resource
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
from fine_tune_dag_testkit.daemon import LocalDaemon
from fine_tune_dag_testkit.models import build_tiny_model
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions
from incremental import RUN_CONFIG as NOTE_RUN_CONFIG
from results import Row, add_json_argument, peak_rss_mib, report

from fine_tune_dag.resources.policy import AutomationPolicy

# the note runs as in bench/incremental.py; training and evaluation only as long as it takes to run them once
RUN_CONFIG = {
    "ops": {
        **NOTE_RUN_CONFIG["ops"],
        "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "dtype": "float32"}},
        "edge_cases": {"config": {"evaluation": {"max_new_tokens": 4, "dtype": "float32"}}},
        "eval_report": {"config": {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}},
    }
}
NOTE_ASSETS = ("raw_notes", "passages", "qa_pairs")
# steps by stage; an asset check's step is named after its asset (eval_report_beats_champion)
STAGES = {
    "notes": NOTE_ASSETS,
    "dataset": ("base_model", "dataset_splits"),
    "training": ("lora_adapter",),
    "evaluation": ("edge_cases", "eval_report", "champion_adapter"),
}
OVERHEAD = "ticks and run overhead"
SAMPLE_SECONDS = 0.5
_STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}


@dataclass(frozen=True)
class Sample:
    at: float  # unix time, as the run records' and events' timestamps
    rss_mib: float
    cpu_seconds: float  # this process so far, all threads


@dataclass
class Cost:
    seconds: float
    cpu_seconds: float  # unlike wall time, not inflated by other work on the machine


@dataclass
class Stage(Cost):
    peak_rss_mib: float | None = None  # highest sample taken during (or right after) the stage


@dataclass
class NoteRuns:
    """Where one note's time goes, and whether it grows with the partitions already there."""

    mean: Cost  # RUN_START to the end of a run; creating the run comes before and counts in the stage only
    first_tenth: Cost
    last_tenth: Cost
    steps: dict[str, float]  # mean wall by step; the rest of a run is Dagster's


@dataclass
class LoadFigures:
    notes: int
    total: Cost
    stages: dict[str, Stage]
    note_runs: NoteRuns
    runs: int
    failed_runs: list[str]
    partitions: dict[str, int]  # materialized, by note asset
    qa_pairs: int  # rows of the qa_pairs table
    dataset_pairs: dict[str, int]  # by split
    adapters_trained: int
    adapters_evaluated: int
    promotions: int
    llm_calls: int
    rss_before_mib: float
    sampled_peak_rss_mib: float  # during the backfill
    peak_rss_mib: float  # ru_maxrss: the whole process lifetime, imports and the model build included
    # the largest finished child: Dagster's compute-log `tail` and its watcher, one pair per run; a forked
    # child starts from this process's RSS, so this is ours at some fork, not memory of its own
    children_peak_rss_mib: float
    children_cpu_seconds: float  # those tails and watchers (a Python start each), outside total.cpu_seconds
    samples: list[Sample] = field(repr=False, default_factory=list)


class Sampler(threading.Thread):
    """RSS and CPU every SAMPLE_SECONDS: ru_maxrss and process_time only know the whole process, not
    which stage reached the peak or spent the time."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def run(self) -> None:
        self.take()
        while not self._halt.wait(SAMPLE_SECONDS):
            self.take()

    def take(self) -> None:
        self.samples.append(Sample(time.time(), current_rss_mib(), time.process_time()))

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join()
        self.take()
        return self.samples


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_at(samples: list[Sample], at: float) -> float:
    """Process CPU at a moment, interpolated between the samples around it."""
    i = bisect.bisect_left([s.at for s in samples], at)
    if i == 0 or i == len(samples):
        return samples[min(i, len(samples) - 1)].cpu_seconds
    before, after = samples[i - 1], samples[i]
    share = (at - before.at) / max(after.at - before.at, 1e-9)
    return before.cpu_seconds + share * (after.cpu_seconds - before.cpu_seconds)


def cost(samples: list[Sample], spans: list[tuple[float, float]]) -> Cost:
    return Cost(
        sum(end - start for start, end in spans),
        sum(cpu_at(samples, end) - cpu_at(samples, start) for start, end in spans),
    )


def mean_cost(samples: list[Sample], spans: list[tuple[float, float]]) -> Cost:
    total = cost(samples, spans)
    return Cost(total.seconds / max(len(spans), 1), total.cpu_seconds / max(len(spans), 1))


def peak_within(samples: list[Sample], spans: list[tuple[float, float]]) -> float | None:
    """Highest sample inside the spans, or the first one after a span: a stage shorter than the sampling
    period still gets a reading, and memory it kept shows there."""
    picked = []
    for start, end in spans:
        picked += [s.rss_mib for s in samples if start <= s.at <= end]
        picked += [s.rss_mib for s in samples if s.at > end][:1]
    return max(picked, default=None)


def stage_of(step_key: str) -> str:
    for stage, names in STAGES.items():
        if any(step_key == name or step_key.startswith(name + "_") for name in names):
            return stage
    return OVERHEAD


def step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Start and end of each step that ran, from the run's event log."""
    spans: dict[str, tuple[float, float]] = {}
    for event in instance.all_logs(run_id, of_type=_STEP_EVENTS):
        start, end = spans.get(event.step_key, (event.timestamp, event.timestamp))
        spans[event.step_key] = (min(start, event.timestamp), max(end, event.timestamp))
    return spans


def stage_figures(
    instance: dg.DagsterInstance, samples: list[Sample], total: Cost
) -> tuple[dict[str, Stage], NoteRuns]:
    """Cost and peak RSS by stage, and the note runs in detail.

    The note stage is the span of its runs, Dagster's per-run work included; the other stages share
    one run, so they get their steps' time and the rest goes to OVERHEAD with the sensor and automation ticks.
    """
    records = sorted(instance.get_run_records(), key=lambda r: r.start_time)
    runs = [(r.start_time, r.end_time) for r in records if r.dagster_run.job_name == "notes_job"]
    spans: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    steps: dict[str, float] = dict.fromkeys(NOTE_ASSETS, 0.0)
    for record in records:
        for step, (start, end) in step_spans(instance, record.dagster_run.run_id).items():
            stage = stage_of(step)
            if stage == "notes":
                steps[step] += end - start
            elif stage != OVERHEAD:
                spans[stage].append((start, end))
    if runs:
        spans["notes"] = [(runs[0][0], max(end for _, end in runs))]
    stages = {
        stage: Stage(**asdict(cost(samples, found)), peak_rss_mib=peak_within(samples, found))
        for stage, found in spans.items()
    }
    stages[OVERHEAD] = Stage(
        total.seconds - sum(s.seconds for s in stages.values()),
        total.cpu_seconds - sum(s.cpu_seconds for s in stages.values()),
    )
    tenth = max(len(runs) // 10, 1)
    note_runs = NoteRuns(
        mean_cost(samples, runs),
        mean_cost(samples, runs[:tenth]),
        mean_cost(samples, runs[-tenth:]),
        {step: seconds / max(len(runs), 1) for step, seconds in steps.items()},
    )
    return stages, note_runs


def warehouse_counts(path: Path) -> tuple[int, dict[str, int], int, int, int]:
    """Rows behind the figures, read-only: qa pairs, dataset pairs by split, adapters, evaluations, promotions."""
    with duckdb.connect(str(path), read_only=True) as con:

        def count(table: str) -> int:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

        splits = dict(
            con.execute("SELECT split, count(*) FROM dataset_splits GROUP BY split ORDER BY split").fetchall()
        )
        return count("qa_pairs"), splits, count("adapters"), count("evaluations"), count("champion_history")


def run_load(notes: int, root: Path) -> LoadFigures:
    """Backfill `notes` notes under `root` (notes, data, tiny model) through the sensor and the automation."""
    model = build_tiny_model(root / "tiny-model")
    write_sample_notes(root / "notes", notes)
    # all notes in one tick, one training once the dataset exists, and every challenger promoted:
    # the gate is not under load here (test_champion.py covers it)
    policy = AutomationPolicy(
        notes_per_tick=notes,
        settle_seconds=0,
        retrain_min_new_examples=1,
        promote_always=True,
    )
    llm = ScriptedLLM()
    defs = scripted_definitions(root / "notes", root / "data", model, policy, llm=llm)
    with dg.instance_for_test() as instance:
        daemon = LocalDaemon(defs, instance, RUN_CONFIG, log_level="ERROR")
        calls, rss_before = llm.total_calls, current_rss_mib()
        sampler = Sampler()
        sampler.start()
        started, cpu, children = time.perf_counter(), time.process_time(), children_cpu()
        runs = daemon.settle()
        total = Cost(time.perf_counter() - started, time.process_time() - cpu)
        samples = sampler.stop()
        stages, note_runs = stage_figures(instance, samples, total)
        partitions = {name: len(instance.get_materialized_partitions(dg.AssetKey(name))) for name in NOTE_ASSETS}
    qa_pairs, splits, adapters, evaluations, promotions = warehouse_counts(root / "data" / "warehouse.duckdb")
    return LoadFigures(
        notes=notes,
        total=total,
        stages=stages,
        note_runs=note_runs,
        runs=len(runs),
        failed_runs=[f"{'+'.join(r.assets)} [{r.partition or '-'}]" for r in runs if not r.success],
        partitions=partitions,
        qa_pairs=qa_pairs,
        dataset_pairs=splits,
        adapters_trained=adapters,
        adapters_evaluated=evaluations,
        promotions=promotions,
        llm_calls=llm.total_calls - calls,
        rss_before_mib=rss_before,
        sampled_peak_rss_mib=max(s.rss_mib for s in samples),
        peak_rss_mib=peak_rss_mib(),
        children_peak_rss_mib=peak_rss_mib(children=True),
        children_cpu_seconds=children_cpu() - children,
        samples=samples,
    )


def table(figures: LoadFigures) -> str:
    """The figures as a table, stages first."""
    total, notes = figures.total, figures.note_runs
    lines = [
        f"load: {figures.notes} notes backfilled in {total.seconds:.1f} s ({total.cpu_seconds:.1f} s CPU)\n",
        f"{'stage':<26}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}",
    ]
    for name, stage in figures.stages.items():
        peak = "—" if stage.peak_rss_mib is None else f"{stage.peak_rss_mib:.0f}"
        lines.append(f"{name:<26}{stage.seconds:>9.1f}{stage.cpu_seconds:>9.1f}{peak:>14}")
    lines.append(f"{'total':<26}{total.seconds:>9.1f}{total.cpu_seconds:>9.1f}{figures.sampled_peak_rss_mib:>14.0f}\n")
    steps = ", ".join(f"{step} {seconds:.2f}" for step, seconds in notes.steps.items())
    splits = ", ".join(f"{split} {n}" for split, n in figures.dataset_pairs.items())
    rows = {
        "one note run (s)": f"{notes.mean.seconds:.2f} wall, {notes.mean.cpu_seconds:.2f} CPU; steps {steps}",
        "  first / last tenth": f"{notes.first_tenth.seconds:.2f} / {notes.last_tenth.seconds:.2f} wall, "
        f"{notes.first_tenth.cpu_seconds:.2f} / {notes.last_tenth.cpu_seconds:.2f} CPU",
        "runs": f"{figures.runs}, failed: {'; '.join(figures.failed_runs) or 'none'}",
        "partitions materialized": ", ".join(f"{name} {n}" for name, n in figures.partitions.items()),
        "qa pairs": f"{figures.qa_pairs} generated; in the dataset: {splits}",
        "adapters": f"{figures.adapters_trained} trained, {figures.adapters_evaluated} evaluated, "
        f"{figures.promotions} promoted",
        "LLM calls": str(figures.llm_calls),
        "RSS (MiB)": f"{figures.rss_before_mib:.0f} before, {figures.sampled_peak_rss_mib:.0f} peak sampled, "
        f"{figures.peak_rss_mib:.0f} ru_maxrss",
        "child processes": f"{figures.children_cpu_seconds:.1f} s CPU, peak RSS {figures.children_peak_rss_mib:.0f} MiB "
        "(forks of this process: compute-log tails)",
    }
    return "\n".join(lines + [f"{label:<26}{value}" for label, value in rows.items()])


def rows(figures: LoadFigures) -> list[Row]:
    """The headline figures in the shape every benchmark reports (bench/results.py); the rest is in `table`."""
    figure = [
        (f"{figures.notes} notes backfilled: wall time", figures.total.seconds, "s"),
        (f"{figures.notes} notes backfilled: CPU time", figures.total.cpu_seconds, "s"),
        *[(f"wall time: {name}", stage.seconds, "s") for name, stage in figures.stages.items()],
        ("peak resident memory", figures.sampled_peak_rss_mib, "MiB"),
        ("resident memory growth over the backfill", figures.sampled_peak_rss_mib - figures.rss_before_mib, "MiB"),
        ("failed runs", len(figures.failed_runs), ""),
        ("LLM calls", figures.llm_calls, ""),
    ]
    return [Row("load", metric, value, None, None, unit) for metric, value, unit in figure]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=200, help="note files backfilled at once")
    add_json_argument(parser)
    parser.add_argument("--figures", type=Path, help="also write every figure here, RSS and CPU samples included")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = run_load(args.notes, Path(folder))
    print(table(figures) + "\n")
    report(rows(figures), args.json)
    if args.figures:
        args.figures.write_text(json.dumps(asdict(figures), indent=2) + "\n", encoding="utf-8")
    if figures.failed_runs:
        raise SystemExit(f"runs failed: {figures.failed_runs}")


if __name__ == "__main__":
    main()
