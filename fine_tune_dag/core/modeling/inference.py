"""Use a trained adapter outside Dagster: load it, stream answers, export a merged model, share it on the Hub.

Prompts go through `chat.render_prompt_ids`, as in training and evaluation, so an answer streamed here
is the answer the evaluation scored.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from huggingface_hub import HfApi, ModelCardData, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import PeftModel
from transformers import PreTrainedModel

from fine_tune_dag.core.generation.base import Decoding, GenerationRequest
from fine_tune_dag.core.modeling.chat import DEFAULT_SYSTEM_PROMPT, render_prompt_ids
from fine_tune_dag.core.modeling.generation import as_engine, load_generation_settings, save_generation_settings
from fine_tune_dag.core.modeling.models import (
    load_causal_lm,
    load_tokenizer,
    select_device,
    select_dtype,
    with_adapters,
)
from fine_tune_dag.core.privacy.findings import MODEL_CARD_NOTICE
from fine_tune_dag.core.retrieval.index import RetrievedPassage
from fine_tune_dag.core.retrieval.prompt import retrieval_messages

TRAINING_CONFIG = "training_config.json"
_TRUTHY = {"1", "ON", "YES", "TRUE"}


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


def _strip_outer_whitespace(pieces: Iterable[str]) -> Iterator[str]:
    """`generate_batch` strips its answers; trailing whitespace is held back until more text follows, so the
    stream joins to exactly the same string."""
    held, started = "", False
    for piece in pieces:
        text = held + (piece if started else piece.lstrip())
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            started = True
            yield body


def stream_answer(
    model: Any,
    tokenizer: Any,
    question: str,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int = 0,
    passages: Sequence[RetrievedPassage] = (),
    adapter: str | None = None,
) -> Iterator[str]:
    """Answer text piece by piece as it is generated, for a terminal or chat UI, from an engine (`adapter` names
    the adapter that answers) or a loaded model.

    Same prompt ids and engine as `generate_batch` (`**asdict(GenerationSettings(...))` fills the same
    arguments), so with the same settings and seed the pieces join to its answer. Closing this iterator
    early stops the generation. With `passages` (retrieval), they are in context before the question.
    """
    prompt = render_prompt_ids(tokenizer, retrieval_messages(system_prompt, question, passages))
    decoding = Decoding(temperature, top_p, no_repeat_ngram_size, seed)
    engine = as_engine(model, tokenizer, 1)
    pieces = engine.stream(GenerationRequest(tuple(prompt), max_new_tokens, decoding, adapter=adapter))
    with closing(pieces):
        yield from _strip_outer_whitespace(_new_text(tokenizer, (token for piece in pieces for token in piece)))


def _new_text(tokenizer: Any, tokens: Iterable[int]) -> Iterator[str]:
    """The text each token adds, up to EOS; held back while it ends in half a character (a byte-level
    token can carry part of one) unless the answer ends there."""
    ids: list[int] = []
    sent = ""
    for token in tokens:
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            yield text[len(sent) :]
            sent = text
    yield tokenizer.decode(ids, skip_special_tokens=True)[len(sent) :]


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
