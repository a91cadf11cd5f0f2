"""new_notes_sensor over a temporary notes folder: new, changed, deleted, temporary, still-growing
files and a burst, through `build_sensor_context` on an ephemeral instance."""

import os
import time

import dagster as dg
import pytest

from fine_tune_dag.core.text.ingest import note_partition_key
from fine_tune_dag.core.text.watch import WatchCursor, scan_notes
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.policy import AutomationPolicy

OLD = time.time() - 3600


def write(path, text: str, settled: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if settled:
        os.utime(path, (OLD, OLD))


class Watcher:
    """The sensor ticking over one folder, applying its partition requests as the daemon would."""

    def __init__(self, notes, data, notes_per_tick: int = 100):
        self.defs = build_definitions(
            notes_dir=str(notes), data_dir=str(data), policy=AutomationPolicy(notes_per_tick=notes_per_tick)
        )
        self.sensor = self.defs.resolve_sensor_def("new_notes_sensor")
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None

    def tick(self) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs, resources=self.defs.resources
        ) as context:
            result = self.sensor(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        self.cursor = result.cursor
        return result

    @property
    def partitions(self) -> set[str]:
        return set(self.instance.get_dynamic_partitions("notes"))


def requested(result: dg.SensorResult, job: str = "notes_job") -> list[str]:
    return sorted(r.partition_key for r in result.run_requests if r.job_name == job)


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "notes", tmp_path / "data"


def test_new_changed_and_deleted_notes(folder):
    notes, data = folder
    write(notes / "a.md", "# A\n\nfirst")
    write(notes / "sub" / "b.txt", "bee")
    watcher = Watcher(notes, data)
    first = watcher.tick()
    keys = {note_partition_key("a.md"), note_partition_key("sub/b.txt")}
    assert set(requested(first)) == keys and watcher.partitions == keys

    assert watcher.tick().run_requests == []  # nothing changed: nothing requested, no parsing

    os.utime(notes / "a.md", (OLD + 5, OLD + 5))  # touched, same content: no run
    assert watcher.tick().run_requests == []

    write(notes / "a.md", "# A\n\nsecond version")
    assert requested(watcher.tick()) == [note_partition_key("a.md")]

    (notes / "sub" / "b.txt").unlink()
    deleted = watcher.tick()
    assert watcher.partitions == {note_partition_key("a.md")}
    assert requested(deleted) == [] and [r.job_name for r in deleted.run_requests] == ["dataset_job"]
    assert (notes / "a.md").read_text() == "# A\n\nsecond version"  # the sensor never writes notes


def test_hidden_and_temporary_files_are_ignored(folder):
    notes, data = folder
    for name in (".draft.md", "~$essay.docx", "note.md.swp", "upload.tmp", "backup.md~", "image.png"):
        write(notes / name, "debris")
    write(notes / ".obsidian" / "workspace.md", "app state")
    result = Watcher(notes, data).tick()
    assert result.run_requests == [] and result.skip_reason


def test_a_file_still_growing_waits_until_it_settles(folder):
    notes, data = folder
    path = notes / "essay.md"
    write(path, "# Essay\n\nThe first paragraph", settled=False)
    watcher = Watcher(notes, data)
    assert watcher.tick().run_requests == []  # just written: wait one tick
    with path.open("a", encoding="utf-8") as handle:
        handle.write(" keeps growing while the sync runs.")
    assert watcher.tick().run_requests == []  # grew between ticks: still waiting
    assert requested(watcher.tick()) == [note_partition_key("essay.md")]  # same size and mtime twice: taken


def test_a_burst_of_300_files_is_taken_in_bounded_batches(folder):
    notes, data = folder
    for i in range(300):
        write(notes / f"burst-{i:03d}.md", f"# Note {i}\n\nbody {i}")
    watcher = Watcher(notes, data, notes_per_tick=50)
    batches = []
    while len(batches) < 10:
        batch = requested(watcher.tick())
        if not batch:
            break
        batches.append(batch)
    assert [len(b) for b in batches] == [50] * 6
    assert len({k for b in batches for k in b}) == 300 and len(watcher.partitions) == 300


def test_a_fresh_cursor_skips_notes_already_materialized_with_this_content(folder):
    notes, data = folder
    write(notes / "a.md", "# A\n\nbody")
    watcher = Watcher(notes, data)
    key = note_partition_key("a.md")
    watcher.instance.add_dynamic_partitions("notes", [key])
    digest = scan_notes(notes, WatchCursor()).added[0].sha256
    watcher.instance.report_runless_asset_event(
        dg.AssetMaterialization("raw_notes", partition=key, tags={"dagster/data_version": digest})
    )
    assert watcher.tick().run_requests == []
    write(notes / "a.md", "# A\n\nedited while the daemon was off")
    assert requested(watcher.tick()) == [key]


def test_a_missing_notes_folder_skips_with_the_reason(folder):
    notes, data = folder
    result = Watcher(notes, data).tick()
    assert result.run_requests == [] and "does not exist" in result.skip_reason.skip_message


def test_cursor_round_trips_and_unreadable_files_are_handed_on(folder):
    notes, _ = folder
    write(notes / "locked.md", "secret")
    os.chmod(notes / "locked.md", 0)
    try:
        scan = scan_notes(notes, WatchCursor())
    finally:
        os.chmod(notes / "locked.md", 0o644)
    assert [c.path for c in scan.added] == ["locked.md"]  # raw_notes will say why it cannot be read
    assert WatchCursor.from_json(scan.cursor.to_json()) == scan.cursor
