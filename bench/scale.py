"""How the graph scales: notes per minute at 1–8 concurrent note runs, and what a run costs at 1,000 and 10,000 notes.

Throughput: the same notes go through raw_notes → passages → qa_pairs (notes_job, one real Dagster run per
note partition) against the Gemini REST stub answering each call after a seeded 1–2 s, at 1, 2, 4 and 8
concurrent runs, each level on a fresh data folder and a fresh persistent instance (sqlite in a temporary
DAGSTER_HOME holding the project's dagster.yaml, so its pools are enforced as in production). The levels take
turns: `--rounds` rounds of 1, 2, 4, 8, 1, 2, 4, 8, …, so a busy spell on a shared machine slows every level
alike; a level's notes/min pools its rounds, each ratio row gives the spread of the rounds' ratios, and the
4-run target reads met only when the lowest round meets it (its conservative bound): a pooled ratio over the
target with a round under it is within noise, not met. The runs execute in worker processes forked at start,
one run at a time each, not in threads: Dagster's in-process execution deadlocks across threads on the sqlite
instance (each run's log manager calls logging.config.dictConfig under the logging module lock while another
run's handler, holding its own lock, waits on the storage's connection lock, whose holder waits on the logging
module lock in SQLAlchemy's create_engine), and a process per run is what production does anyway. Workers are
started and warmed before the clock starts; the cost production pays on top, a fresh interpreter that imports
the code location for every run, is measured on its own.

Scale, at each --notes-scale size: that many note files; the sensor's first tick with the default
policy (100 files a tick) and then with every file in one tick (registering all partitions), a steady
tick and a tick with 10 new notes; the automation evaluation (first, steady, and after the note runs);
--processed notes run through a zero-latency stub at 8 concurrent runs (failed runs, wall time per note,
event-log bytes and events per run); the GraphQL queries the UI makes for the asset graph, the asset
catalog's partition health, passages' partitions page and the runs list, against a code server over
the same instance. Processing every note is projected from the measured wall time per note.

    python bench/scale.py --notes-per-level 16 --rounds 3 --levels 1 2 4 8 --latency 1 2 --notes-scale 1000 10000 \
        --processed 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import dagster as dg
from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubReply
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM
from incremental import RUN_CONFIG as NOTE_OPS
from results import Row, add_json_argument, report

from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.core.ingest.notes import discover_notes
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.prompts import load_prompt
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-not-real"
TEMPLATES = ("chunk_boundaries", "grounded_qa", "back_translation", "pairwise_judge", "pair_judge")
RUN_CONFIG = {**NOTE_OPS, "loggers": {"console": {"config": {"log_level": "ERROR"}}}}
NOTE_STEPS = ("raw_notes", "passages", "qa_pairs")
TICK_BUDGET_S = 10.0  # the target for a sensor tick at 10,000 notes
DEFAULT_NOTES_PER_TICK = AutomationPolicy().notes_per_tick  # runs a default tick can request
NEW_NOTES = 10  # notes added between the steady tick and the next one

# The queries the UI makes, trimmed to the fields that cost something at scale.
ASSET_GRAPH_QUERY = """
query AssetGraph {
  assetNodes {
    id
    assetKey { path }
    groupName
    isPartitioned
    isMaterializable
    jobNames
    kinds
    dependencyKeys { path }
    dependedByKeys { path }
    partitionDefinition { description type dimensionTypes { name dynamicPartitionsDefinitionName } }
    automationCondition { label expandedLabel }
  }
}
"""
ASSET_HEALTH_QUERY = """
query AssetCatalogHealth {
  assetNodes {
    assetKey { path }
    partitionStats { numMaterialized numMaterializing numFailed numPartitions }
  }
}
"""
PARTITIONS_QUERY = """
query AssetPartitions($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions
          materializingPartitions
          failedPartitions
        }
      }
    }
  }
}
"""
RUNS_QUERY = """
query RunsList {
  runsOrError(limit: 25) {
    ... on Runs {
      results { runId status jobName startTime endTime tags { key value } assetSelection { path } }
    }
  }
}
"""
QUERIES = {
    "asset graph": (ASSET_GRAPH_QUERY, None),
    "asset catalog partition health": (ASSET_HEALTH_QUERY, None),
    "passages partitions page": (PARTITIONS_QUERY, {"assetKey": {"path": ["passages"]}}),
    "runs list (25)": (RUNS_QUERY, None),
}
# the code location the GraphQL queries load, in a code server process as `dagster-webserver` runs it
CODE_LOCATION = """from fine_tune_dag.definitions import build_definitions

