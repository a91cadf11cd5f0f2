"""An adapter folder as training wrote it: its provenance, the base model it sits on, and both loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import GenerationConfig, PreTrainedModel

from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters

TRAINING_CONFIG = "training_config.json"


def _read_provenance(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's `training_config.json`; its absence means the folder is not one `save_adapter` wrote."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / TRAINING_CONFIG
    if not config_file.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} is not an adapter folder: it needs adapter_config.json and {TRAINING_CONFIG} "
            "(as written by the lora_adapter asset)"
        )
    return json.loads(config_file.read_text())


def training_provenance(adapter_dir: Path) -> dict[str, Any]:
    """What an adapter folder records of its training (base model, dataset version, settings)."""
    return _read_provenance(adapter_dir)


def load_base_model(model_dir: Path, device: str = "auto", dtype: str = "auto") -> PreTrainedModel:
    """The model an adapter sits on, in eval mode: alone it answers as before fine-tuning, for comparison."""
    device = select_device(device)
    return load_causal_lm(Path(model_dir), device, select_dtype(dtype, device)).eval()


def adapter_base_dir(adapter_dir: Path) -> Path:
    """The folder of the base model an adapter was trained on, from its recorded provenance."""
    adapter_dir = Path(adapter_dir)
    provenance = _read_provenance(adapter_dir)
    base_path = provenance.get("base_model_path")
    if not base_path or not (Path(base_path) / "config.json").is_file():
        raise FileNotFoundError(
            f"the base model of adapter {adapter_dir} ({provenance.get('base_model', 'not recorded')}) is not at "
            f"{base_path}: restore it there (materialize the base_model asset again for a bundled or Hub model)"
        )
    return Path(base_path)


def load_adapter_model(adapter_dir: Path, device: str = "auto", dtype: str = "auto") -> tuple[PeftModel, Any]:
    """Base model from the adapter's recorded provenance, adapter on top, in eval mode.

    The tokenizer comes from the adapter folder: it is the one training rendered prompts with.
    """
    base_path = adapter_base_dir(adapter_dir)
    model = with_adapters(load_base_model(base_path, device, dtype), {"default": adapter_dir})
    return model, load_tokenizer(adapter_dir)


GENERATION_CONFIG = "generation_config.json"  # transformers' own file name, so other tools find it


def save_generation_settings(folder: Path, settings: GenerationSettings) -> Path:
    """`settings` as a Hugging Face `generation_config.json`, which transformers and other tools read.

    Greedy settings leave temperature and top_p out (transformers refuses to save sampling flags without
    sampling), so their top_p reads back as the default. Other tools apply `no_repeat_ngram_size` to the
    prompt too."""
    sampling = settings.temperature > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=settings.temperature if sampling else None,
        top_p=settings.top_p if sampling else None,
        max_new_tokens=settings.max_new_tokens,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        seed=settings.seed,  # not a transformers flag: kept in the file for `load_generation_settings`
    )
    config.save_pretrained(folder)
    return Path(folder) / GENERATION_CONFIG


def load_generation_settings(folder: Path) -> GenerationSettings:
    """The settings saved in `folder`; the defaults for a folder without them (adapters saved before they were).
    A flag the file leaves out means what it means to transformers: no top_p, temperature 1."""
    defaults = GenerationSettings()
    if not (Path(folder) / GENERATION_CONFIG).is_file():
        return defaults
    config = GenerationConfig.from_pretrained(folder)
    sampling = bool(config.do_sample)
    return GenerationSettings(
        max_new_tokens=config.max_new_tokens or defaults.max_new_tokens,
        temperature=(config.temperature or 1.0) if sampling else 0.0,
        top_p=(config.top_p or 1.0) if sampling else defaults.top_p,
        no_repeat_ngram_size=config.no_repeat_ngram_size or 0,
        seed=getattr(config, "seed", defaults.seed),
    )
