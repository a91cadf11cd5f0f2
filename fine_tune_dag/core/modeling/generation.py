"""Batched generation for decoder-only models: left padding, KV cache, stop at EOS or a stop string per sequence;
and the decoding settings saved with each adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.cache_utils import DynamicLayer

GENERATION_CONFIG = "generation_config.json"  # transformers' own file name, so other tools find it


@dataclass(frozen=True)
class GenerationSettings:
    """How an adapter answers unless told otherwise, saved beside it. Greedy decoding with no repetition
    control and a long limit made small models repeat one sentence until the limit; these defaults do not."""

    max_new_tokens: int = field(
        default=160, metadata={"help": "answer length limit in tokens: a note's, not an essay's"}
    )
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0: greedy"})
    top_p: float = field(default=0.9, metadata={"help": "sample from the smallest token set with this probability"})
    no_repeat_ngram_size: int = field(
        default=3,  # 6 let a 135M model loop in a third of its notes ("I looked at the …" with one word changed)
        metadata={"help": "no run of this many tokens twice in the answer (the prompt may be quoted); 0: off"},
    )
    seed: int = field(default=0, metadata={"help": "seeds sampling: the same question and settings, the same answer"})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"generation settings out of range: {self} (max_new_tokens >= 1, temperature >= 0, "
                "0 < top_p <= 1, no_repeat_ngram_size >= 0)"
            )


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


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding would put pad tokens between prompt and continuation; decoder-only models need left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    return input_ids, attention


class _InContinuation(StoppingCriteria):
    """A stop string must lie wholly in the generated text: transformers' own criterion also matches one that
    starts in the prompt (the chat template's trailing newline and a generated "\\n" would end on "\\n\\n" at
    once), and then the text cut at the stop string would not contain it."""

    def __init__(self, inner: StopStringCriteria, prompt_width: int) -> None:
        self.inner, self.prompt_width = inner, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return self.inner(input_ids[:, self.prompt_width :], scores, **kwargs)


class _NoRepeatInContinuation(LogitsProcessor):
    """transformers' n-gram ban over the generated text alone: over the whole sequence it would also forbid
    repeating the prompt, and a retrieval prompt's passages and examples are there to be quoted."""

    def __init__(self, ngram_size: int, prompt_width: int) -> None:
        self.inner, self.prompt_width = NoRepeatNGramLogitsProcessor(ngram_size), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.prompt_width :], scores)


def decoding_kwargs(
    tokenizer: Any, prompt_width: int, temperature: float, top_p: float, no_repeat_ngram_size: int
) -> dict[str, Any]:
    """The `model.generate` arguments that choose each next token, for rows whose (padded) prompt takes the
    first `prompt_width` positions: one place, so a streamed answer is the batched one token for token."""
    sampling = temperature > 0
    ban = [_NoRepeatInContinuation(no_repeat_ngram_size, prompt_width)] if no_repeat_ngram_size > 0 else []
    return {
        "do_sample": sampling,
        "temperature": temperature if sampling else None,
        "top_p": top_p if sampling else None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "logits_processor": LogitsProcessorList(ban),
    }


class StopStrings:
    """Per-row stopping at any of `stop_strings` for `model.generate`. Built once per call site: matching
    the strings against the vocabulary takes a good fraction of a second even when transformers has cached it."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        self.strings = tuple(s for s in stop_strings if s)
        self._inner = StopStringCriteria(tokenizer, list(self.strings)) if self.strings else None

    def after(self, prompt_width: int) -> StoppingCriteriaList:
        """Criteria for rows whose (padded) prompt takes the first `prompt_width` positions."""
        if self._inner is None:
            return StoppingCriteriaList()
        return StoppingCriteriaList([_InContinuation(self._inner, prompt_width)])


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the first stop string (a stop string's last token may carry characters past it)."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut]


def continuation_text(tokenizer: Any, tokens: Sequence[int] | torch.Tensor, stop_strings: Sequence[str]) -> str:
    """What the caller sees of one row's generated ids: nothing from its first EOS on (the padding after it
    included, and whether or not the tokenizer flags EOS as special), no special tokens, cut at the first
    stop string, outer whitespace stripped."""
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop_strings).strip()


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of ascending `lengths` in runs that pad little when computed together: a run ends where a
    length passes its first by more than an eighth and 32 tokens (short prompts stay in one batched pass)."""
    groups: list[list[int]] = []
    for index, length in enumerate(lengths):
        if groups and length <= lengths[groups[-1][0]] * 9 // 8 + 32:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def prefilled_cache(model: Any, prompts: Sequence[Sequence[int]], pad_id: int) -> DynamicCache | None:
    """The KV cache of every prompt but its last token, left-padded as `left_pad` pads the prompts, but
    computed group by group of similar lengths: in one padded pass each prompt costs as much as the longest.

    The positions are those `generate` gives left-padded rows (counted from each row's first real token),
    so it goes on from here as if it had computed the prompts itself. None (let `generate` compute them in
    one pass) when the lengths form a single group or the model's cache is not a plain one per layer
    (sliding windows and the like)."""
    width = max(len(p) for p in prompts)
    rows = sorted((i for i, p in enumerate(prompts) if len(p) > 1), key=lambda i: len(prompts[i]))
    groups = [[rows[j] for j in group] for group in length_groups([len(prompts[i]) for i in rows])]
    if len(groups) < 2 or not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
        return None
    device = next(model.parameters()).device
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for group in groups:
        input_ids, attention = left_pad([prompts[i][:-1] for i in group], pad_id)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = decoder(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            use_cache=True,
        ).past_key_values
        for layer, (keys, values, *_) in enumerate(cache):
            if len(layers) == layer:
                shape = (len(prompts), keys.shape[1], width - 1, keys.shape[3])
                layers.append((keys.new_zeros(shape), values.new_zeros(shape)))
            layers[layer][0][group, :, width - 1 - keys.shape[2] :] = keys
            layers[layer][1][group, :, width - 1 - values.shape[2] :] = values
    return DynamicCache(layers)


@torch.inference_mode()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    stop_strings: Sequence[str] = (),
    no_repeat_ngram_size: int = 0,
) -> list[str]:
    """Decode continuations of token-id prompts, batched by similar length to waste little padding (and
    prompts of quite different lengths in one batch are read in groups, see `prefilled_cache`).

    A row that reaches EOS or one of `stop_strings` is finished: from then on `generate` feeds it padding,
    and its text ends before the stop string. Sampling is seeded per call so a cached request and a fresh
    one agree. `no_repeat_ngram_size` > 0 forbids a row to repeat any run of that many of its own generated
    tokens (the prompt's are free to quote). `**asdict(GenerationSettings(...))` fills the decoding arguments.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    stops = StopStrings(tokenizer, stop_strings)
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [prompts[i] for i in rows]
        input_ids, attention = left_pad(batch, tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            past_key_values=prefilled_cache(model, batch, tokenizer.pad_token_id),
            max_new_tokens=max_new_tokens,
            stopping_criteria=stops.after(input_ids.shape[1]),
            **decoding_kwargs(tokenizer, input_ids.shape[1], temperature, top_p, no_repeat_ngram_size),
        )
        continuations = generated[:, input_ids.shape[1] :]
        for row, tokens in zip(rows, continuations):
            outputs[row] = continuation_text(tokenizer, tokens, stops.strings)
        if on_batch is not None:
            on_batch(len(rows))
    return outputs
