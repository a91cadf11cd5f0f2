"""The cluster's Dagster instance (deploy/dagster.yaml) on a real PostgreSQL server.

What one instance object writes, another opened on the same config reads back, as the daemon, the webserver
and the run pods share one database: runs, event logs, sensor cursors, schedules and pool slots. The sensor,
scheduler and slot-freeing steps are the daemon's own iterations over the project's code location. Only the
K8sRunLauncher is swapped for the default one (there is no cluster) and the port for the test server's.
"""

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from dagster._cli.instance import instance_cli
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.scheduler.instigation import ScheduleInstigatorData, TickStatus
from dagster._core.test_utils import create_run_for_test, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.core.common.metadata_keys import DATASET_VERSION, TRAIN_PAIRS
from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.ingest.watch import WatchCursor
from fine_tune_dag_tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
LOGGER = logging.getLogger("fine_tune_dag_tests.daemon")
SETTLED = time.time() - 3600  # an mtime the notes sensor takes as a finished file


def deploy_instance() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


@dataclass(frozen=True)
class PostgresHome:
    """A DAGSTER_HOME whose dagster.yaml is deploy/dagster.yaml, on one fresh database of the test server."""

    path: Path
    server: PostgresServer
    database: str

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """A new instance object: what another process (daemon, webserver, run pod) would open."""
        with dg.DagsterInstance.from_config(str(self.path)) as instance:
            yield instance

    def sql(self, query: str) -> list[str]:
        """Rows straight from Postgres, bypassing Dagster."""
        return self.server.psql(self.database, query).splitlines()