defs = build_definitions({notes!r}, {data!r})
"""


def gemini_answers(low_s: float, high_s: float, seed: int):
    """The scripted LLM's answers over the stub, each after a delay drawn from [low_s, high_s] by arrival index."""
    heads = {name: load_prompt(name).system.strip()[:60] for name in TEMPLATES}

    def answer(request) -> StubReply:
        template = next(name for name, head in heads.items() if head in (request.system_text or ""))
        last = request.body["contents"][-1]["parts"][0]["text"]
        delay = random.Random(f"{seed}:{request.index}").uniform(low_s, high_s) if high_s > 0 else 0.0
        return StubReply(text=ScriptedLLM._answer(template, last), delay_s=delay)

    return answer


def gemini_definitions(notes: Path, data: Path, base_url: str, policy: AutomationPolicy | None = None):
    llm = LLMResource(
        provider="gemini",
        model="gemini-2.5-flash",
        api_key=KEY,
        base_url=base_url,
        requests_per_minute=1_000_000,  # the stub does not rate-limit: pacing must not bind
        tokens_per_minute=1_000_000_000,
        paths=ProjectPaths(notes_dir=str(notes), data_dir=str(data)),
    )
    return build_definitions(str(notes), str(data), llm=llm, policy=policy)


def project_instance(home: Path) -> dg.DagsterInstance:
    """A persistent sqlite instance under `home` with the project's instance settings (pools, run queue)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def where_runs_go(instance: dg.DagsterInstance, runs: list[RunResult]) -> dict[str, float]:
    """Mean seconds per note run: from its start to raw_notes' step start (run set-up, and any pool wait),
    each step, and the worker's CPU."""
    kinds = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    phases: dict[str, list[float]] = {
        "create run": [],
        "run start to raw_notes": [],
        **{step: [] for step in NOTE_STEPS},
    }
    for run in runs:
        if not run.run_id:
            continue
        events = instance.all_logs(run.run_id, of_type=kinds)
        run_start = min(
            (e.timestamp for e in events if e.dagster_event_type == dg.DagsterEventType.RUN_START), default=0
        )
        starts = {e.step_key: e.timestamp for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_START}
        ends = {e.step_key: e.timestamp for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS}
        if run_start:
            phases["create run"].append(run_start - run.started)
        if run_start and "raw_notes" in starts:
            phases["run start to raw_notes"].append(starts["raw_notes"] - run_start)
        for step in NOTE_STEPS:
            if step in starts and step in ends:
                phases[step].append(ends[step] - starts[step])
    means = {name: statistics.mean(values) if values else 0.0 for name, values in phases.items()}
    means["worker CPU"] = statistics.mean(r.cpu_s for r in runs)
    return means


def storage_bytes(home: Path) -> dict[str, int]:
    """Bytes of the instance's storage by part: each run's event database, the event index (asset and
    partition records), the runs database, compute logs, the rest."""
    parts = dict.fromkeys(("run event dbs", "event index", "runs db", "compute logs", "other"), 0)
    for path in home.rglob("*"):
        if not path.is_file() or path.name == "dagster.yaml":
            continue
        relative = path.relative_to(home).as_posix()
        if relative.startswith("history/runs/") and path.name.startswith("index.db"):
            part = "event index"
        elif relative.startswith("history/runs/"):
            part = "run event dbs"
        elif relative.startswith("history/runs.db"):
            part = "runs db"
        elif relative.startswith("storage/"):
            part = "compute logs"
        else:
            part = "other"
        parts[part] += path.stat().st_size
    return parts


