"""The artifact store mirrors whole folders and never exposes a half-uploaded one."""

import uuid
from pathlib import Path

import pytest
from fsspec.core import url_to_fs

from fine_tune_dag.core.store.artifacts import COMPLETE_MARKER, ArtifactStore, ArtifactStoreError
from fine_tune_dag.resources.artifacts import ArtifactStoreResource

ADAPTER_FILES = {
    "adapter_config.json": '{"r": 16}',
    "adapter_model.safetensors": "weights",
    "tokenizer/tokenizer.json": "{}",
}


def write_folder(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return folder


def read_folder(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): path.read_text() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(params=["memory", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # The memory filesystem is process-global: a fresh prefix per test keeps tests independent.
    return f"memory://store-{uuid.uuid4().hex}" if request.param == "memory" else (tmp_path / "bucket").as_uri()


def test_publish_then_fetch_round_trips_every_file(store_url: str, tmp_path: Path) -> None:
    store = ArtifactStoreResource(url=store_url).get()
    local = write_folder(tmp_path / "adapters" / "v1", ADAPTER_FILES)

    url = store.publish(local, "adapters/v1")
    fetched = store.fetch("adapters/v1", tmp_path / "elsewhere" / "v1")

    assert url == f"{store_url}/adapters/v1"
    assert read_folder(fetched) == ADAPTER_FILES
    assert store.published("adapters") == ["adapters/v1"]
    assert [path.name for path in (tmp_path / "elsewhere").iterdir()] == ["v1"]  # no staging folder left behind


def test_folder_without_marker_is_neither_listed_nor_fetched(store_url: str, tmp_path: Path) -> None:
    store = ArtifactStore(store_url)
    store.publish(write_folder(tmp_path / "v1", ADAPTER_FILES), "adapters/v1")
    store.publish(write_folder(tmp_path / "v2", ADAPTER_FILES), "adapters/v2")
    fs, root = url_to_fs(store_url)
    fs.rm(f"{root}/adapters/v2/{COMPLETE_MARKER}")  # as if the upload of v2 had crashed before its marker

    assert store.published("adapters") == ["adapters/v1"]
    with pytest.raises(ArtifactStoreError, match=f"{store_url}/adapters/v2"):
        store.fetch("adapters/v2", tmp_path / "fetched" / "v2")
    assert not (tmp_path / "fetched" / "v2").exists()


def test_fetch_keeps_an_existing_local_copy(tmp_path: Path) -> None:
    store = ArtifactStore(f"memory://store-{uuid.uuid4().hex}")
    store.publish(write_folder(tmp_path / "published", ADAPTER_FILES), "reports/v1")
    local = write_folder(tmp_path / "local", {"report.md": "already here"})

    assert store.fetch("reports/v1", local) == local
    assert read_folder(local) == {"report.md": "already here"}


def test_local_only_store_does_nothing(tmp_path: Path) -> None:
    store = ArtifactStoreResource().get()
    local = write_folder(tmp_path / "v1", ADAPTER_FILES)

    assert not store.enabled
    assert store.publish(local, "adapters/v1") == str(local)
    assert store.fetch("adapters/v1", local) == local
    assert store.published("adapters") == []
    assert read_folder(tmp_path) == {f"v1/{name}": text for name, text in ADAPTER_FILES.items()}


def test_names_cannot_escape_the_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relative path"):
        ArtifactStore(f"memory://store-{uuid.uuid4().hex}").publish(tmp_path, "../outside")


def test_publishing_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no artifact folder"):
        ArtifactStore(f"memory://store-{uuid.uuid4().hex}").publish(tmp_path / "missing", "adapters/v1")
