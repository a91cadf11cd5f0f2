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
from fine_tune_dag.core.modeling.generation import continuation_text, load_generation_settings
from fine_tune_dag.core.modeling.generation_settings import GenerationSettings
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
        return (self.served.adapter, self.decoding, self.request.stop, self.max_tokens)


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
        self._held: list[Job] = []  # taken from the queue, waiting for a batch of their kind
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
        while not self._stop.is_set():
            if not self._held:
                try:
                    self._held.append(self.jobs.get(timeout=0.2))
                except queue.Empty:
                    continue
            self._decode(self._held.pop(0))

    def _arrivals(self, batch: list[Job], room: int) -> list[list[int]]:
        """Up to `room` queued jobs of `batch`'s kind, joining it as it decodes; others wait their turn."""
        joined: list[list[int]] = []
        while len(joined) < room:
            same = next((job for job in self._held if job.key == batch[0].key), None)
            if same is not None:
                self._held.remove(same)
            else:
                try:
                    same = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if same.key != batch[0].key:
                    self._held.append(same)
                    continue
            batch.append(same)
            joined.append(same.prompt)
        return joined

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

    def _decode(self, first: Job) -> None:
        """`first` and the jobs of its kind that arrive while it decodes, in one batch."""
        batch = [first]
        tokens: dict[int, list[int]] = {}
        reasons: dict[int, str] = {}
        started: dict[int, float] = {}
        try:
            model, weights = self._weights(first.served.adapter)
            with weights:
                steps = decode(
                    model,
                    self.tokenizer,
                    [first.prompt],
                    first.max_tokens,
                    first.decoding,
                    first.request.stop,
                    self.batch_size,
                    arrivals=lambda room: self._arrivals(batch, room),
                )
                for step in steps:
                    for row, new in step.tokens.items():
                        started.setdefault(row, time.perf_counter())
                        tokens.setdefault(row, []).extend(new)
                        if new[-1] == self.tokenizer.eos_token_id:
                            new = new[:-1]
                        if row in step.finished:
                            reasons[row] = self._reason(tokens[row], first)
                        if new:
                            batch[row].send("tokens", new)
                    if step.finished:
                        self._finish([(row, batch[row]) for row in step.finished], tokens, reasons, started)
        except Exception as error:  # every unfinished request of the batch hears it; the server goes on
            for row, job in enumerate(batch):
                if row not in reasons:
                    job.send("error", str(error))

    def _reason(self, tokens: list[int], job: Job) -> str:
        """OpenAI's finish reason: "stop" at EOS or a stop string, "length" at the token limit."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stopped = tokens[-1] == self.tokenizer.eos_token_id or any(s in text for s in job.request.stop)
        return "stop" if stopped or len(tokens) < job.max_tokens else "length"

    def _finish(
        self,
        rows: list[tuple[int, Job]],
        tokens: dict[int, list[int]],
        reasons: dict[int, str],
        started: dict[int, float],
    ) -> None:
        """Log the finished answers, then end them: a client that has its answer finds it in the log."""
        now = time.perf_counter()
        try:
            answered = [_logged(job, self.tokenizer, tokens[row], now - started[row]) for row, job in rows]
            self.record(answered, rows[0][1].served.name)
        except Exception as error:  # a busy warehouse must not withhold the answers
            LOGGER.warning("served answers not logged: %s", error)
        for row, job in rows:
            job.send("end", reasons[row])


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
