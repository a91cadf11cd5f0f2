"""A plain transformers model with an adapter folded in."""

from __future__ import annotations

import shutil
from pathlib import Path

from fine_tune_dag.core.models.adapters import (
    TRAINING_CONFIG,
    load_adapter_model,
    load_generation_settings,
    save_generation_settings,
)


def export_merged(adapter_dir: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """A plain transformers model with the adapter folded in, for tools that do not read peft adapters.

    float32 by default: merging into half-precision weights rounds away part of the small LoRA update.
    Written to a sibling temporary folder and renamed, so a crash never leaves a half model.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty: not overwriting it, choose another folder")
    model, tokenizer = load_adapter_model(adapter_dir, device="cpu", dtype=dtype)
    merged = model.merge_and_unload()
    tmp = out_dir.with_name(f"{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copy2(adapter_dir / TRAINING_CONFIG, tmp / TRAINING_CONFIG)
        save_generation_settings(tmp, load_generation_settings(adapter_dir))  # the adapter's defaults, not the base's
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    tmp.rename(out_dir)
    return out_dir