# ---------------------------------------------------------------------------------------------------------
# worker processes: each executes one note run at a time against the instance and data folder it is set to


@dataclass(frozen=True)
class Setup:
    home: str
    notes: str
    data: str
    base_url: str


@dataclass(frozen=True)
class RunResult:
    key: str
    started: float  # unix time
    ended: float
    success: bool
    run_id: str
    worker: int
    cpu_s: float  # the worker process's CPU over the run, its LLM client threads included


def _worker(index: int, inbox: mp.Queue, outbox: mp.Queue) -> None:
    parent = os.getppid()
    try:
        warm_up(index)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops
        outbox.put(("failed", index, f"warm-up: {error!r}"))
        return
    outbox.put(("ready", index, None))
    instance, job = None, None
    while True:
        try:
            message = inbox.get(timeout=5)
        except queue.Empty:
            if os.getppid() != parent:  # the bench is gone
                break
            continue
        if message is None:
            break
        kind, payload = message
        if kind == "setup":
            if instance is not None:
                instance.dispose()
            instance = dg.DagsterInstance.from_config(payload.home)
            defs = gemini_definitions(Path(payload.notes), Path(payload.data), payload.base_url)
            job = defs.resolve_job_def(notes_job.name)
            outbox.put(("setup", index, None))
            continue
        started, cpu = time.time(), time.process_time()
        try:
            result = job.execute_in_process(
                instance=instance, partition_key=payload, run_config=RUN_CONFIG, raise_on_error=False
            )
            success, run_id = result.success, result.run_id
        except Exception as error:  # noqa: BLE001 - a run that cannot even start is a failed run
            print(f"worker {index}: {payload}: {error!r}", file=sys.stderr)
            success, run_id = False, ""
        ended = time.time()
        outbox.put(
            ("run", index, RunResult(payload, started, ended, success, run_id, index, time.process_time() - cpu))
        )
    if instance is not None:
        instance.dispose()


def warm_up(index: int) -> None:
    """One note run on a throwaway instance, so first-run costs (imports, schema, clients) are not measured."""
    with (
        tempfile.TemporaryDirectory(prefix=f"scale-warm-{index}-") as folder,
        GeminiStub(gemini_answers(0, 0, 0)) as stub,
    ):
        root = Path(folder)
        write_sample_notes(root / "notes", 2, start=1)
        keys = sorted(discover_notes(root / "notes"))
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("notes", keys)
            job = gemini_definitions(root / "notes", root / "data", stub.base_url).resolve_job_def(notes_job.name)
            job.execute_in_process(instance=instance, partition_key=keys[0], run_config=RUN_CONFIG)


class Workers:
    """`count` forked processes, started before anything else (no threads or connections to inherit)."""

    def __init__(self, count: int) -> None:
        context = mp.get_context("fork")
        self.outbox = context.Queue()
        self.inboxes = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_worker, args=(i, inbox, self.outbox), daemon=True)
            for i, inbox in enumerate(self.inboxes)
        ]
        for process in self.processes:
            process.start()
        self._await("ready", count)

    def _await(self, kind: str, count: int) -> list:
        got = []
        while len(got) < count:
            received, worker, payload = self.outbox.get(timeout=600)
            if received != kind:
                raise SystemExit(f"worker {worker} answered {received} ({payload}), expected {kind}")
            got.append(payload)
        return got

    def run(self, setup: Setup, keys: list[str], concurrency: int, budget_s: float | None = None) -> list[RunResult]:
        """Every key as its own run, at most `concurrency` at once (workers 0..concurrency-1); with `budget_s`, no
        run starts after that many seconds (the runs in flight finish)."""
        active = range(min(concurrency, len(self.inboxes)))
        for i in active:
            self.inboxes[i].put(("setup", setup))
        self._await("setup", len(active))
        pending, results, sent = list(reversed(keys)), [], 0
        deadline = time.time() + budget_s if budget_s else float("inf")
        for i in active:
            if pending:
                self.inboxes[i].put(("run", pending.pop()))
                sent += 1
        while len(results) < sent:
            _, worker, result = self.outbox.get(timeout=600)
            results.append(result)
            if pending and time.time() < deadline:
                self.inboxes[worker].put(("run", pending.pop()))
                sent += 1
        return results

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


