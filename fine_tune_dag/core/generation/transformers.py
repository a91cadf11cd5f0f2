"""transformers' own `generate`, the fallback: for MPS, and wherever neither OpenVINO GenAI nor vLLM is installed.

Greedy rows decode in left-padded batches of similar length; a sampled row decodes alone, its generator seeded by
`row_seed`, so its text depends on seed and prompt only. The n-gram ban covers the continuation, as the engines'
does, so an answer may quote its prompt. A request that joins a running batch decodes alone on a thread of its own.
"""

from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from fine_tune_dag.core.generation.base import (
    EngineChoice,
    Finished,
    GenerationEngine,
    GenerationRequest,
    NGramBan,
    Running,
    row_seed,
)
from fine_tune_dag.core.models.memory_budget import (
    MemoryBudget,
    ModelShape,
    available_bytes,
    decoding_bytes,
    fitting_rows,
)


class ContinuationNGramBan(LogitsProcessor):
    """No run of `size` tokens twice in what was generated after `prompt_width` (the prompt may be quoted)."""

    def __init__(self, size: int, prompt_width: int) -> None:
        self.size, self.prompt_width = size, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, generated in enumerate(input_ids[:, self.prompt_width :].tolist()):
            if banned := NGramBan(self.size, generated).banned():
                scores[row, list(banned)] = -float("inf")
        return scores


