"""The model behind `fine-tune-dag serve`: one base model with its adapters loaded as they are asked for, on the
generation engine (`generation.engines`), and one worker thread that steps the engine's running batch: a queued
request joins it at the next step, whatever its adapter or settings.

The queue is bounded: a request that finds it full is refused at once (`Overloaded`, a 429 with Retry-After),
never left to hang. Each request's tokens go back to its handler on the handler's own event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fine_tune_dag.core.common.chat import render_prompt_ids
from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.generation.base import (
    Decoding,
    EngineSettings,
    GenerationEngine,
    GenerationRequest,
    Running,
    engine_precision,
)
from fine_tune_dag.core.generation.batch import continuation_text
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.models.adapters import load_base_model, load_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_tokenizer, select_device
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
        engine: str = "auto",
    ) -> None:
        self.base_model, self.record = Path(base_model), record
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.tokenizer = load_tokenizer(self.base_model)
        self.engine_setting = engine
        self._engine: GenerationEngine
        self._adapters: dict[Path, str] = {}  # folder → adapter name in the engine
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
            device = select_device(self.device)
            self._engine = open_engine(
                self.base_model,
                {},
                self.tokenizer,
                EngineSettings(self.engine_setting, engine_precision(self.dtype), self.batch_size),  # type: ignore[arg-type]
                device,
                lambda: load_base_model(self.base_model, device, self.dtype),
            )
        except BaseException as error:  # reported to every request instead of a silent dead thread
            self.failure = error
            return
        LOGGER.info("serving with %s: %s", self._engine.choice.engine, self._engine.choice.reason)
        self.ready.set()
        running: dict[Running, Job] = {}
        tokens: dict[Running, list[int]] = {}
        started: dict[Running, float] = {}
        while not self._stop.is_set():
            for job in self._arrivals(wait=not running):
                try:
                    request = GenerationRequest(
                        tuple(job.prompt), job.max_tokens, job.decoding, tuple(job.request.stop), self._adapter(job)
                    )
                    handle = self._engine.submit(request)
                except Exception as error:  # this request hears it; the server goes on
                    job.send("error", str(error))
                    continue
                running[handle], tokens[handle], started[handle] = job, [], time.perf_counter()
            if not running:
                continue
            try:
                self._engine.step()
            except Exception as error:  # every running request hears it; the server goes on
                for job in running.values():
                    job.send("error", str(error))
                running.clear()
                continue
            finished = []
            for handle, job in running.items():
                new = handle.read()
                tokens[handle].extend(new)
                shown = [t for t in new if t != self.tokenizer.eos_token_id]
                if shown:
                    job.send("tokens", shown)
                if handle.finished:
                    finished.append(handle)
            if finished:
                self._finish([(running.pop(h), tokens.pop(h), started.pop(h), h.reason) for h in finished])

    def _arrivals(self, wait: bool) -> list[Job]:
        """The queued jobs that join the running batch now (waiting a moment for one when nothing runs), up to
        the batch size the engine decodes at once."""
        jobs: list[Job] = []
        try:
            if wait:
                jobs.append(self.jobs.get(timeout=0.2))
            while len(jobs) < self.batch_size:
                jobs.append(self.jobs.get_nowait())
        except queue.Empty:
            pass
        return jobs

    def _adapter(self, job: Job) -> str | None:
        """The engine's name for the job's adapter, added to the engine the first time it is asked for."""
        folder = job.served.adapter
        if folder is None:
            return None
        if folder not in self._adapters:
            self._adapters[folder] = f"adapter{len(self._adapters)}"
            self._engine.add_adapter(self._adapters[folder], folder)
        return self._adapters[folder]

    def _finish(self, done: list[tuple[Job, list[int], float, str]]) -> None:
        """Log the finished answers, then end them: a client that has its answer finds it in the log."""
        now = time.perf_counter()
        try:
            for name in dict.fromkeys(job.served.name for job, *_ in done):
                answered = [
                    _logged(job, self.tokenizer, tokens, now - started)
                    for job, tokens, started, _ in done
                    if job.served.name == name
                ]
                self.record(answered, name)
        except Exception as error:  # a busy warehouse must not withhold the answers
            LOGGER.warning("served answers not logged: %s", error)
        for job, _, _, reason in done:
            job.send("end", reason)


def _logged(job: Job, tokenizer: Any, tokens: list[int], latency: float) -> tuple[LLMRequest, LLMResult]:
    """The request and its answer as the LLM cache and request log keep them."""
    text = continuation_text(tokenizer, tokens, job.request.stop)
    request = LLMRequest(
        tuple((m["role"], m["content"]) for m in job.request.messages),
        SERVED_TEMPLATE,
        "1",
        job.max_tokens,
        job.decoding.temperature,
        (("model", job.served.name), ("notes", ",".join(job.notes))),
    )
    produced = tokens.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in tokens else len(tokens)
    return request, LLMResult(text, "ok" if text else "empty", len(job.prompt), produced, latency)
