"""Several note runs at once: their LLM calls overlap, whatever pools the project's instance settings enforce."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from fine_tune_dag_testkit.gemini_stub import GeminiStub
from fine_tune_dag_testkit.notes import SAMPLE_TOPICS, write_sample_notes

from fine_tune_dag.runner import register_note_partitions
from fine_tune_dag_tests.llm.test_gemini import KEY, scripted_gemini

REPO = Path(__file__).resolve().parents[2]
TOPICS = SAMPLE_TOPICS[:4]
# every sentence of a sample note names its topic so ("… about bees (note 1)", "… and bees teach patience")
NOTE_TOPIC = re.compile(rf"(?:about|and) ({'|'.join(TOPICS)}) (?:\(note|teach)")

# One note run in its own process, as the run launcher starts them: Dagster runs are not meant to share a process.
# Each waits, its imports done, until every one is ready, so the runs start together however slowly a busy machine
# starts processes.
NOTE_RUN = """
import json, sys, time
from pathlib import Path
import dagster as dg
from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths

notes, data, model, url, key, partition, ready, go = sys.argv[1:]
paths = ProjectPaths(notes_dir=notes, data_dir=data)
llm = LLMResource(provider="gemini", model="gemini-2.5-flash", api_key=key, base_url=url, requests_per_minute=10_000,
                  paths=paths)
job = build_definitions(notes, data, base_model_ref=model, llm=llm).resolve_job_def(notes_job.name)
config = {"ops": {"passages": {"config": {"min_chars": 60, "max_chars": 200}}}}
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.05)
with dg.DagsterInstance.get() as instance:
    result = job.execute_in_process(instance=instance, partition_key=partition, run_config=config, raise_on_error=False)
print(json.dumps({"success": result.success}))
"""


def test_note_runs_make_llm_calls_at_once_under_the_projects_one_slot_pools(tmp_path, tiny_model_dir):
    notes, data, home = tmp_path / "notes", tmp_path / "data", tmp_path / "dagster_home"
    write_sample_notes(notes, len(TOPICS))
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # every pool, `duckdb` included, has one slot
    with GeminiStub(scripted_gemini, latency_s=0.5) as stub:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
            keys = register_note_partitions(instance, notes)
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        go = tmp_path / "go"
        ready = [tmp_path / f"ready-{key}" for key in keys]
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", NOTE_RUN, str(notes), str(data), str(tiny_model_dir), stub.base_url, KEY, key]
                + [str(flag), str(go)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for key, flag in zip(keys, ready)
        ]
        deadline = time.monotonic() + 240
        while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()
        outcomes = [json.loads(run.communicate(timeout=300)[0].strip().splitlines()[-1]) for run in runs]
        calls = stub.requests
    assert outcomes == [{"success": True}] * len(keys)
    note_of = {call.index: NOTE_TOPIC.search(call.prompt_text).group(1) for call in calls}
    assert set(note_of.values()) == set(TOPICS)
    # every note had a call reach the stub while another note's call was in flight, or was in flight when one did:
    # no slot was held through them (a held one-slot pool allows no overlap at all, one pair could be a fluke)
    overlapped = {
        note
        for a in calls
        for b in calls
        if note_of[a.index] != note_of[b.index] and a.received_at < b.received_at < a.finished_at
        for note in (note_of[a.index], note_of[b.index])
    }
    assert overlapped == set(TOPICS), overlapped