class ContinuationStops(StoppingCriteria):
    """A row ends once one of `stops` lies wholly in what it generated after `prompt_width` (a stop string that
    begins in the prompt is not a stop)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :])
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class _Cancelled(StoppingCriteria):
    def __init__(self) -> None:
        self.flag = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


class _Threaded(Running, BaseStreamer):
    """A single request generating on its own thread; `step` waits for its next token."""

    def __init__(self, engine: TransformersEngine, request: GenerationRequest) -> None:
        super().__init__()
        self._queue: queue.Queue = queue.Queue()
        self._tokens: list[int] = []
        self._prompt_seen = False
        self.cancelled = _Cancelled()
        self._thread = threading.Thread(target=self._run, args=(engine, request), daemon=True)
        self._thread.start()

    def _run(self, engine: TransformersEngine, request: GenerationRequest) -> None:
        try:
            with engine.lock:
                finished = engine.generate_rows([request], streamer=self, stopping=self.cancelled)[0]
            self._queue.put(("end", finished.reason))
        except BaseException as error:  # noqa: BLE001 - the reader re-raises it
            self._queue.put(("error", error))

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate hands the streamer the prompt first
            self._prompt_seen = True
            return
        self._queue.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        pass

    def wait(self) -> None:
        if self._done:
            return
        kind, payload = self._queue.get()
        if kind == "tokens":
            self._tokens.extend(payload)
        elif kind == "end":
            self._done, self._reason = True, payload
        else:
            self._done = True
            raise payload

    def read(self) -> list[int]:
        tokens, self._tokens = self._tokens, []
        return tokens

    def cancel(self) -> None:
        self.cancelled.flag.set()
        self._done = True


class TransformersEngine(GenerationEngine):
    """A loaded transformers model (a `PeftModel` when adapters are named), generating with `generate`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 8,
        reason: str = "transformers' generate",
        memory_budget: MemoryBudget | None = None,
        as_loaded: bool = False,
    ) -> None:
        """`as_loaded`: a request without an adapter runs the model as the caller set it (its active adapter on),
        not the base model with adapters off."""
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.as_loaded = as_loaded
        self.memory_budget = memory_budget
        self.eos_token_id = tokenizer.eos_token_id
        self.choice = EngineChoice("transformers", reason, str(model.dtype).removeprefix("torch."))
        self._running: list[_Threaded] = []
        self.lock = threading.Lock()  # one `generate` at a time: adapters are switched on the shared model
        self._prefixes: dict[object, tuple[str | None, list[int], Any]] = {}  # key: adapter, ids, their cache

    def _rows_at_once(self, requests: Sequence[GenerationRequest]) -> int:
        """`max_batch`, or fewer where that many rows of the longest prompt would not fit the memory budget."""
        if self.memory_budget is None or not requests:
            return self.max_batch
        shape = ModelShape.of(self.model.config)
        longest, limit = max(len(r.prompt) for r in requests), max(r.max_new_tokens for r in requests)
        return fitting_rows(
            self.max_batch,
            lambda rows: decoding_bytes(shape, rows, longest, limit, self.model.dtype.itemsize),
            available_bytes(self.memory_budget),
        )

    @property
    def adapters(self) -> dict[str, Any]:
        return dict(getattr(self.model, "peft_config", {}))

    def _weights(self, adapter: str | None) -> ContextManager:
        """The base model (adapters off) or one named adapter."""
        if not hasattr(self.model, "peft_config") or (adapter is None and self.as_loaded):
            if adapter is not None:
                raise KeyError(f"no adapter named {adapter!r}: the model has none")
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if adapter not in self.model.peft_config:
            raise KeyError(f"no adapter named {adapter!r}; known: {sorted(self.model.peft_config)}")
        self.model.set_adapter(adapter)
        return nullcontext()

    @torch.inference_mode()
    def next_token_scores(self, ids: Sequence[int], adapter: str | None, key: object = None) -> Any:
        """The model's scores for the token after `ids` (numpy float32), under `adapter` (None: the base model).
        With a `key`, the keys and values of `ids` are kept until `forget(key)`, so the next call for the same
        key, on `ids` grown, reads only the new tokens (an engine asks again and again as one answer grows)."""
        ids = list(ids)
        kept = self._prefixes.pop(key, None) if key is not None else None
        if kept is None or kept[0] != adapter or ids[: len(kept[1])] != kept[1] or len(ids) == len(kept[1]):
            kept = (adapter, [], DynamicCache(config=self.model.config))
        _, seen, cache = kept
        with self.lock, self._weights(adapter):
            new = torch.tensor([ids[len(seen) :]], device=self.model.device)
            logits = self.model(input_ids=new, cache=cache, use_cache=True, logits_to_keep=1).logits
        if key is not None:
            self._prefixes[key] = (adapter, ids, cache)
        return logits[0, -1].float().cpu().numpy()

    def forget(self, key: object) -> None:
        self._prefixes.pop(key, None)

    @torch.inference_mode()
    def generate_rows(
        self, requests: Sequence[GenerationRequest], streamer: Any = None, stopping: Any = None
    ) -> list[Finished]:
        """One `generate` call for requests that share adapter, decoding and stop strings."""
        first = requests[0]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, request in enumerate(requests):
            ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt) :] = 1
        device = self.model.device
        processors = LogitsProcessorList()
        if first.decoding.no_repeat_ngram_size:
            processors.append(ContinuationNGramBan(first.decoding.no_repeat_ngram_size, width))
        stopping_criteria = [stopping] if stopping is not None else []
        if first.stop_strings:
            stopping_criteria.append(ContinuationStops(self.tokenizer, first.stop_strings, width))
        sampling = not first.decoding.greedy
        generator = nullcontext()
        if sampling:
            generator = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with self._weights(first.adapter), generator:
            if sampling:
                torch.manual_seed(row_seed(first.decoding.seed, first.prompt))
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                # a fresh config: a merged model's folder carries its adapter's decoding defaults (an n-gram ban,
                # sampling), which would otherwise apply on top of this request's
                generation_config=GenerationConfig(
                    max_new_tokens=max(r.max_new_tokens for r in requests),
                    do_sample=sampling,
                    temperature=first.decoding.temperature if sampling else None,
                    top_p=first.decoding.top_p if sampling else None,
                    top_k=0 if sampling else None,
                    eos_token_id=self.eos_token_id,
                    pad_token_id=pad,
                ),
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList(stopping_criteria),
                streamer=streamer,
            )
        results = []
        for row, request in enumerate(requests):
            tokens = out[row, width:].tolist()[: request.max_new_tokens]
            ended = self.eos_token_id in tokens
            tokens = tokens[: tokens.index(self.eos_token_id) + 1] if ended else tokens
            stopped = ended or any(s in self.tokenizer.decode(tokens) for s in request.stop_strings if s)
            results.append(Finished(tokens, "stop" if stopped or len(tokens) < request.max_new_tokens else "length"))
        return results

    def generate(
        self, requests: Sequence[GenerationRequest], on_finished: Callable[[int], None] | None = None
    ) -> list[Finished]:
        results: list[Finished] = [Finished() for _ in requests]
        groups: dict[tuple, list[int]] = {}
        for index in sorted(range(len(requests)), key=lambda i: len(requests[i].prompt)):
            r = requests[index]
            sampled = not r.decoding.greedy
            groups.setdefault((r.adapter, r.decoding, r.stop_strings, index if sampled else -1), []).append(index)
        rows = self._rows_at_once(requests)
        for indices in groups.values():
            for start in range(0, len(indices), rows):
                chunk = indices[start : start + rows]
                with self.lock:
                    done = self.generate_rows([requests[i] for i in chunk])
                for index, finished in zip(chunk, done):
                    results[index] = finished
                if on_finished is not None:
                    on_finished(len(chunk))
        return results

    def submit(self, request: GenerationRequest) -> Running:
        running = _Threaded(self, request)
        self._running.append(running)
        return running

    def add_adapter(self, name: str, folder: Path) -> None:
        from fine_tune_dag.core.models.loading import with_adapters

        with self.lock:
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(str(folder), adapter_name=name, autocast_adapter_dtype=False)
            else:
                self.model = with_adapters(self.model, {name: folder})

    def close(self) -> None:
        for running in self._running:
            running.cancel()
        self._running = []

    def step(self) -> None:
        for running in self._running:
            running.wait()
        self._running = [r for r in self._running if not r.finished]
