"""Faults injected into real runs: the LLM failing halfway through a note, training killed with
SIGKILL, an adapter write that fails, two processes writing the warehouse at once. Each time the
next run picks up where the work stopped, nothing is duplicated or half-listed, and the champion
stays what it was."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import torch
import yaml
from fine_tune_dag_testkit.daemon import LocalDaemon
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions

from fine_tune_dag.core.common.chat import chat_messages
from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag_tests.apps.test_webserver import EXPECTED, REPO
from fine_tune_dag_tests.automation.test_incremental import RUN_CONFIG

TRAINING = {"max_steps": 30, "batch_size": 2, "logging_steps": 1, "dtype": "float32", "checkpoint_steps": 3}


class Interrupted(Exception):
    pass


def test_interrupted_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, tiny_model_dir):
    conversations = [chat_messages("s", f"question {i} about bees", f"answer {i}: chains, always") for i in range(12)]
    settings = TrainingSettings(max_steps=12, batch_size=2, dtype="float32", checkpoint_steps=4, logging_steps=1)

    def stop_at_step_6(metrics: dict, total: int) -> None:
        if metrics["step"] == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_lora(tiny_model_dir, conversations, settings, on_log=stop_at_step_6, checkpoint_dir=tmp_path / "ck")
    resumed = train_lora(tiny_model_dir, conversations, settings, checkpoint_dir=tmp_path / "ck")
    straight = train_lora(tiny_model_dir, conversations, settings)

    assert resumed.resumed_from_step == 4 and straight.resumed_from_step == 0
    assert [s["step"] for s in resumed.steps] == list(range(1, 13))
    assert [round(s["loss"], 5) for s in resumed.steps] == [round(s["loss"], 5) for s in straight.steps]
    for (name, a), (_, b) in zip(resumed.model.named_parameters(), straight.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, msg=name)


@pytest.fixture
def trained(tmp_path, tiny_model_dir):
    """A graph that has run once: an adapter is champion."""
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    policy = AutomationPolicy(
        retrain_min_new_examples=1, settle_seconds=0, promote_always=True
    )
    defs = scripted_definitions(notes, data, tiny_model_dir, policy)
    with dg.instance_for_test() as instance:
        daemon = LocalDaemon(defs, instance, RUN_CONFIG)
        assert all(run.success for run in daemon.settle())
        db = Warehouse(data / "warehouse.duckdb")
        assert current_champion(db) is not None
        yield daemon, notes, data, db


def train_adapter(defs: dg.Definitions, config: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """`lora_adapter` alone, as the UI's "Materialize selected" runs it."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config={"ops": {"lora_adapter": {"config": config}}},
        instance=instance,
        asset_selection=[dg.AssetKey("lora_adapter")],
        raise_on_error=False,
    )


def registry(db: Warehouse, data: Path) -> tuple:
    champion = current_champion(db)
    adapters = sorted(db.query("SELECT version FROM adapters")["version"])
    folders = sorted(p.name for p in (data / "adapters").iterdir() if not p.name.startswith("."))
    return champion["version"], adapters, folders


KILLED_TRAINING = """
import json, sys, time
from pathlib import Path
import dagster as dg
import fine_tune_dag.core.training.sft as training
from fine_tune_dag_testkit.scripted import scripted_definitions
from fine_tune_dag_tests.training.test_faults import train_adapter

notes, data, model, config = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
losses = training.answer_token_losses
def slow_losses(*args):  # steps slow enough that the kill lands mid-run
    time.sleep(0.3)
    return losses(*args)
training.answer_token_losses = slow_losses
train_adapter(scripted_definitions(notes, data, model), config, dg.DagsterInstance.ephemeral())
"""


