"""The model behind `fine-tune-dag serve`: one base model with its adapters loaded as they are asked for, and one
worker thread that decodes queued requests in batches (`decoding.decode`, rows joining as others finish).

The queue is bounded: a request that finds it full is refused at once (`Overloaded`, a 429 with Retry-After),
never left to hang. Each request's tokens go back to its handler on the handler's own event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fine_tune_dag.core.llm.types import LLMRequest, LLMResult
from fine_tune_dag.core.modeling.chat import render_prompt_ids
from fine_tune_dag.core.modeling.decoding import Decoding, decode
from fine_tune_dag.core.modeling.generation import GenerationSettings, cut_at_stop, load_generation_settings
from fine_tune_dag.core.modeling.inference import load_base_model
from fine_tune_dag.core.modeling.models import load_tokenizer
from fine_tune_dag.core.serving.requests import ChatRequest

LOGGER = logging.getLogger(__name__)
SERVED_TEMPLATE = "served_chat"  # how served requests are named in llm_requests and llm_cache


class Overloaded(RuntimeError):
    """The queue is full (429), or the model is still loading (503): try again after `retry_after` seconds."""

    def __init__(self, message: str, status: int, retry_after: int) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class Served:
    """What a model name stands for now: an adapter folder (None: the base model), and whether retrieval adds
    passages to the prompt."""

    name: str
    adapter: Path | None
    retrieval: bool


@dataclass
class Job:
    """One request in the queue: the rendered prompt and how to decode it; events go back to `loop`."""

    served: Served
    request: ChatRequest
    prompt: list[int]
    decoding: Decoding
    max_tokens: int
    notes: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("tokens", [ids]) … then ("end", reason)

    def send(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    @property
    def key(self) -> tuple:
        """Jobs with the same key decode in one batch."""
        return (self.served.adapter, self.decoding, self.request.stop)


class Engine:
    """Load the base model in the background, then serve jobs in batches of up to `batch_size`."""

    def __init__(
        self,
        base_model: Path,
        record: Callable[[list[tuple[LLMRequest, LLMResult]], str], None],
        batch_size: int = 8,
        queue_size: int = 32,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.base_model, self.record = Path(base_model), record
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.tokenizer = load_tokenizer(self.base_model)
        self._model: Any = None
        self._adapters: dict[Path, str] = {}  # folder → adapter name in the model
        self._settings: dict[Path | None, GenerationSettings] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def settings(self, adapter: Path | None) -> GenerationSettings:
        """An adapter's saved decoding defaults (the defaults for the base model)."""
        if adapter not in self._settings:
            self._settings[adapter] = GenerationSettings() if adapter is None else load_generation_settings(adapter)
        return self._settings[adapter]

    def job(self, served: Served, request: ChatRequest, messages: list[dict[str, str]], notes: list[str]) -> Job:
        """A job for `request` with the model's defaults under what the request set, on the caller's loop."""
        saved = self.settings(served.adapter)
        decoding = Decoding(
            temperature=saved.temperature if request.temperature is None else request.temperature,
            top_p=saved.top_p if request.top_p is None else request.top_p,
            no_repeat_ngram_size=saved.no_repeat_ngram_size,
            seed=saved.seed if request.seed is None else request.seed,
        )
        prompt = render_prompt_ids(self.tokenizer, messages)
        tokens = request.max_tokens or saved.max_new_tokens
        return Job(served, request, prompt, decoding, tokens, notes, asyncio.get_running_loop())

    def submit(self, job: Job) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the model failed to load: {self.failure}")
        if not self.ready.is_set():
            raise Overloaded("the model is still loading", 503, 5)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self.jobs.maxsize} requests are already waiting", 429, 1) from None

    def _run(self) -> None:
        try:
            self._model = load_base_model(self.base_model, self.device, self.dtype)
        except BaseException as error:  # reported to every request instead of a silent dead thread
            self.failure = error
            return
        self.ready.set()
        held: list[Job] = []  # taken from the queue while gathering a batch, but of another kind
        while not self._stop.is_set():
            if not held:
                try:
                    held.append(self.jobs.get(timeout=0.2))
                except queue.Empty:
                    continue
            batch = [job for job in held if job.key == held[0].key][: self.batch_size]
            held = [job for job in held if job not in batch]
            while len(batch) < self.batch_size:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                (batch if job.key == batch[0].key else held).append(job)
            self._decode(batch)

    def _weights(self, adapter: Path | None) -> Any:
        """The model with `adapter` on (loaded the first time it is asked for), or with adapters off."""
        from peft import PeftModel

        from fine_tune_dag.core.modeling.models import with_adapters

        if adapter is not None and adapter not in self._adapters:
            name = f"adapter{len(self._adapters)}"
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(adapter), adapter_name=name, autocast_adapter_dtype=False)
            else:
                self._model = with_adapters(self._model, {name: adapter})
            self._adapters[adapter] = name
        if isinstance(self._model, PeftModel):
            if adapter is None:
                return self._model, self._model.disable_adapter()
            self._model.set_adapter(self._adapters[adapter])
        return self._model, nullcontext()

    def _decode(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        tokens: list[list[int]] = [[] for _ in batch]
        reasons: list[str | None] = [None] * len(batch)
        first = batch[0]
        try:
            model, weights = self._weights(first.served.adapter)
            with weights:
                steps = decode(
                    model,
                    self.tokenizer,
                    [job.prompt for job in batch],
                    max(job.max_tokens for job in batch),
                    first.decoding,
                    first.request.stop,
                )
                for step in steps:
                    for row, new in step.tokens.items():
                        if reasons[row] is not None:
                            continue
                        new = new[: batch[row].max_tokens - len(tokens[row])]
                        tokens[row] += new
                        if new and new[-1] == self.tokenizer.eos_token_id:
                            reasons[row] = "stop"
                            new = new[:-1]
                        elif row in step.finished:
                            reasons[row] = "stop"
                        elif len(tokens[row]) >= batch[row].max_tokens:
                            reasons[row] = "length"
                        if new:
                            batch[row].send("tokens", new)
        except Exception as error:  # every request of the batch hears it; the server goes on
            for job in batch:
                job.send("error", str(error))
            return
        latency = (time.perf_counter() - started) / len(batch)
        # logged before any answer ends, so a client that has its answer finds it in the log
        try:
            self.record([_logged(job, self.tokenizer, t, latency) for job, t in zip(batch, tokens)], first.served.name)
        except Exception as error:  # a busy warehouse must not withhold the answers
            LOGGER.warning("served answers not logged: %s", error)
        for job, reason in zip(batch, reasons):
            job.send("end", reason or "stop")


def _logged(job: Job, tokenizer: Any, tokens: list[int], latency: float) -> tuple[LLMRequest, LLMResult]:
    """The request and its answer as the LLM cache and request log keep them."""
    ids = tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens
    text = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), job.request.stop).strip()
    request = LLMRequest(
        tuple((m["role"], m["content"]) for m in job.request.messages),
        SERVED_TEMPLATE,
        "1",
        job.max_tokens,
        job.decoding.temperature,
        (("model", job.served.name), ("notes", ",".join(job.notes))),
    )
    return request, LLMResult(text, "ok" if text else "empty", len(job.prompt), len(ids), latency)
