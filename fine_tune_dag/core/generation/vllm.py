"""vLLM on CUDA: the offline engine (`vllm.LLM`) with the base model loaded once and each adapter a LoRA request,
so the base model and every adapter answer in one running batch.

vLLM is imported only when an engine opens: the pure functions here (the engine's arguments, each request's) are
read and tested on machines without it. Prompts go in as token ids (`TokensPrompt`) and token ids come out, so
vLLM's tokenizer never decides what a prompt is; it only detokenizes where stop strings must be matched.

The n-gram ban: vLLM's `SamplingParams` has none. Its V1 engine takes custom logits processors, loaded when the
engine starts (`LLM(logits_processors=[...])`) and switched on per request by `SamplingParams.extra_args`
(https://docs.vllm.ai/en/stable/features/custom_logitsprocs/). `NoRepeatNGram` is that processor: it bans what
would repeat an n-gram of the answer, the prompt free to quote, as the other engines do. It is written against
the V1 model runner's interface (`vllm.v1.sample.logits_processor`); a vLLM that runs Model Runner V2 refuses it
when the engine starts, which surfaces as `EngineUnavailable` (VLLM_USE_V2_MODEL_RUNNER=0 selects the V1 runner).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fine_tune_dag.core.generation.base import (
    EngineChoice,
    EngineUnavailable,
    Finished,
    GenerationEngine,
    GenerationRequest,
    Running,
    row_seed,
)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the `max_lora_rank` values vLLM's LoRAConfig accepts
NGRAM_ARGUMENT = "no_repeat_ngram_size"  # the request's key in `SamplingParams.extra_args`
NO_REPEAT_NGRAM = f"{__name__}:NoRepeatNGram"  # how vLLM's engine process imports the processor


def adapter_rank(folder: Path) -> int:
    """The LoRA rank `r` an adapter folder was trained with, from its `adapter_config.json`."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"adapter folder {folder} has no adapter_config.json")
    return int(json.loads(config.read_text())["r"])


def engine_arguments(
    base_dir: Path,
    adapters: Mapping[str, Path],
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.85,
) -> dict[str, Any]:
    """`vllm.LLM`'s keyword arguments: LoRA slots for every adapter at once, sized to the largest rank among
    them (rounded up to one vLLM accepts), and the n-gram processor loaded for requests that ask for it."""
    ranks = {Path(folder): adapter_rank(folder) for folder in adapters.values()}
    largest = max(ranks.values(), default=LORA_RANKS[0])
    accepted = [rank for rank in LORA_RANKS if rank >= largest]
    if not accepted:
        folder = max(ranks, key=lambda f: ranks[f])
        raise ValueError(f"adapter {folder} has LoRA rank {largest}, above vLLM's largest ({LORA_RANKS[-1]})")
    return {
        "model": str(base_dir),
        "enable_lora": bool(adapters),
        "max_lora_rank": accepted[0],
        "max_loras": max(1, len(adapters)),
        "dtype": dtype,
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "generation_config": "vllm",  # each request carries all its decoding: no limit or penalty from the folder
        "logits_processors": [NO_REPEAT_NGRAM],
    }


def sampling_arguments(request: GenerationRequest, eos_token_id: int) -> dict[str, Any]:
    """`SamplingParams`' keyword arguments for one request. A sampled request's seed is of its seed and prompt
    alone, so its answer does not depend on the batch it runs in."""
    decoding = request.decoding
    stop = [s for s in request.stop_strings if s]  # vLLM refuses an empty stop string
    arguments: dict[str, Any] = {
        "temperature": float(decoding.temperature),
        "top_p": 1.0 if decoding.greedy else decoding.top_p,
        "max_tokens": request.max_new_tokens,
        "stop": stop,
        "stop_token_ids": [eos_token_id],
        "detokenize": bool(stop),  # stop strings are matched on text; token ids alone need none
    }
    if not decoding.greedy:
        arguments["seed"] = row_seed(decoding.seed, request.prompt)
    if decoding.no_repeat_ngram_size > 0:
        arguments["extra_args"] = {NGRAM_ARGUMENT: decoding.no_repeat_ngram_size}
    return arguments


