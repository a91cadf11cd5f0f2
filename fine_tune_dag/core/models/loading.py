"""Loading a resolved model folder: the device and precision, the weights converted in chunks, adapters on top."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


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