@pytest.fixture
def home(postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PostgresHome:
    database = postgres_server.create_database("dagster")
    # the DAGSTER_PG_* variables the cluster's fine-tune-dag-env ConfigMap and Secret provide; trust auth
    # ignores the password, but the instance config requires the variable
    for name, value in {
        "DAGSTER_PG_HOST": postgres_server.host,
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USERNAME": postgres_server.user,
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
    }.items():
        monkeypatch.setenv(name, value)
    config = deploy_instance()
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    config["storage"]["postgres"]["postgres_db"]["port"] = postgres_server.port
    path = tmp_path / "dagster_home"
    path.mkdir()
    (path / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(path))  # for the `dagster instance` CLI
    return PostgresHome(path, postgres_server, database)


@contextmanager
def project_code_location(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    """The project's code location as the code server serves it (`-m fine_tune_dag.definitions`), in this process."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable, module_name="fine_tune_dag.definitions", working_directory=str(REPO)
        )
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        yield workspace


def project_repository(workspace: WorkspaceProcessContext) -> RemoteRepository:
    [entry] = workspace.create_request_context().get_code_location_entries().values()
    assert entry.code_location, entry.load_error
    [repository] = entry.code_location.get_repositories().values()
    return repository


def write_note(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, (SETTLED, SETTLED))


@dg.asset(pool="duckdb")
def rows() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset(deps=[rows])
def summary() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"lines": 1})


@dg.asset(partitions_def=notes_partitions)
def note_words(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"words": len(context.partition_key.split("-"))})


def test_the_cluster_instance_opens_on_postgres_with_its_run_queue_pools_and_run_monitoring(home: PostgresHome) -> None:
    deploy = deploy_instance()
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    public_tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    assert home.sql(public_tables) == []

    with home.instance() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == deploy["concurrency"]["runs"]["max_concurrent_runs"]
        assert concurrency.pool_config.default_pool_limit == deploy["concurrency"]["pools"]["default_limit"]
        assert instance.run_monitoring_enabled
        assert deploy["run_monitoring"].items() <= instance.run_monitoring_settings.items()
        assert instance.run_monitoring_start_timeout_seconds == deploy["run_monitoring"]["start_timeout_seconds"]
        assert instance.event_log_storage.supports_global_concurrency_limits

    # opening the instance created every table and stamped the schema at Dagster's head revision
    assert {"runs", "run_tags", "event_logs", "dynamic_partitions", "instigators", "job_ticks"} <= set(
        home.sql(public_tables)
    )
    assert {"concurrency_limits", "concurrency_slots", "pending_steps", "alembic_version"} <= set(
        home.sql(public_tables)
    )
    migrate = CliRunner().invoke(instance_cli, ["migrate"])
    assert migrate.exit_code == 0, migrate.output
    with home.instance() as instance:
        schema = yaml.safe_load(instance.schema_str())["schema"]
    assert all(state["current"] == state["latest"] for state in schema.values()), schema
    assert home.sql("SELECT version_num FROM alembic_version") == [schema["run_storage"]["latest"]]

    # the chart renders the same driver into its instance ConfigMap
    assert values["postgresql"]["postgresqlScheme"] == deploy["storage"]["postgres"]["postgres_db"]["scheme"]


def test_a_run_and_its_status_are_read_back_from_postgres_by_another_instance(home: PostgresHome) -> None:
    with home.instance() as run_worker:
        result = dg.materialize([rows, summary], instance=run_worker)
    assert result.success

    with home.instance() as webserver:
        record = webserver.get_run_record_by_id(result.run_id)
        assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert record.start_time is not None and record.end_time is not None and record.start_time <= record.end_time
        steps = webserver.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
        assert sorted(step.event_log_entry.step_key for step in steps) == ["rows", "summary"]
        # the `duckdb` step took its slot from the pool that default_limit created, and gave it back
        duckdb = webserver.event_log_storage.get_concurrency_info("duckdb")
        assert (duckdb.limit, duckdb.using_default_limit, duckdb.claimed_slots) == (1, True, [])

    assert home.sql(f"SELECT status FROM runs WHERE run_id = '{result.run_id}'") == ["SUCCESS"]
    assert home.sql(
        f"SELECT step_key FROM event_logs WHERE run_id = '{result.run_id}' "
        "AND dagster_event_type = 'STEP_SUCCESS' ORDER BY step_key"
    ) == ["rows", "summary"]


def test_materializations_and_dynamic_partitions_are_read_back_from_postgres(home: PostgresHome) -> None:
    keys = ["note-a", "note-b-c"]
    with home.instance() as run_worker:
        run_worker.add_dynamic_partitions(notes_partitions.name, keys)
        result = dg.materialize([note_words], instance=run_worker, partition_key="note-b-c")
    assert result.success

    with home.instance() as webserver:
        assert webserver.get_dynamic_partitions(notes_partitions.name) == keys
        assert webserver.get_materialized_partitions(note_words.key) == {"note-b-c"}
        [materialization] = webserver.fetch_materializations(note_words.key, limit=10).records
        assert materialization.run_id == result.run_id
        assert materialization.asset_materialization is not None
        assert materialization.asset_materialization.partition == "note-b-c"
        assert materialization.asset_materialization.metadata["words"] == dg.IntMetadataValue(3)

    assert home.sql("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'notes' ORDER BY id") == keys
    assert home.sql(
        f"SELECT partition FROM event_logs WHERE run_id = '{result.run_id}' "
        "AND dagster_event_type = 'ASSET_MATERIALIZATION'"
    ) == ["note-b-c"]


def test_the_notes_sensor_cursor_survives_in_postgres_across_a_daemon_restart(
    home: PostgresHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = tmp_path / "notes"
    monkeypatch.setenv("FINE_TUNE_DAG_NOTES_DIR", str(notes))
    monkeypatch.setenv("FINE_TUNE_DAG_DATA_DIR", str(tmp_path / "data"))
    write_note(notes / "a.md", "# A\n\nfirst")
    started = time.time()

    with home.instance() as daemon, project_code_location(daemon) as workspace:
        repository = project_repository(workspace)
        sensor = repository.get_sensor("new_notes_sensor")
        automation = repository.get_sensor("automation_sensor")
        # as `dagster sensor stop automation_sensor`: it evaluates the whole graph, which is not this test
        daemon.stop_sensor(automation.get_remote_origin_id(), automation.selector_id, automation)
        list(execute_sensor_iteration(workspace, LOGGER, None, None))

    write_note(notes / "b.md", "# B\n\nsecond")
    # a restarted daemon (new instance object), past the sensor's 15 s minimum interval
    with home.instance() as daemon, project_code_location(daemon) as workspace, freeze_time(started + 20):
        list(execute_sensor_iteration(workspace, LOGGER, None, None))

    with home.instance() as webserver:
        state = webserver.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        assert state is not None
        assert sorted(WatchCursor.from_json(state.instigator_data.cursor).known) == ["a.md", "b.md"]
        second, first = webserver.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)
        requested = [[webserver.get_run_by_id(run_id) for run_id in tick.run_ids] for tick in (first, second)]
        assert [tick.status for tick in (first, second)] == [TickStatus.SUCCESS, TickStatus.SUCCESS]
        # the restarted daemon read the cursor back: only b is new, a is not requested again
        assert [[run.tags["dagster/partition"] for run in runs] for runs in requested] == [
            [note_partition_key("a.md")],
            [note_partition_key("b.md")],
        ]
        assert {(run.job_name, run.status) for runs in requested for run in runs} == {
            ("notes_job", dg.DagsterRunStatus.QUEUED)
        }
        assert webserver.get_dynamic_partitions(notes_partitions.name) == [
            note_partition_key("a.md"),
            note_partition_key("b.md"),
        ]

    assert home.sql("SELECT status, count(*) FROM runs GROUP BY status") == ["QUEUED|2"]
    cursor = home.sql(  # Dagster serializes instigator_data under its old name
        "SELECT instigator_body::json #>> '{job_specific_data,cursor}' FROM instigators "
        f"WHERE selector_id = '{sensor.selector_id}'"
    )
    assert [sorted(WatchCursor.from_json(text).known) for text in cursor] == [["a.md", "b.md"]]


def test_the_retrain_schedule_state_and_ticks_round_trip_through_postgres(
    home: PostgresHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINE_TUNE_DAG_NOTES_DIR", str(tmp_path / "notes"))
    monkeypatch.setenv("FINE_TUNE_DAG_DATA_DIR", str(tmp_path / "data"))
    started = datetime(2026, 1, 10, 2, 59, tzinfo=UTC)  # a minute before retrain_schedule's 03:00 UTC
    first_night = started + timedelta(minutes=2)
    second_night = first_night + timedelta(days=1)

    def scheduler_iteration(now: datetime) -> None:
        """One pass of the scheduler daemon at `now`, from a fresh instance object (a restarted daemon)."""
        with home.instance() as daemon, project_code_location(daemon) as workspace, freeze_time(now):
            list(launch_scheduled_runs(workspace, LOGGER, now, {}))

    scheduler_iteration(started)  # the daemon meets the schedule: its state starts now
    scheduler_iteration(first_night)  # nothing trained and no dataset: skipped with the reason
    with home.instance() as run_worker:
        run_worker.report_runless_asset_event(
            dg.AssetMaterialization(dataset_splits.key, metadata={TRAIN_PAIRS: 12, DATASET_VERSION: "v1"})
        )
    scheduler_iteration(second_night)  # the train split grew: a retraining run is queued

    with home.instance() as webserver, project_code_location(webserver) as workspace:
        schedule = project_repository(workspace).get_schedule("retrain_schedule")
        state = webserver.get_instigator_state(schedule.get_remote_origin_id(), schedule.selector_id)
        assert state is not None and isinstance(state.instigator_data, ScheduleInstigatorData)
        assert state.instigator_data.cron_schedule == "0 3 * * *"
        assert state.instigator_data.start_timestamp == started.timestamp()
        second, first = webserver.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)
        assert (first.status, first.timestamp) == (TickStatus.SKIPPED, started.replace(hour=3, minute=0).timestamp())
        assert first.skip_reason is not None and first.skip_reason.startswith("the data did not grow")
        assert (second.status, second.timestamp) == (TickStatus.SUCCESS, first.timestamp + 86400)
        [run_id] = second.run_ids
        run = webserver.get_run_by_id(run_id)
        assert run is not None and (run.job_name, run.status) == ("retrain_job", dg.DagsterRunStatus.QUEUED)
        assert run.tags["fine_tune_dag/growth"] == "12"

    assert home.sql("SELECT status FROM job_ticks ORDER BY timestamp") == ["SKIPPED", "SUCCESS"]


def free_slots_of_ended_runs(daemon: dg.DagsterInstance, now: float) -> None:
    """One pass of run monitoring's slot freeing (free_slots_after_run_end_seconds) at `now`."""
    with freeze_time(now):
        # the iteration reads nothing from the workspace but its instance
        list(execute_concurrency_slots_iteration(SimpleNamespace(instance=daemon), LOGGER))


def test_a_pool_slot_held_by_a_crashed_run_blocks_other_workers_until_run_monitoring_frees_it(
    home: PostgresHome,
) -> None:
    deploy = deploy_instance()
    assert deploy["concurrency"]["pools"]["default_limit"] == 1
    free_after = deploy["run_monitoring"]["free_slots_after_run_end_seconds"]

    with home.instance() as worker_a, home.instance() as worker_b, home.instance() as daemon:
        run_a = create_run_for_test(worker_a, job_name="notes_job")
        run_b = create_run_for_test(worker_b, job_name="notes_job")
        # two run pods' steps in the duckdb pool; a's pod then dies holding its slot
        assert InstanceConcurrencyContext(worker_a, run_a).claim("duckdb", "raw_notes")
        assert not InstanceConcurrencyContext(worker_b, run_b).claim("duckdb", "raw_notes")
        duckdb = daemon.event_log_storage.get_concurrency_info("duckdb")
        assert (duckdb.limit, duckdb.using_default_limit, duckdb.slot_count) == (1, True, 1)
        assert (duckdb.active_run_ids, duckdb.pending_run_ids) == ({run_a.run_id}, {run_b.run_id})

        daemon.report_run_failed(run_a)  # run monitoring: the run worker's pod is gone
        ended = time.time()
        free_slots_of_ended_runs(daemon, ended + free_after / 2)
        assert daemon.event_log_storage.get_concurrency_info("duckdb").active_run_ids == {run_a.run_id}
        free_slots_of_ended_runs(daemon, ended + free_after + 1)
        assert daemon.event_log_storage.get_concurrency_info("duckdb").active_run_ids == set()

        # the freed slot went to the waiting step, which takes it on its next try
        assert worker_b.event_log_storage.claim_concurrency_slot("duckdb", run_b.run_id, "raw_notes").is_claimed
        assert home.sql("SELECT run_id FROM concurrency_slots WHERE concurrency_key = 'duckdb'") == [run_b.run_id]


def test_the_gpu_pool_set_with_the_cli_sticks_over_the_default_limit(home: PostgresHome) -> None:
    result = CliRunner().invoke(instance_cli, ["concurrency", "set", "gpu", "2"])  # deploy/README.md, step 4
    assert result.exit_code == 0, result.output
    assert home.sql("SELECT \"limit\", using_default_limit FROM concurrency_limits WHERE concurrency_key = 'gpu'") == [
        "2|f"
    ]

    with home.instance() as worker_a, home.instance() as worker_b:
        workers = [worker_a, worker_b, worker_b]
        runs = [create_run_for_test(worker, job_name="train_and_evaluate_job") for worker in workers]
        claims = [
            InstanceConcurrencyContext(worker, run).claim("gpu", "lora_adapter")
            for worker, run in zip(workers, runs, strict=True)
        ]
        assert claims == [True, True, False]  # default_limit (1) would have let one through
        gpu = worker_a.event_log_storage.get_concurrency_info("gpu")
        assert (gpu.limit, gpu.using_default_limit, gpu.slot_count) == (2, False, 2)
        assert gpu.active_run_ids == {runs[0].run_id, runs[1].run_id}