# ---------------------------------------------------------------------------------------------------------
# throughput through the LLM-bound stage


@dataclass
class Level:
    concurrency: int
    notes: int
    wall_s: float
    failed: int
    llm_calls: int
    max_in_flight: int
    mean_run_s: float
    phases: dict[str, float]
    rounds_per_minute: list[float] = field(default_factory=list)  # each round's notes/min, in the order they ran

    @property
    def notes_per_minute(self) -> float:
        return self.notes / self.wall_s * 60

    @classmethod
    def of_rounds(cls, rounds: list[Level]) -> Level:
        """A level's rounds as one: notes and wall summed, so its notes/min is the rounds' pooled rate."""
        notes = sum(r.notes for r in rounds)
        return cls(
            rounds[0].concurrency,
            notes,
            sum(r.wall_s for r in rounds),
            sum(r.failed for r in rounds),
            sum(r.llm_calls for r in rounds),
            max(r.max_in_flight for r in rounds),
            sum(r.mean_run_s * r.notes for r in rounds) / notes,
            {name: statistics.mean(r.phases[name] for r in rounds) for name in rounds[0].phases},
            [r.notes_per_minute for r in rounds],
        )


def measure_level(
    workers: Workers, root: Path, notes: int, concurrency: int, latency: tuple[float, float], turn: int
) -> Level:
    """One round of one level, on a folder and an instance of its own."""
    folder = root / f"level-{concurrency}-round-{turn}"
    write_sample_notes(folder / "notes", notes)
    keys = sorted(discover_notes(folder / "notes"))
    instance = project_instance(folder / "home")
    instance.add_dynamic_partitions("notes", keys)
    with GeminiStub(gemini_answers(*latency, seed=100 * turn + concurrency)) as stub:
        setup = Setup(str(folder / "home"), str(folder / "notes"), str(folder / "data"), stub.base_url)
        started = time.time()
        results = workers.run(setup, keys, concurrency)
        wall = time.time() - started
        calls, in_flight = len(stub.requests), stub.max_in_flight
    phases = where_runs_go(instance, results)
    limit = instance.get_concurrency_config().pool_config.default_pool_limit
    if limit != 1:
        raise SystemExit(f"the instance's pools have {limit} slots, not the project's 1")
    instance.dispose()
    return Level(
        concurrency,
        notes,
        wall,
        sum(not r.success for r in results),
        calls,
        in_flight,
        statistics.mean(r.ended - r.started for r in results),
        phases,
    )


def run_process_start() -> tuple[float, float]:
    """What a run launched as production launches it pays before its first step: a fresh interpreter importing
    the code location (DefaultRunLauncher starts `dagster api execute_run` per run). (wall s, CPU s)"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fine_tune_dag.definitions"], check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


# ---------------------------------------------------------------------------------------------------------
# scale: sensor, automation, GraphQL, event log at N notes


@dataclass
class Scale:
    notes: int
    first_tick_default_s: float = 0.0  # the default policy: 100 files a tick
    first_tick_all_s: float = 0.0  # every file in one tick: scan, hash, register N partitions
    steady_tick_s: float = 0.0
    new_notes_tick_s: float = 0.0
    automation_first_s: float = 0.0
    automation_steady_s: float = 0.0
    automation_after_runs_s: float = 0.0
    processed: int = 0
    failed: int = 0
    processing_wall_s: float = 0.0
    mean_run_s: float = 0.0
    event_log_bytes_per_run: float = 0.0
    events_per_run: float = 0.0
    graphql_s: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    storage_per_run: dict[str, float] = field(default_factory=dict)  # bytes by part of the instance's storage
    create_runs_s: float = 0.0  # creating `create_runs` runs one after the other, as the daemon does a tick's
    create_runs: int = 0

    @property
    def wall_per_note_s(self) -> float:
        return self.processing_wall_s / max(self.processed, 1)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, str | None, int]:
    """One sensor evaluation and the partition changes it asks for, as the daemon applies them: (seconds, cursor,
    run requests)."""
    sensor = defs.resolve_sensor_def("new_notes_sensor")
    started = time.perf_counter()
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return time.perf_counter() - started, result.cursor, len(result.run_requests)


def timed(action):
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def graphql_timings(root: Path, notes: Path, data: Path, instance: dg.DagsterInstance, repeats: int = 3) -> dict:
    """Median seconds of each UI query against a code server over this instance (its start not counted)."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    location = root / "code_location.py"
    location.write_text(CODE_LOCATION.format(notes=str(notes), data=str(data)))
    timings = {}
    with define_out_of_process_context(str(location), "defs", instance) as context:
        for name, (query, variables) in QUERIES.items():
            seconds = []
            for _ in range(repeats):
                began = time.perf_counter()
                result = execute_dagster_graphql(context, query, variables)
                seconds.append(time.perf_counter() - began)
                if result.errors or not result.data:
                    raise SystemExit(f"GraphQL {name}: {result.errors}")
            timings[name] = statistics.median(seconds)
    return timings


