"""The files an engine runs, converted once and kept with their lineage.

OpenVINO GenAI reads the project's own f16 GGUF (`modeling.gguf_export`). Its runtime adapters did not apply to a
GGUF base (peft's names, prefix-stripped names and GGUF's names all left the text unchanged), and optimum-intel,
its usual exporter, needs an older transformers than the project's; so each adapter version is merged into the
base and written as its own GGUF, once. A conversion sits in `<models dir>/engine/<name>/` beside a manifest of
what it was made from and the file's checksum: it is reused while both hold, and rebuilt (never trusted) when a
source changed or the file does not match its checksum.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENGINE_FOLDER = "engine"
MANIFEST = "manifest.json"
KEPT_MERGED = 4  # merged adapter versions kept on disk beside the base conversion: the newest few
_CONTENT_HASHED_BYTES = 64 * 2**20  # smaller files are hashed whole; a base model's weights by name, size and time


@dataclass(frozen=True)
class Conversion:
    """A converted model: the file, what it was made from, and whether this call built it."""

    path: Path
    fingerprint: str
    built: bool
    seconds: float


def fingerprint(*folders: Path) -> str:
    """What a conversion depends on: every file of the model (and adapter) folders. Small files (configs,
    tokenizers, adapters) by content; large weight files by name, size and modification time."""
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted(Path(folder).iterdir()):
            if not file.is_file() or file.name.startswith("."):
                continue
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}".encode())
            if stat.st_size <= _CONTENT_HASHED_BYTES:
                digest.update(file.read_bytes())
            else:
                digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(folder: Path, expected: str) -> Path | None:
    """The conversion in `folder` if its manifest names `expected` sources and the file matches its checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        path = folder / manifest["file"]
        if manifest["fingerprint"] == expected and path.stat().st_size == manifest["bytes"]:
            if file_sha256(path) == manifest["sha256"]:
                return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def conversion_folder(base_dir: Path, adapter_dir: Path | None) -> Path:
    """`<models dir>/engine/<base name>` for the base model; `…/<base name>+<adapter folder>` for a merge."""
    name = Path(base_dir).name + (f"+{Path(adapter_dir).name}" if adapter_dir is not None else "")
    return Path(base_dir).parent / ENGINE_FOLDER / name


def engine_gguf(base_dir: Path, adapter_dir: Path | None = None) -> Conversion:
    """The f16 GGUF of the base model, or of the base with `adapter_dir` merged in: reused when verified, else
    converted (in a temporary folder, renamed into place, so a crash never leaves a half conversion)."""
    from fine_tune_dag.core.export.gguf import export_gguf
    from fine_tune_dag.core.export.merge import export_merged

    base_dir = Path(base_dir)
    sources = [base_dir] + ([Path(adapter_dir)] if adapter_dir is not None else [])
    expected = fingerprint(*sources)
    folder = conversion_folder(base_dir, adapter_dir)
    if (found := _verified(folder, expected)) is not None:
        return Conversion(found, expected, False, 0.0)
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".converting-") as scratch:
        work = Path(scratch)
        model_dir = base_dir
        if adapter_dir is not None:
            model_dir = export_merged(Path(adapter_dir), work / "merged", dtype="float32")
        (written,) = export_gguf(model_dir, work / "out", ("f16",))
        manifest = {
            "file": written.name,
            "fingerprint": expected,
            "sha256": file_sha256(written),
            "bytes": written.stat().st_size,
            "sources": [str(s) for s in sources],
        }
        (work / "out" / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        (work / "out").rename(folder)
    _prune_merged(folder.parent, keep=folder)
    return Conversion(folder / manifest["file"], expected, True, time.perf_counter() - started)


def _prune_merged(engine_dir: Path, keep: Path) -> None:
    """Drop all but the newest `KEPT_MERGED` merged conversions; base conversions stay."""
    merged = sorted(
        (f for f in engine_dir.iterdir() if f.is_dir() and "+" in f.name and f != keep),
        key=lambda f: f.stat().st_mtime,
        reverse=True,
    )
    for old in merged[KEPT_MERGED - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