def test_training_killed_with_sigkill_resumes_and_the_champion_is_untouched(trained, tmp_path, tiny_model_dir):
    daemon, notes, data, db = trained
    before = registry(db, data)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(KILLED_TRAINING))
    args = [str(notes), str(data), str(tiny_model_dir), json.dumps(TRAINING)]
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((data / "adapters" / ".checkpoints").glob("*/checkpoint.pt")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert registry(db, data) == before  # nothing half-written was listed; the champion is the same

    result = train_adapter(daemon.defs, TRAINING, daemon.instance)
    assert result.success
    metadata = result.asset_materializations_for_node("lora_adapter")[0].metadata
    assert metadata["resumed_from_step"].value >= TRAINING["checkpoint_steps"]
    assert metadata["optimizer_steps"].value == TRAINING["max_steps"]
    assert not list((data / "adapters" / ".checkpoints").glob("*/checkpoint.pt"))  # done: cleared
    champion, adapters, folders = registry(db, data)
    assert champion == before[0]  # a new adapter is not champion until it is evaluated and passes
    assert len(adapters) == len(before[1]) + 1 and adapters == folders


def test_a_failed_adapter_write_leaves_no_adapter_behind(trained, monkeypatch):
    daemon, notes, data, db = trained
    before = registry(db, data)

    def disk_full(self, *args, **kwargs):
        (Path(args[0]) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("peft.PeftModel.save_pretrained", disk_full)
    result = train_adapter(daemon.defs, {**TRAINING, "max_steps": 2}, daemon.instance)
    assert not result.success
    assert registry(db, data) == before
    assert not [p for p in (data / "adapters").iterdir() if p.name.endswith(".tmp")]


def test_llm_failing_halfway_through_a_note_resumes_from_the_cache_without_duplicates(
    tmp_path, tiny_model_dir, scripted_llm, monkeypatch
):
    notes = tmp_path / "notes"
    (path,) = write_sample_notes(notes, 1, start=3)  # four paragraphs: several chunks of requests
    key = note_partition_key(path.name)

    def run_note(data: Path) -> dg.ExecuteInProcessResult:
        defs = scripted_definitions(notes, data, tiny_model_dir, llm=scripted_llm)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("notes", [key])
            return defs.resolve_job_def("notes_job").execute_in_process(
                instance=instance,
                partition_key=key,
                run_config={"ops": {"passages": {"config": {"min_chars": 40, "max_chars": 120}}}},
                raise_on_error=False,
            )

    calls_before = scripted_llm.total_calls
    assert run_note(tmp_path / "reference").success
    needed = scripted_llm.total_calls - calls_before
    reference = Warehouse(tmp_path / "reference" / "warehouse.duckdb").query("SELECT * FROM qa_pairs ORDER BY pair_id")
    assert needed > 8 and len(reference) > 4  # more than one chunk of requests

    complete = ScriptedLLM.complete
    answered = {"count": 0}

    def failing_halfway(self, requests):
        if answered["count"] + len(requests) > needed // 2:
            raise ConnectionError("503 from the LLM provider")
        answered["count"] += len(requests)
        return complete(self, requests)

    data = tmp_path / "data"
    with monkeypatch.context() as patch:
        patch.setattr(ScriptedLLM, "complete", failing_halfway)
        assert not run_note(data).success
    paid_first = answered["count"]
    assert 0 < paid_first < needed

    calls_before = scripted_llm.total_calls
    assert run_note(data).success
    assert scripted_llm.total_calls - calls_before == needed - paid_first  # nothing bought twice
    pairs = Warehouse(data / "warehouse.duckdb").query("SELECT * FROM qa_pairs ORDER BY pair_id")
    assert pairs["pair_id"].is_unique
    pd.testing.assert_frame_equal(pairs, reference)


WRITER = """
import sys
import pandas as pd
from fine_tune_dag.core.store.warehouse import Warehouse
db, name, rows, hold = Warehouse(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
for i in range(rows):
    frame = pd.DataFrame([{"cache_key": f"{name}-{i}", "provider": name, "model": "m", "template": "t",
                           "template_version": "1", "response": "x" * 1000, "created_at": pd.Timestamp.now()}])
    db.insert_rows("llm_cache", frame)
if hold:  # one long write: the other process must wait for it
    import time
    with db.connect() as con:
        con.execute("INSERT INTO llm_cache (cache_key, provider) VALUES (?, ?)", [f"{name}-held", name])
        time.sleep(hold)
"""


def test_two_processes_writing_the_warehouse_at_once_wait_for_each_other(tmp_path):
    database = tmp_path / "warehouse.duckdb"
    Warehouse(database).execute("SELECT 1")  # tables created
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writers = [
        subprocess.Popen([sys.executable, str(script), str(database), name, "60", hold], stderr=subprocess.PIPE)
        for name, hold in (("a", "2"), ("b", "0"), ("c", "0"))
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr.decode()[-3000:]
    counts = Warehouse(database).query("SELECT provider, count(*) AS n FROM llm_cache GROUP BY provider")
    assert dict(zip(counts["provider"], counts["n"])) == {"a": 61, "b": 60, "c": 60}
    with duckdb.connect(str(database), read_only=True) as con:  # the file opens cleanly: not corrupted
        assert con.execute("SELECT count(DISTINCT cache_key) FROM llm_cache").fetchone()[0] == 181


def test_a_writer_that_never_gets_the_lock_fails_with_a_clear_error(tmp_path):
    database = tmp_path / "warehouse.duckdb"
    Warehouse(database).execute("SELECT 1")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(database)!r}); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(duckdb.IOException, match="lock"):
            Warehouse(database, lock_timeout_s=1.0).execute("SELECT 1")
        assert 1.0 <= time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()


def test_whole_table_writers_share_one_pool_note_stages_none_and_training_one_gpu_slot(tmp_path, tiny_model_dir):
    defs = scripted_definitions(tmp_path / "notes", tmp_path / "data", tiny_model_dir)
    # every asset Dagster computes (pair_labels is external: people write it, no step runs)
    computed = [name for name in EXPECTED if defs.resolve_assets_def(name).is_executable]
    assert "pair_labels" not in computed and "lora_adapter" in computed
    pools = {name: defs.resolve_assets_def(name).op.pool for name in computed}
    for asset in ("dataset_splits", "champion_adapter"):
        assert pools[asset] == "duckdb", asset
    # per-note stages hold none: test_scale.py shows note runs' LLM calls overlap
    assert pools["raw_notes"] is None and pools["passages"] is None and pools["qa_pairs"] is None
    assert pools["lora_adapter"] == "gpu" and pools["eval_report"] == "gpu"
    instance_settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance_settings["concurrency"]["pools"]["default_limit"] == 1