def lora_ids(adapters: Mapping[str, Path]) -> dict[str, int]:
    """Each adapter's LoRA id, from 1 in the mapping's order: vLLM keys its loaded adapters by id (0 is none)."""
    return {name: number for number, name in enumerate(adapters, start=1)}


def banned_tokens(output: Sequence[int], size: int) -> list[int]:
    """The tokens that would complete an n-gram of `size` the answer already holds (its prompt is free to quote):
    transformers' ban over the continuation alone, as the other engines apply it."""
    if size <= 0 or len(output) < size:
        return []
    tail = list(output[len(output) - size + 1 :])
    starts = range(len(output) - size + 1)
    return sorted({output[s + size - 1] for s in starts if list(output[s : s + size - 1]) == tail})


def ban_repeated_ngrams(size: int, output: list[int], logits: Any) -> Any:
    """One request's logits row with its banned tokens at -inf, changed in place (vLLM's per-request processor:
    it passes the request's output ids, a list that grows as tokens are chosen)."""
    if banned := banned_tokens(output, size):
        logits[banned] = float("-inf")
    return logits


def ngram_size(params: Any) -> int:
    """The n-gram size a request's `SamplingParams` asks to ban (0: none)."""
    size = (params.extra_args or {}).get(NGRAM_ARGUMENT, 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{NGRAM_ARGUMENT} must be a whole number of at least 0, not {size!r}")
    return size


@functools.cache
def _no_repeat_ngram_class() -> type:
    """`NoRepeatNGram`, built on vLLM's per-request adapter when vLLM first asks for it, so this module imports
    without vLLM. One class per process: vLLM and pickle find it again by its module and name."""
    logits_processor = importlib.import_module("vllm.v1.sample.logits_processor")

    class NoRepeatNGram(logits_processor.AdapterLogitsProcessor):
        """Bans repeating an n-gram of the answer, for requests whose `extra_args` hold `no_repeat_ngram_size`."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            ngram_size(sampling_params)

        def is_argmax_invariant(self) -> bool:
            return False  # it changes which token greedy decoding picks

        def new_req_logits_processor(self, params: Any) -> Callable[[list[int], Any], Any] | None:
            size = ngram_size(params)
            return functools.partial(ban_repeated_ngrams, size) if size else None

    NoRepeatNGram.__module__, NoRepeatNGram.__qualname__ = __name__, "NoRepeatNGram"
    return NoRepeatNGram


def __getattr__(name: str) -> Any:
    if name == "NoRepeatNGram":
        return _no_repeat_ngram_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _finished(completion: Any) -> Finished:
    return Finished(list(completion.token_ids), "length" if completion.finish_reason == "length" else "stop")


class _Submitted(Running):
    """A request added to vLLM's engine: each step output holds all its tokens so far, so `read` remembers how
    many it has handed out."""

    def __init__(self, engine: VLLMEngine, request_id: str) -> None:
        super().__init__()
        self._engine, self.request_id = engine, request_id
        self._tokens: list[int] = []
        self._read = 0

    def update(self, output: Any) -> None:
        done = _finished(output.outputs[0])
        self._tokens = done.tokens
        if output.finished:
            self._done, self._reason = True, done.reason

    def read(self) -> list[int]:
        new = self._tokens[self._read :]
        self._read = len(self._tokens)
        return new

    def cancel(self) -> None:
        if not self._done:
            self._engine._abort(self.request_id)
            self._done = True


class VLLMEngine(GenerationEngine):
    """The base model on CUDA with each named adapter (a PEFT folder) as a `LoRARequest`: requests for any of them
    and for the base model share vLLM's running batch."""

    def __init__(
        self, base_dir: Path, adapters: Mapping[str, Path], eos_token_id: int, dtype: str = "auto", seed: int = 0
    ) -> None:
        self.base_dir = Path(base_dir)
        self._adapters = {name: Path(folder) for name, folder in adapters.items()}
        self.eos_token_id = eos_token_id
        arguments = engine_arguments(self.base_dir, self._adapters, dtype, seed)
        try:
            vllm = importlib.import_module("vllm")
            self._tokens_prompt = importlib.import_module("vllm.inputs").TokensPrompt
            lora_request = importlib.import_module("vllm.lora.request").LoRARequest
            self._llm = vllm.LLM(**arguments)
        except Exception as error:  # not installed, no CUDA, an architecture or adapter vLLM cannot load, ...
            raise EngineUnavailable(f"vLLM cannot run {self.base_dir}: {type(error).__name__}: {error}") from error
        self._sampling_params = vllm.SamplingParams
        self._lora_request = lora_request
        self._loras = {
            name: lora_request(name, number, str(self._adapters[name])) for name, number in lora_ids(adapters).items()
        }
        self._submitted: dict[str, _Submitted] = {}
        self._ids = itertools.count()
        self.choice = EngineChoice(
            "vllm", "vLLM's offline engine on CUDA, adapters as LoRA requests in one batch", precision=dtype
        )

    def add_adapter(self, name: str, folder: Path) -> None:
        """Served as a new LoRA request (a new id, so vLLM loads it rather than reuse a cached one); its rank must
        fit the `max_lora_rank` the engine started with."""
        self._adapters[name] = Path(folder)
        self._loras[name] = self._lora_request(name, len(self._loras) + 1, str(folder))

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._loras:
            raise KeyError(f"no adapter named {adapter!r}; known: {sorted(self._loras)}")
        return self._loras[adapter]

    def _inputs(self, request: GenerationRequest) -> tuple[Any, Any, Any]:
        """The request as vLLM takes it: token-id prompt, sampling parameters, LoRA request (None: base model)."""
        lora = self._lora(request.adapter)
        prompt = self._tokens_prompt(prompt_token_ids=list(request.prompt))
        return prompt, self._sampling_params(**sampling_arguments(request, self.eos_token_id)), lora

    def generate(
        self, requests: Sequence[GenerationRequest], on_finished: Callable[[int], None] | None = None
    ) -> list[Finished]:
        """Every request in one `LLM.generate` call: vLLM schedules them together, whatever their adapter."""
        if self._submitted:  # LLM.generate steps the engine until it is empty, taking their outputs
            raise RuntimeError(f"{len(self._submitted)} submitted requests still run: finish or cancel them first")
        if not requests:
            return []
        prompts, params, loras = zip(*(self._inputs(r) for r in requests))
        outputs = self._llm.generate(list(prompts), list(params), lora_request=list(loras), use_tqdm=False)
        results = [_finished(output.outputs[0]) for output in outputs]
        if on_finished is not None:
            on_finished(len(requests))
        return results

    def submit(self, request: GenerationRequest) -> Running:
        prompt, params, lora = self._inputs(request)
        request_id = f"fine-tune-dag-{next(self._ids)}"  # apart from the numbers LLM.generate gives its own
        self._llm.llm_engine.add_request(request_id, prompt, params, lora_request=lora)
        self._submitted[request_id] = _Submitted(self, request_id)
        return self._submitted[request_id]

    def step(self) -> None:
        """One engine step, when a submitted request runs (with nothing to do, vLLM's step waits for output)."""
        if not self._submitted:
            return
        for output in self._llm.llm_engine.step():
            submitted = self._submitted.get(output.request_id)
            if submitted is not None:
                submitted.update(output)
                if submitted.finished:
                    del self._submitted[output.request_id]

    def _abort(self, request_id: str) -> None:
        self._submitted.pop(request_id, None)
        self._llm.llm_engine.abort_request([request_id])

    def close(self) -> None:
        """Cancel what runs and stop vLLM's engine core, which holds the GPU memory (in its own process)."""
        for submitted in list(self._submitted.values()):
            submitted.cancel()
        self._llm.llm_engine.engine_core.shutdown()
