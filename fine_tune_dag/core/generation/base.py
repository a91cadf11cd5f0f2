"""What every generation engine offers, and which engine runs: torch-free, so settings and the command line read
it without loading a model.

Callers render prompts to token ids with the model's own tokenizer (as training did) and hand them to an engine;
the engine returns each prompt's new token ids, cut at EOS, at a stop string or at the prompt's token limit.
Texts are made from those ids in one place (`texts.continuation_text`), whichever engine produced them.
"""

from __future__ import annotations

import hashlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

EngineName = Literal["openvino", "vllm", "transformers"]
EngineSetting = Literal["auto", "openvino", "vllm", "transformers"]
ENGINE_PACKAGES: dict[str, str] = {"openvino": "openvino_genai", "vllm": "vllm", "transformers": "transformers"}


class EngineUnavailable(RuntimeError):
    """An engine that cannot run this model here: not installed, a conversion that failed, an architecture it
    does not know. The message names the model and the reason; the caller falls back and says so."""


@dataclass(frozen=True)
class Decoding:
    """How each next token is chosen. Sampling is seeded by `seed` and the row's prompt (`row_seed`), so a row's
    answer depends on neither the batch it runs in nor its place there."""

    temperature: float = 0.0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's work: its token ids, its own token limit, what ends it, and the adapter that answers
    (None: the base model)."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    decoding: Decoding = Decoding()
    stop_strings: tuple[str, ...] = ()
    adapter: str | None = None


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs, and why: shown in run metadata, so a fallback is never silently slower."""

    engine: EngineName
    reason: str
    precision: str = ""

    def metadata(self) -> dict[str, str]:
        return {
            "generation_engine": self.engine,
            "generation_engine_reason": self.reason,
            "generation_precision": self.precision,
        }


def row_seed(seed: int, prompt: Sequence[int]) -> int:
    """A sampling seed of `seed` and the prompt alone: the same request draws the same answer in any batch."""
    digest = hashlib.blake2b(f"{seed}:{','.join(map(str, prompt))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 33  # 31 bits: every engine's seed type holds it


class NGramBan:
    """What a continuation may not take next: a token that would repeat one of its own runs of `size` tokens.
    The prompt is free to quote. Kept incrementally, token by token, since it is asked at every step."""

    def __init__(self, size: int, tokens: Sequence[int] = ()) -> None:
        self.size = size
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], set[int]] = {}
        for token in tokens:
            self.add(token)

    def _tail(self) -> tuple[int, ...]:
        return tuple(self.tokens[len(self.tokens) - self.size + 1 :]) if self.size > 1 else ()

    def banned(self) -> set[int]:
        if self.size <= 0 or len(self.tokens) < self.size - 1:
            return set()
        return self._next.get(self._tail(), set())

    def add(self, token: int) -> None:
        if self.size > 0 and len(self.tokens) >= self.size - 1:
            self._next.setdefault(self._tail(), set()).add(token)
        self.tokens.append(token)


def sample_token(scores: Any, decoding: Decoding, seed: int) -> int:
    """One token drawn from `scores` (numpy, banned ones at -inf) at the request's temperature and top-p."""
    import numpy as np

    logits = np.asarray(scores, dtype=np.float64) / decoding.temperature
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities)
    kept = order[: int(np.searchsorted(np.cumsum(probabilities[order]), decoding.top_p)) + 1]
    return int(np.random.default_rng(seed).choice(kept, p=probabilities[kept] / probabilities[kept].sum()))