def measure_scale(
    workers: Workers, root: Path, notes: int, processed: int, concurrency: int, budget_s: float | None
) -> Scale:
    folder = root / f"scale-{notes}"
    notes_dir, data, home = folder / "notes", folder / "data", folder / "home"
    write_sample_notes(notes_dir, notes)
    instance = project_instance(home)
    figures = Scale(notes)
    with GeminiStub(gemini_answers(0, 0, 0)) as stub:
        default = gemini_definitions(notes_dir, data, stub.base_url, AutomationPolicy(settle_seconds=0))
        figures.first_tick_default_s, _, _ = tick(default, instance, None)
        everything = AutomationPolicy(notes_per_tick=notes + NEW_NOTES, settle_seconds=0)
        defs = gemini_definitions(notes_dir, data, stub.base_url, everything)
        figures.first_tick_all_s, cursor, requested = tick(defs, instance, None)
        registered = len(instance.get_dynamic_partitions("notes"))
        if registered != notes:
            raise SystemExit(f"{registered} partitions registered for {notes} notes")
        print(f"  {notes} notes: first tick {figures.first_tick_all_s:.1f} s, {requested} runs requested", flush=True)
        figures.steady_tick_s, cursor, requested = tick(defs, instance, cursor)
        if requested:
            raise SystemExit(f"a steady tick requested {requested} runs")
        write_sample_notes(notes_dir, NEW_NOTES, start=notes)
        figures.new_notes_tick_s, cursor, requested = tick(defs, instance, cursor)
        if requested != NEW_NOTES:
            raise SystemExit(f"{NEW_NOTES} new notes, {requested} runs requested")
        figures.automation_first_s, result = timed(lambda: dg.evaluate_automation_conditions(defs, instance))
        figures.automation_steady_s, result = timed(
            lambda: dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        )
        print(f"  automation {figures.automation_first_s:.1f} s, then {figures.automation_steady_s:.1f} s", flush=True)

        keys = sorted(instance.get_dynamic_partitions("notes"))[:processed]
        before = storage_bytes(home)
        setup = Setup(str(home), str(notes_dir), str(data), stub.base_url)
        started = time.time()
        runs = workers.run(setup, keys, concurrency, budget_s)
        figures.processing_wall_s = time.time() - started
        figures.processed, figures.failed = len(runs), sum(not r.success for r in runs)
        figures.mean_run_s = statistics.mean(r.ended - r.started for r in runs)
        after = storage_bytes(home)
        figures.storage_per_run = {part: (after[part] - before[part]) / len(runs) for part in after}
        figures.event_log_bytes_per_run = sum(figures.storage_per_run.values())
        figures.phases = where_runs_go(instance, runs)
        figures.events_per_run = statistics.mean(len(instance.all_logs(r.run_id)) for r in runs if r.run_id)
        print(
            f"  {len(runs)} note runs in {figures.processing_wall_s:.1f} s, {figures.failed} failed; a run: "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in figures.phases.items())
            + "; storage per run: "
            + ", ".join(f"{part} {size / 1024:.0f} KiB" for part, size in figures.storage_per_run.items()),
            flush=True,
        )
        # what the daemon does with a default tick's requests: a run each (snapshots, planned events), in turn
        job = defs.resolve_job_def(notes_job.name)
        queued = sorted(instance.get_dynamic_partitions("notes"))[len(runs) : len(runs) + DEFAULT_NOTES_PER_TICK]
        figures.create_runs_s, _ = timed(
            lambda: [
                instance.create_run_for_job(job, run_config=RUN_CONFIG, tags={"dagster/partition": key})
                for key in queued
            ]
        )
        figures.create_runs = len(queued)
        figures.automation_after_runs_s, _ = timed(
            lambda: dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        )
    figures.graphql_s = graphql_timings(folder, notes_dir, data, instance)
    instance.dispose()
    return figures


