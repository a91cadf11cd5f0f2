"""Sharing an adapter on the Hugging Face Hub: its model card and the upload."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCardData, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.models.adapters import _read_provenance
from fine_tune_dag.core.privacy.findings import MODEL_CARD_NOTICE

_TRUTHY = {"1", "ON", "YES", "TRUE"}


def _is_hub_model_id(reference: str) -> bool:
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True


def model_card(adapter_dir: Path, metrics: dict[str, float], dataset_version: str, base_model: str) -> str:
    """A Hugging Face model card: metadata the Hub indexes, and what a reader needs to prompt the adapter right.

    `base_model` goes into the metadata only when it is a Hub model id: the Hub rejects a card whose
    `base_model` is a local path or a `bundled:` reference.
    """
    adapter_dir = Path(adapter_dir)
    provenance = _read_provenance(adapter_dir)
    settings = provenance.get("settings", {})
    on_hub = _is_hub_model_id(base_model)
    metadata = ModelCardData(
        library_name="peft",
        base_model=base_model if on_hub else None,
        pipeline_tag="text-generation",
        tags=["lora", "fine_tune_dag"],
    )
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in metrics.items())
    hyperparameters = ", ".join(
        f"{key}={settings[key]}"
        for key in ("lora_r", "lora_alpha", "learning_rate", "epochs", "max_steps", "max_seq_length")
        if key in settings
    )
    base_note = (
        ""
        if on_hub
        else f"\n`{base_model}` is not a Hugging Face Hub model id: load the same base weights from where you have them.\n"
    )
    return f"""---
{metadata.to_yaml()}
---

# {adapter_dir.name}

A LoRA adapter for `{base_model}`, fine-tuned by fine_tune_dag on question-answer pairs drawn from one
person's notes, so that the model answers in their voice, from what they have written.

**Personal data.** {MODEL_CARD_NOTICE}

- Dataset version: `{dataset_version}`
- Training examples: {provenance.get("examples", "not recorded")}
- Hyperparameters: {hyperparameters}

## Evaluation

Held-out questions from the same notes, answers compared with the reference answers.

| metric | value |
|---|---|
{rows}

## How to use it

Prompt with the system prompt the training data used (fine_tune_dag's default:
"{DEFAULT_SYSTEM_PROMPT}") and the tokenizer's chat template, exactly as below; another template or
system prompt gives the base model's behaviour back.
{base_note}
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

adapter = "<this repository id, or the local adapter folder>"
tokenizer = AutoTokenizer.from_pretrained(adapter)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({json.dumps(base_model)}), adapter).eval()

messages = [
    {{"role": "system", "content": {json.dumps(DEFAULT_SYSTEM_PROMPT)}}},
    {{"role": "user", "content": "What do you think about ...?"}},
]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```
"""


def _hub_offline() -> bool:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; a variable set later counts too."""
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUTHY


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The "cannot connect" errors of each HTTP client huggingface_hub has used: requests (<1.0), httpx (1.x),
    httpx2 (2.x); imported only when an upload fails."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]  # includes OfflineModeIsEnabled
    for module_name, names in (
        ("requests.exceptions", ("ConnectionError", "Timeout")),
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, name) for name in names]
    return tuple(found)


def push_adapter(
    adapter_dir: Path, repo_id: str, token: str, card: str, api: HfApi | None = None, private: bool = True
) -> str:
    """Upload the adapter folder with `card` as its README.md; returns the repository URL.

    The card goes into a temporary copy, so the versioned adapter folder stays exactly as trained.
    Private by default: the folder's provenance names local paths.
    """
    adapter_dir = Path(adapter_dir)
    _read_provenance(adapter_dir)
    not_pushed = f"adapter not pushed; it stays at {adapter_dir}"
    if _hub_offline():
        raise RuntimeError(f"cannot reach the Hugging Face Hub (HF_HUB_OFFLINE is set): {not_pushed}")
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="fine_tune_dag-push-") as staging:
        folder = Path(staging) / adapter_dir.name
        shutil.copytree(adapter_dir, folder)
        (folder / "README.md").write_text(card)
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                token=token,
                commit_message=f"Upload adapter {adapter_dir.name}",
            )
        except _connection_errors() as error:
            detail = str(error).replace(token, "***") if token else str(error)
            # `from None`: the chained original could carry the token into a logged traceback.
            raise RuntimeError(
                f"cannot reach the Hugging Face Hub ({type(error).__name__}: {detail}): {not_pushed}"
            ) from None
    return str(url)
