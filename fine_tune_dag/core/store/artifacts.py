"""Mirror artifact folders (adapter versions, reports) to object storage.

Step pods on a cluster do not share a disk with the people who use the adapters, so finished folders
are published to any fsspec URL (`s3://bucket/prefix`, `gs://…`, `file:///mnt/x`, `memory://x`).
Credentials come from fsspec's usual environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
FSSPEC_S3_ENDPOINT_URL, …), never from this code, and nothing here logs them.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

COMPLETE_MARKER = "_COMPLETE"


class ArtifactStoreError(RuntimeError):
    """A folder asked for is not (completely) published."""


class ArtifactStore:
    """Publishes and fetches whole folders; an empty `url` keeps everything on local disk only.

    Object stores have no atomic rename, so a folder counts as published only once its
    `_COMPLETE` marker (written last, listing every file) exists; half-uploaded folders are
    never listed or fetched.
    """

    def __init__(self, url: str = "") -> None:
        self.url = url.rstrip("/")
        self._fs: AbstractFileSystem | None = None
        self._root = ""
        if self.url:
            self._fs, root = url_to_fs(self.url)
            self._root = root.rstrip("/")

    @property
    def enabled(self) -> bool:
        return self._fs is not None

    def remote_url(self, name: str) -> str:
        return f"{self.url}/{_checked_name(name)}"

    def publish(self, local_folder: Path, name: str) -> str:
        """Upload every file under `local_folder` to `<url>/<name>/`, the marker last; returns the URL.

        Published folders are immutable (versions are never overwritten), so publishing again is a no-op.
        """
        if not self.enabled:
            return str(local_folder)
        if not local_folder.is_dir():
            raise FileNotFoundError(f"no artifact folder at {local_folder}")
        remote = self._remote_path(name)
        if self._fs.exists(f"{remote}/{COMPLETE_MARKER}"):
            return self.remote_url(name)
        files = sorted(path.relative_to(local_folder).as_posix() for path in local_folder.rglob("*") if path.is_file())
        for parent in sorted({posixpath.dirname(f"{remote}/{relative}") for relative in files}):
            self._fs.makedirs(parent, exist_ok=True)
        for relative in files:
            self._fs.put_file(str(local_folder / relative), f"{remote}/{relative}")
        self._fs.pipe_file(f"{remote}/{COMPLETE_MARKER}", json.dumps({"files": files}).encode())
        return self.remote_url(name)

    def fetch(self, name: str, local_folder: Path) -> Path:
        """Download a published folder unless a local copy exists; a crash never leaves a half folder."""
        if not self.enabled or local_folder.exists():
            return local_folder
        files = self._manifest(name)
        local_folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local_folder.name}.", dir=local_folder.parent))
        try:
            remote = self._remote_path(name)
            for relative in files:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fs.get_file(f"{remote}/{relative}", str(target))
            os.replace(staging, local_folder)
        except OSError:
            if not local_folder.exists():  # a concurrent fetch of the same folder is fine, anything else is not
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local_folder

    def published(self, prefix: str = "") -> list[str]:
        """Names (usable with `fetch`) of the complete folders directly under `<url>/<prefix>/`."""
        if not self.enabled:
            return []
        base = self._remote_path(prefix) if prefix else self._root
        try:
            children = self._fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = [posixpath.join(prefix, posixpath.basename(child.rstrip("/"))) for child in children]
        return sorted(name for name in names if self._fs.exists(f"{self._remote_path(name)}/{COMPLETE_MARKER}"))

    def _manifest(self, name: str) -> list[str]:
        try:
            marker = self._fs.cat_file(f"{self._remote_path(name)}/{COMPLETE_MARKER}")
        except FileNotFoundError:
            raise ArtifactStoreError(
                f"{self.remote_url(name)} is not published (no {COMPLETE_MARKER} marker)"
            ) from None
        return [_checked_name(relative) for relative in json.loads(marker)["files"]]

    def _remote_path(self, name: str) -> str:
        return f"{self._root}/{_checked_name(name)}"


def _checked_name(name: str) -> str:
    """Names are relative POSIX paths; anything that could escape the store's prefix is refused."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"artifact name must be a relative path inside the store, got {name!r}")
    return path.as_posix()