# ---------------------------------------------------------------------------------------------------------


def throughput_rows(levels: list[Level], latency: tuple[float, float], start: tuple[float, float]) -> list[Row]:
    one = levels[0]
    rows = [
        Row(
            "scale",
            f"notes/min, 1 run (stub {latency[0]:g}–{latency[1]:g} s a call)",
            one.notes_per_minute,
            None,
            None,
            "notes/min",
        )
    ]
    for level in levels[1:]:
        turns = [ours / alone for ours, alone in zip(level.rounds_per_minute, one.rounds_per_minute)]
        rows.append(
            Row(
                "scale",
                f"notes/min, {level.concurrency} runs (ours vs 1 run; {len(turns)} rounds "
                f"{min(turns):.2f}–{max(turns):.2f}×)",
                level.notes_per_minute,
                one.notes_per_minute,
                level.notes_per_minute / one.notes_per_minute,
                "notes/min",
                target=3.0 if level.concurrency == 4 else None,
                unmet=f"{level.failed} runs failed" if level.failed else "",
                bound=min(turns),
            )
        )
    calls = sum(level.llm_calls for level in levels) / sum(level.notes for level in levels)
    rows.append(Row("scale", "LLM calls per note (chunking + synthesis)", calls, None, None))
    for level in levels:
        n = f"{level.concurrency} run{'s' if level.concurrency > 1 else ''}"
        rows += [
            Row("scale", f"{n}: stub max in flight", level.max_in_flight, None, None),
            Row("scale", f"{n}: note run wall", level.mean_run_s, None, None, "s"),
            Row(
                "scale",
                f"{n}: run start to raw_notes' start",
                level.phases["run start to raw_notes"],
                None,
                None,
                "s",
            ),
            Row("scale", f"{n}: note run CPU", level.phases["worker CPU"], None, None, "s"),
        ]
    rows += [
        Row("scale", "run process start, wall (imports the location)", start[0], None, None, "s"),
        Row("scale", "run process start, CPU", start[1], None, None, "s"),
    ]
    return rows


