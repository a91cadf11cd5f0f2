"""OpenVINO GenAI on CPUs: its continuous-batching pipeline on the project's GGUF of each model version.

Prompts go in as token ids (rendered by the model's own tokenizer, as training did) and tokens come out, so
OpenVINO's tokenizer never decides what a prompt is. Inference runs in float32 by default: bfloat16 was 1.6×
faster on this machine but changed a greedy answer with the batch it ran in, and evaluation must not.
Each adapter version runs as its own merged model (see `conversion`); a bounded number stay loaded, the pinned
ones (the champion in `serve`) always.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fine_tune_dag.core.generation.base import (
    EngineChoice,
    EngineUnavailable,
    Finished,
    GenerationEngine,
    GenerationRequest,
    NGramBan,
    Running,
    row_seed,
    sample_token,
)
from fine_tune_dag.core.generation.conversion import Conversion, engine_gguf

PRECISIONS = {"f32", "bf16", "f16"}
# prompt tokens a scheduler step may read: a batch of 16 synthesis prompts (about 300 tokens each) in two steps
# rather than twenty; 428 → 456 tokens/s on them against the default 256 (bf16, this machine)
PREFILL_TOKENS_PER_STEP = 4096


def generation_config(request: GenerationRequest, eos_token_id: int) -> Any:
    """OpenVINO's config for one request: its limit, stop strings, EOS, n-gram ban and row seed."""
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = request.max_new_tokens
    config.eos_token_id = eos_token_id
    config.stop_token_ids = {eos_token_id}
    config.stop_strings = set(s for s in request.stop_strings if s)
    config.include_stop_str_in_output = True  # `texts.continuation_text` cuts, as for every engine
    config.no_repeat_ngram_size = request.decoding.no_repeat_ngram_size
    config.apply_chat_template = False
    if not request.decoding.greedy:
        config.do_sample = True
        config.temperature = request.decoding.temperature
        config.top_p = request.decoding.top_p
        config.top_k = 0
        config.rng_seed = row_seed(request.decoding.seed, request.prompt)
    return config


class _Handle(Running):
    """One request in a pipeline's running batch."""

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self._handle = handle

    def read(self) -> list[int]:
        import openvino_genai as ov

        tokens: list[int] = []
        if self._handle.can_read():
            for output in self._handle.read().values():
                tokens.extend(output.generated_ids)
                if output.finish_reason == ov.GenerationFinishReason.LENGTH:
                    self._reason = "length"
        status = self._handle.get_status()
        self._done = status != ov.GenerationStatus.RUNNING and not self._handle.can_read()
        return tokens

    def cancel(self) -> None:
        self._handle.cancel()
        self._done = True


class _Banned(Running):
    """A request whose continuation may not repeat its own n-grams. OpenVINO GenAI 2026.4 applies
    `no_repeat_ngram_size` in beam search only (greedy and sampled text repeated as if unset), so the ban is kept
    here: where the engine's next token would repeat an n-gram, the request stops, that position is chosen again
    from the model's scores without the banned tokens (`OpenVINOEngine.rechoose`), and the request goes on from
    there, its prompt and accepted tokens read again from the engine's prefix cache."""

    def __init__(self, engine: OpenVINOEngine, request: GenerationRequest) -> None:
        super().__init__()
        self._engine, self._request = engine, request
        self._ban = NGramBan(request.decoding.no_repeat_ngram_size)
        self._unread: list[int] = []
        self._handle = self._continue()

    def _continue(self) -> _Handle:
        accepted = tuple(self._ban.tokens)
        left = self._request.max_new_tokens - len(accepted)
        return self._engine.add(replace(self._request, prompt=self._request.prompt + accepted, max_new_tokens=left))

    def _accept(self, token: int) -> None:
        self._ban.add(token)
        self._unread.append(token)

    def read(self) -> list[int]:
        for token in self._handle.read():
            banned = self._ban.banned()
            if token not in banned:
                self._accept(token)
                continue
            self._handle.cancel()
            self._accept(self._engine.rechoose(self._request, self._ban.tokens, banned, self))
            if self._ban.tokens[-1] == self._engine.eos_token_id:
                self._done = True
            elif len(self._ban.tokens) >= self._request.max_new_tokens:
                self._done, self._reason = True, "length"
            else:
                self._handle = self._continue()
            break
        else:
            self._done, self._reason = self._handle.finished, self._handle.reason
        if self._done:
            self._engine.forget(self)
        tokens, self._unread = self._unread, []
        return tokens

    def cancel(self) -> None:
        self._handle.cancel()
        self._done = True
        self._engine.forget(self)