def token_limits(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """One limit for each of `count` prompts: the same for all, or each prompt's own."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    if len(max_new_tokens) != count:
        raise ValueError(f"{len(max_new_tokens)} token limits for {count} prompts")
    return list(max_new_tokens)


def installed(engine: str) -> bool:
    return importlib.util.find_spec(ENGINE_PACKAGES[engine]) is not None


def choose_engine(setting: EngineSetting, device: str, is_installed: Callable[[str], bool] = installed) -> EngineChoice:
    """`auto`: vLLM on CUDA and OpenVINO GenAI on CPUs where installed, else transformers' `generate` (MPS, or
    neither engine installed). A named engine that is not installed is refused with the package to install."""
    if setting not in ("auto", *ENGINE_PACKAGES):
        raise ValueError(f"generation engine must be one of auto, {', '.join(ENGINE_PACKAGES)}; not {setting!r}")
    if setting != "auto":
        if not is_installed(setting):
            extra = {"vllm": "pip install 'fine-tune-dag[vllm]'", "openvino": "pip install openvino-genai"}
            raise EngineUnavailable(f"generation engine {setting} is not installed: {extra.get(setting, '')}")
        return EngineChoice(setting, "chosen in settings")  # type: ignore[arg-type]
    if device.startswith("cuda"):
        if is_installed("vllm"):
            return EngineChoice("vllm", "auto: vLLM on CUDA")
        return EngineChoice("transformers", "auto: CUDA without vLLM (pip install 'fine-tune-dag[vllm]')")
    if device == "cpu":
        if is_installed("openvino"):
            return EngineChoice("openvino", "auto: OpenVINO GenAI on the CPU")
        return EngineChoice("transformers", "auto: CPU without OpenVINO GenAI (pip install openvino-genai)")
    return EngineChoice("transformers", f"auto: no engine for {device}")


@dataclass
class Finished:
    """One request's new token ids, and why it ended: "stop" (EOS or a stop string) or "length"."""

    tokens: list[int] = field(default_factory=list)
    reason: str = "length"


class Running(ABC):
    """A request in an engine's running batch: `read` takes the tokens chosen since the last read; `finished`
    and `reason` ("stop" or "length") are set by the engine's side as the request ends."""

    def __init__(self) -> None:
        self._done, self._reason = False, "stop"

    @abstractmethod
    def read(self) -> list[int]: ...

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def reason(self) -> str:
        return self._reason

    @abstractmethod
    def cancel(self) -> None:
        """Stop the request and let go of its cache."""


class GenerationEngine(ABC):
    """A base model with named adapters, generating for token-id prompts. Subclasses hold the engine's own
    objects; everything else (texts, seeds, limits) is decided here and in `texts`, once for every engine."""

    choice: EngineChoice
    eos_token_id: int

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], on_finished: Callable[[int], None] | None = None
    ) -> list[Finished]:
        """Every request's new tokens, in the order asked; `on_finished(n)` hears as requests finish."""

    @abstractmethod
    def submit(self, request: GenerationRequest) -> Running:
        """A request that joins the running batch; `step` advances it with the others."""

    @abstractmethod
    def step(self) -> None:
        """One decoding step for every running request (an engine without a shared batch waits for each)."""

    def stream(self, request: GenerationRequest) -> Iterator[list[int]]:
        """New token ids as they are chosen; closing the iterator stops the request."""
        running = self.submit(request)
        try:
            while not running.finished:
                self.step()
                if new := running.read():
                    yield new
            if new := running.read():
                yield new
        finally:
            if not running.finished:
                running.cancel()

    @abstractmethod
    def add_adapter(self, name: str, folder: Path) -> None:
        """Another adapter (a new champion in `serve`) that requests may name from now on."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the loaded models."""


PRECISION_OF_DTYPE = {"auto": "bf16", "bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def engine_precision(dtype: str) -> str:
    """The engine's inference precision for a stage's torch `dtype` setting. `auto` is bfloat16 (1.5× float32's
    tokens/s on this machine's CPU, bench/generation.py); float32 where answers must match torch's and not move
    with the batch (evaluation's default). A CPU without bfloat16 units computes in float32 either way."""
    return PRECISION_OF_DTYPE.get(dtype, "f32")


@dataclass(frozen=True)
class EngineSettings:
    """Which engine generates, and how it holds its batch: one value for every stage, set once
    (FINE_TUNE_DAG_GENERATION_ENGINE, or the `models` resource's `generation_engine`)."""

    engine: EngineSetting = field(
        default="auto", metadata={"help": "auto (OpenVINO GenAI on CPUs, vLLM on CUDA), openvino, vllm or transformers"}
    )
    precision: str = field(
        default="f32", metadata={"help": "OpenVINO's inference precision: f32 keeps greedy answers batch-invariant"}
    )
    max_batch: int = field(default=16, metadata={"help": "requests decoding together"})
