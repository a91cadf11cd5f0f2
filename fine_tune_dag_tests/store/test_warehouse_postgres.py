"""The warehouse on a real PostgreSQL server: the same tables and assets, many writers at once, one LLM cache."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.runner import materialize_graph
from fine_tune_dag_tests.end_to_end.test_graph import RUN_CONFIG, write_notes

# One writer process: `notes` notes of its own replaced twice (the second text wins), then the note every
# writer replaces at once, the cache entries every writer stores, and request-log rows of its own.
WRITER = """
import sys
import pandas as pd
from fine_tune_dag.core.store.warehouse import Warehouse

url, writer, notes = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = Warehouse(url)
def passages(note_id, text):
    return pd.DataFrame([{"note_id": note_id, "passage_index": i, "text": f"{text} {i}"} for i in range(3)])
for round in ("draft", "final"):
    for n in range(notes):
        db.replace_rows("passages", passages(f"{writer}-{n}", f"{round} by {writer}"), {"note_id": f"{writer}-{n}"})
for n in range(10):
    db.replace_rows("passages", passages("shared", f"shared by {writer}"), {"note_id": "shared"})
    db.insert_rows("llm_cache", pd.DataFrame([{"cache_key": f"k{n}", "provider": "p", "response": f"from {writer}"}]))
    db.insert_rows("llm_requests", pd.DataFrame([{"request_id": f"{writer}-{n}", "provider": "p"}]))
"""

SAME_REQUESTS = [
    LLMRequest((("user", f"What do bees do in winter? (note {i})"),), "grounded_qa", "1") for i in range(3)
]

# Another machine: the same requests through the cache, with a scripted LLM that counts what reached it.
OTHER_MACHINE = """
import json, sys
from fine_tune_dag_testkit.scripted import ScriptedLLM
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag_tests.store.test_warehouse_postgres import SAME_REQUESTS

llm = ScriptedLLM()
answers = CachedLLM(llm, Warehouse(sys.argv[1])).complete(SAME_REQUESTS)
print(json.dumps({"calls": llm.total_calls, "answers": answers}))
"""


def test_the_whole_graph_runs_on_postgres_with_the_same_assets_and_no_duckdb_file(
    postgres_server, tmp_path, tiny_model_dir
):
    url = postgres_server.url(postgres_server.create_database("graph"))
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_notes(notes)
    defs = scripted_definitions(notes, data, tiny_model_dir, warehouse_url=url)
    with dg.instance_for_test() as instance:
        run = materialize_graph(defs, instance, notes, run_config=RUN_CONFIG)
    assert run.success and set(run.failed_notes) == {key for key in run.notes if "broken" in key}
    database = url.rsplit("/", 1)[1]
    counts = {
        table: int(postgres_server.psql(database, f"SELECT count(*) FROM {table}"))
        for table in ("raw_notes", "rejected_notes", "passages", "qa_pairs", "dataset_splits", "adapters")
    }
    assert counts["raw_notes"] == len(run.notes) - 1 and counts["rejected_notes"] == 1
    assert all(counts.values()), counts
    assert current_champion(Warehouse(url)) is not None
    assert not list(data.rglob("*.duckdb"))


def test_four_processes_writing_at_once_lose_and_duplicate_nothing(postgres_server):
    url = postgres_server.url(postgres_server.create_database("writers"))
    Warehouse(url).query("SELECT 1")  # the tables, made once, before the race
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, f"w{w}", "20"], stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=240) == 0, writer.stderr.read()
    db = Warehouse(url)
    own = db.query("SELECT note_id, text FROM passages WHERE note_id <> 'shared'")
    assert len(own) == 4 * 20 * 3 and own["note_id"].nunique() == 4 * 20
    assert own["text"].str.startswith("final by ").all()
    shared = db.query("SELECT passage_index, text FROM passages WHERE note_id = 'shared' ORDER BY passage_index")
    # every replacement was whole: three rows, all from one writer, never a mix or a pile-up
    assert shared["passage_index"].tolist() == [0, 1, 2]
    assert shared["text"].str.rsplit(" ", n=1).str[0].nunique() == 1
    assert db.query("SELECT count(*) AS n FROM llm_cache")["n"].iloc[0] == 10
    assert db.query("SELECT count(DISTINCT request_id) AS n, count(*) AS rows FROM llm_requests").iloc[0].tolist() == [
        40,
        40,
    ]


def test_a_request_one_machine_paid_for_costs_another_nothing(postgres_server):
    url = postgres_server.url(postgres_server.create_database("cache"))
    first = ScriptedLLM()
    answers = CachedLLM(first, Warehouse(url)).complete(SAME_REQUESTS)
    assert first.total_calls == len(SAME_REQUESTS)
    other = subprocess.run(
        [sys.executable, "-c", OTHER_MACHINE, url], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(other.stdout.strip().splitlines()[-1]) == {"calls": 0, "answers": answers}
    log = Warehouse(url).query(
        "SELECT cache_hit, count(*) AS n FROM llm_requests GROUP BY cache_hit ORDER BY cache_hit"
    )
    assert log.to_dict("records") == [{"cache_hit": False, "n": 3}, {"cache_hit": True, "n": 3}]


def test_the_server_sees_a_promotion_written_by_another_process(postgres_server):
    db = Warehouse(postgres_server.url(postgres_server.create_database("stamp")))
    changed, stamp = db.changed_since(None)
    assert changed and db.changed_since(stamp) == (False, stamp)
    postgres_server.psql(db.url.rsplit("/", 1)[1], "INSERT INTO adapters (version, path) VALUES ('v1', '/a/v1')")
    assert db.changed_since(stamp)[0]


def test_the_url_never_shows_its_password():
    assert repr(Warehouse("postgresql://fine:s3cret@db.internal:5432/notes")) == (
        "Warehouse('postgresql://fine@db.internal:5432/notes')"
    )