class OpenVINOEngine(GenerationEngine):
    """The base model and named adapters (folders), each loaded as a pipeline on its converted GGUF when first
    asked for; at most `max_loaded` stay loaded, `pinned` names never leave."""

    def __init__(
        self,
        base_dir: Path,
        adapters: Mapping[str, Path],
        eos_token_id: int,
        precision: str = "f32",
        max_batch: int = 16,
        cache_gb: float = 1.0,
        max_loaded: int = 3,
        pinned: Sequence[str | None] = (None,),
        scorer: Callable[[], Any] | None = None,
    ) -> None:
        """`scorer()`: the model in torch (a `TransformersEngine`, loaded when first asked for), whose next-token
        scores are read only where the n-gram ban overrules the engine's choice (see `_Banned`)."""
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO inference precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        try:
            import openvino_genai  # noqa: F401
        except ImportError as error:
            raise EngineUnavailable(f"OpenVINO GenAI cannot run {base_dir}: {error}") from error
        self.base_dir, self._adapters = Path(base_dir), {n: Path(p) for n, p in adapters.items()}
        self.eos_token_id, self.precision = eos_token_id, precision
        self.max_batch, self.cache_gb = max_batch, cache_gb
        self.max_loaded, self.pinned = max(max_loaded, len(set(pinned))), set(pinned)
        self.choice = EngineChoice("openvino", "OpenVINO GenAI", precision)
        self.conversions: dict[str | None, Conversion] = {}
        self._pipelines: OrderedDict[str | None, Any] = OrderedDict()
        self._running: dict[str | None, int] = {}
        self._ids = itertools.count()
        self._scorer = scorer
        self._scoring: Any = None

    @property
    def adapters(self) -> Mapping[str, Path]:
        return dict(self._adapters)

    def add_adapter(self, name: str, folder: Path) -> None:
        """A new adapter version (a new champion in `serve`); a name given again points at its new folder."""
        self._adapters[name] = Path(folder)
        self._pipelines.pop(name, None)

    def convert(self, adapter: str | None = None) -> Conversion:
        """The GGUF this engine runs for `adapter` (None: the base model), converted if not verified on disk."""
        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"no adapter named {adapter!r}; known: {sorted(self._adapters)}")
        try:
            conversion = engine_gguf(self.base_dir, self._adapters.get(adapter) if adapter else None)
        except (ValueError, OSError, KeyError, RuntimeError) as error:
            model = self._adapters[adapter] if adapter else self.base_dir
            raise EngineUnavailable(
                f"OpenVINO GenAI cannot run {model}: the GGUF conversion failed: {error}"
            ) from error
        self.conversions[adapter] = conversion
        return conversion

    def pipeline(self, adapter: str | None) -> Any:
        if adapter in self._pipelines:
            self._pipelines.move_to_end(adapter)
            return self._pipelines[adapter]
        import openvino_genai as ov

        conversion = self.convert(adapter)
        scheduler = ov.SchedulerConfig()
        scheduler.cache_size = max(1, round(self.cache_gb))
        scheduler.max_num_seqs = self.max_batch
        scheduler.enable_prefix_caching = True
        scheduler.max_num_batched_tokens = PREFILL_TOKENS_PER_STEP
        try:
            pipe = ov.ContinuousBatchingPipeline(
                str(conversion.path), scheduler, "CPU", {"INFERENCE_PRECISION_HINT": self.precision}
            )
        except RuntimeError as error:
            raise EngineUnavailable(f"OpenVINO GenAI cannot run {conversion.path}: {error}") from error
        self._pipelines[adapter] = pipe
        self._evict()
        return pipe

    def _evict(self) -> None:
        for name in list(self._pipelines):
            if len(self._pipelines) <= self.max_loaded:
                return
            if name not in self.pinned and not self._running.get(name):
                del self._pipelines[name]

    def add(self, request: GenerationRequest) -> _Handle:
        """`request` added to its adapter's pipeline as it is."""
        import openvino as ov

        pipe = self.pipeline(request.adapter)
        self._running[request.adapter] = self._running.get(request.adapter, 0) + 1
        ids = ov.Tensor(np.array([request.prompt], dtype=np.int64))
        return _Handle(pipe.add_request(next(self._ids), ids, generation_config(request, self.eos_token_id)))

    def submit(self, request: GenerationRequest) -> Running:
        if request.decoding.no_repeat_ngram_size > 0:
            return _Banned(self, request)
        return self.add(request)

    def rechoose(self, request: GenerationRequest, accepted: Sequence[int], banned: set[int], key: object) -> int:
        """The token the model chooses after the prompt and `accepted` when `banned` are out of the running:
        the best one (greedy), or one drawn from what is left, seeded by the request's seed and that prefix.
        `key` names the request, whose prefix the torch model keeps between calls until `forget(key)`."""
        if self._scorer is None:
            raise EngineUnavailable(
                f"no_repeat_ngram_size needs the model's scores, and none were given for {self.base_dir}"
            )
        if self._scoring is None:
            self._scoring = self._scorer()
        if request.adapter is not None and request.adapter not in self._scoring.adapters:  # one `serve` added since
            self._scoring.add_adapter(request.adapter, self._adapters[request.adapter])
        prefix = [*request.prompt, *accepted]
        scores = np.asarray(self._scoring.next_token_scores(prefix, request.adapter, key), dtype=np.float64)
        scores[list(banned)] = -np.inf
        if request.decoding.greedy:
            return int(np.argmax(scores))
        return sample_token(scores, request.decoding, row_seed(request.decoding.seed, prefix))

    def forget(self, key: object) -> None:
        if self._scoring is not None:
            self._scoring.forget(key)

    def step(self) -> None:
        for adapter, pipe in list(self._pipelines.items()):
            if pipe.has_non_finished_requests():
                pipe.step()
            else:
                self._running[adapter] = 0

    def generate(
        self, requests: Sequence[GenerationRequest], on_finished: Callable[[int], None] | None = None
    ) -> list[Finished]:
        """All requests of one adapter go to its pipeline together; the scheduler keeps `max_batch` decoding
        and starts the next as one finishes."""
        results = [Finished() for _ in requests]
        for adapter in dict.fromkeys(r.adapter for r in requests):
            running = {i: self.submit(r) for i, r in enumerate(requests) if r.adapter == adapter}
            pipe = self.pipeline(adapter)
            while running:
                if pipe.has_non_finished_requests():
                    pipe.step()
                done = 0
                for index in list(running):
                    results[index].tokens.extend(running[index].read())
                    if running[index].finished:
                        results[index].reason = running.pop(index).reason
                        done += 1
                if done and on_finished is not None:
                    on_finished(done)
            self._running[adapter] = 0
        return results

    def close(self) -> None:
        self._pipelines.clear()