def scale_rows(figures: Scale) -> list[Row]:
    n = f"{figures.notes:,} notes"
    budget = [
        ("sensor tick, default policy (100 new)", figures.first_tick_default_s),
        ("sensor steady tick", figures.steady_tick_s),
        (f"sensor tick, {NEW_NOTES} new", figures.new_notes_tick_s),
    ]
    rows = [
        Row("scale", f"{n}: {label} (10 s budget vs ours)", seconds, TICK_BUDGET_S, TICK_BUDGET_S / seconds, "s", 1.0)
        for label, seconds in budget
    ]
    projected_min = figures.wall_per_note_s * figures.notes / 60
    create_run = figures.create_runs_s / max(figures.create_runs, 1)
    with_runs = figures.first_tick_default_s + DEFAULT_NOTES_PER_TICK * create_run
    rows += [
        Row(
            "scale",
            f"{n}: default tick + creating its 100 runs (budget vs ours)",
            with_runs,
            TICK_BUDGET_S,
            TICK_BUDGET_S / with_runs,
            "s",
            1.0,
        ),
        Row("scale", f"{n}: creating one queued run", create_run, None, None, "s"),
        Row("scale", f"{n}: sensor first tick, all at once", figures.first_tick_all_s, None, None, "s"),
        Row("scale", f"{n}: automation eval, first", figures.automation_first_s, None, None, "s"),
        Row("scale", f"{n}: automation eval, steady", figures.automation_steady_s, None, None, "s"),
        Row(
            "scale",
            f"{n}: automation eval after {figures.processed} runs",
            figures.automation_after_runs_s,
            None,
            None,
            "s",
        ),
        *(Row("scale", f"{n}: GraphQL {name}", s, None, None, "s") for name, s in figures.graphql_s.items()),
        Row("scale", f"{n}: event log per note run", figures.event_log_bytes_per_run / 1024, None, None, "KiB"),
        Row("scale", f"{n}: events per note run", figures.events_per_run, None, None),
        Row("scale", f"{n}: note run wall (8 at once)", figures.mean_run_s, None, None, "s"),
        Row("scale", f"{n}: wall per note, 8 runs, stub 0 s", figures.wall_per_note_s, None, None, "s"),
        Row(
            "scale",
            f"{n}: {figures.processed} runs succeeded (share)",
            figures.processed - figures.failed,
            figures.processed,
            (figures.processed - figures.failed) / figures.processed,
            target=1.0,
        ),
        Row("scale", f"{n}: all notes, projected from wall per note", projected_min, None, None, "min"),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-per-level", type=int, default=16, help="notes run at each level in each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every level in turn: 1, 2, 4, 8, 1, 2, …")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent runs; 1 first")
    parser.add_argument("--latency", type=float, nargs=2, default=[1.0, 2.0], help="stub latency range, seconds")
    parser.add_argument("--notes-scale", type=int, nargs="*", default=[1000, 10000], help="note counts to scale to")
    parser.add_argument("--processed", type=int, default=200, help="notes run through the stub at each scale")
    parser.add_argument("--scale-concurrency", type=int, default=8, help="concurrent runs at each scale")
    parser.add_argument(
        "--processing-budget-s",
        type=float,
        default=420,
        help="at each scale, no note run starts after this many seconds: fewer than --processed when runs are slow",
    )
    add_json_argument(parser)
    args = parser.parse_args()
    if args.levels[0] != 1:
        parser.error("--levels must start at 1: the others are compared with it")
    started = time.perf_counter()
    workers = Workers(max(*args.levels, args.scale_concurrency))  # forked first: nothing running to inherit
    print(f"{len(workers.processes)} workers ready in {time.perf_counter() - started:.0f} s", flush=True)
    latency = (args.latency[0], args.latency[1])
    try:
        with tempfile.TemporaryDirectory(prefix="scale-") as folder:
            root = Path(folder)
            rounds: dict[int, list[Level]] = {concurrency: [] for concurrency in args.levels}
            for turn, concurrency in product(range(args.rounds), args.levels):
                level = measure_level(workers, root, args.notes_per_level, concurrency, latency, turn)
                print(
                    f"round {turn + 1}, {concurrency} concurrent runs: {level.notes} notes in {level.wall_s:.1f} s = "
                    f"{level.notes_per_minute:.1f} notes/min, {level.failed} failed, {level.llm_calls} LLM calls, "
                    f"stub max in flight {level.max_in_flight}; a run: "
                    + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in level.phases.items()),
                    flush=True,
                )
                rounds[concurrency].append(level)
            levels = [Level.of_rounds(rounds[concurrency]) for concurrency in args.levels]
            start = run_process_start()
            scales = []
            for notes in args.notes_scale:
                print(f"scale: {notes} notes", flush=True)
                scales.append(
                    measure_scale(
                        workers,
                        root,
                        notes,
                        min(args.processed, notes),
                        args.scale_concurrency,
                        args.processing_budget_s,
                    )
                )
    finally:
        workers.close()
    rows = throughput_rows(levels, latency, start)
    for figures in scales:
        rows += scale_rows(figures)
    print(f"\nscale: {time.perf_counter() - started:.0f} s in all, on {os.cpu_count()} cores\n")
    report(rows, args.json)


if __name__ == "__main__":
    main()
