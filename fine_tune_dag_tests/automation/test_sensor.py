"""new_notes_sensor over a temporary notes folder: new, changed, deleted, temporary, still-growing
files and a burst, through `build_sensor_context` on an ephemeral instance."""

import errno
import hashlib
import io
import json
import os
import time

import dagster as dg
import pytest

from fine_tune_dag.core.ingest import notes as ingest
from fine_tune_dag.core.ingest.notes import NoteParseError, note_partition_key, parse_note
from fine_tune_dag.core.ingest.watch import WatchCursor, scan_notes
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.policy import AutomationPolicy

OLD = time.time() - 3600


def write(path, text: str, settled: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if settled:
        os.utime(path, (OLD, OLD))


def link(path, target) -> None:
    """A symbolic link at `path`, settled like `write`'s files (its own mtime, not its target's)."""
    os.symlink(target, path)
    os.utime(path, (OLD, OLD), follow_symlinks=False)


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


class Opens:
    """Every file opened through `io.open` from now on (pathlib's way in, so the sensor's and the parser's), by real path.

    Opening a `denied` path fails with EACCES, as it does for a user without read permission (root
    ignores chmod 0); opening a `forbidden` one fails the test instead of happening (a pipe would block it).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        self.denied: set[str] = set()
        self.forbidden: set[str] = set()
        real_open = io.open

        def spy(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                real = os.path.realpath(file)
                self.paths.append(real)
                if real in self.forbidden:
                    raise AssertionError(f"{file} must not be opened")
                if real in self.denied:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(io, "open", spy)


def cursor_entry(result: dg.SensorResult, relative: str) -> list:
    return json.loads(result.cursor)["known"][relative]


def test_a_link_out_of_the_folder_is_handed_on_but_never_opened_hashed_or_recorded(folder, monkeypatch):
    notes, data = folder
    secret = notes.parent / "elsewhere" / "secret.md"
    write(secret, "# Not yours\n\nA file outside the notes folder.\n")
    write(notes / "a.md", "# A\n\nbody")
    link(notes / "outside.md", secret)
    link(notes / "inside.md", "a.md")  # a link within the folder is a note like any other
    watcher = Watcher(notes, data)
    opens = Opens(monkeypatch)
    result = watcher.tick()

    keys = {note_partition_key(name) for name in ("a.md", "outside.md", "inside.md")}
    assert set(requested(result)) == keys  # raw_notes rejects it on its own partition, with the reason
    assert str(secret) not in opens.paths
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in result.cursor
    own = (notes / "outside.md").lstat()  # the link's own size and mtime, nothing of its target's
    assert cursor_entry(result, "outside.md") == [
        own.st_size,
        own.st_mtime_ns,
        f"outside-link:{own.st_size}:{own.st_mtime_ns}",
    ]
    assert cursor_entry(result, "inside.md")[2] == hashlib.sha256((notes / "a.md").read_bytes()).hexdigest()
    assert watcher.tick().run_requests == []  # recorded: not handed on again

    write(secret, "# Not yours\n\nThe target changed, the link did not.\n")
    opens.paths.clear()
    assert watcher.tick().run_requests == [] and str(secret) not in opens.paths


def test_a_note_over_the_size_limit_is_handed_on_without_being_hashed(folder, monkeypatch):
    notes, data = folder
    monkeypatch.setattr(ingest, "MAX_NOTE_BYTES", 100)  # one limit: the sensor reads it from ingest too
    write(notes / "big.md", "# Big\n\n" + "many words " * 20)
    write(notes / "small.md", "# Small\n\nfew words")
    big = (notes / "big.md").stat()
    assert big.st_size > 100
    watcher = Watcher(notes, data)
    opens = Opens(monkeypatch)
    result = watcher.tick()

    assert set(requested(result)) == {note_partition_key("big.md"), note_partition_key("small.md")}
    assert str(notes / "big.md") not in opens.paths and str(notes / "small.md") in opens.paths
    assert cursor_entry(result, "big.md") == [
        big.st_size,
        big.st_mtime_ns,
        f"too-large:{big.st_size}:{big.st_mtime_ns}",
    ]
    with pytest.raises(NoteParseError, match="too large: .*; not read"):
        parse_note(notes / "big.md", notes)
    assert str(notes / "big.md") not in opens.paths


def test_unreadable_notes_are_handed_on_with_why_and_retried_until_readable(folder, monkeypatch):
    notes, _ = folder
    write(notes / "locked.md", "# Locked\n\nsecret")
    link(notes / "dangling.md", "missing.md")  # unreadable for root too: there is nothing behind it
    opens = Opens(monkeypatch)
    opens.denied.add(str(notes / "locked.md"))
    scan = scan_notes(notes, WatchCursor())

    assert sorted(c.path for c in scan.added) == ["dangling.md", "locked.md"]  # raw_notes says why
    digests = {c.path: c.sha256 for c in scan.added}
    assert digests["locked.md"].startswith(f"unreadable-{errno.EACCES}:")
    assert digests["dangling.md"].startswith(f"unreadable-{errno.ENOENT}:")
    assert WatchCursor.from_json(scan.cursor.to_json()) == scan.cursor
    with pytest.raises(NoteParseError, match="locked.md: cannot be read: Permission denied"):
        parse_note(notes / "locked.md", notes)
    with pytest.raises(NoteParseError, match="dangling.md: cannot be read: No such file or directory"):
        parse_note(notes / "dangling.md", notes)

    again = scan_notes(notes, scan.cursor)
    assert again.added == again.changed == []
    opens.denied.clear()  # its permissions were fixed: same size and mtime, now readable
    fixed = scan_notes(notes, again.cursor)
    assert [(c.path, c.sha256) for c in fixed.changed] == [
        ("locked.md", hashlib.sha256(b"# Locked\n\nsecret").hexdigest())
    ]


def test_a_pipe_named_like_a_note_is_handed_on_without_being_opened(folder, monkeypatch):
    notes, _ = folder
    notes.mkdir()
    os.mkfifo(notes / "pipe.md")
    os.utime(notes / "pipe.md", (OLD, OLD))
    Opens(monkeypatch).forbidden.add(str(notes / "pipe.md"))
    scan = scan_notes(notes, WatchCursor())
    assert [(c.path, c.sha256.partition(":")[0]) for c in scan.added] == [("pipe.md", "not-a-file")]
    with pytest.raises(NoteParseError, match="pipe.md: is not a regular file"):
        parse_note(notes / "pipe.md", notes)
