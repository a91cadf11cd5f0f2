"""The vLLM engine without vLLM or a GPU: its arguments are pure functions of the adapter folders and requests,
and the engine itself runs against a stand-in `vllm` package that records what it is asked and answers from the
prompt, so what reaches vLLM (LoRA ranks, LoRA requests, seeds, the n-gram ban) is checked on any machine."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fine_tune_dag.core.generation import vllm as engine_module
from fine_tune_dag.core.generation.base import Decoding, EngineUnavailable, Finished, GenerationRequest, row_seed
from fine_tune_dag.core.generation.vllm import (
    NO_REPEAT_NGRAM,
    VLLMEngine,
    ban_repeated_ngrams,
    banned_tokens,
    engine_arguments,
    lora_ids,
    sampling_arguments,
)

EOS = 2


def adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank, "peft_type": "LORA"}))
    return folder


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    return {"v1": adapter(tmp_path / "v1", 4), "v2": adapter(tmp_path / "v2", 16)}


# (a) the engine's arguments


def test_engine_arguments_size_the_lora_slots_to_the_adapters(tmp_path: Path, adapters: dict[str, Path]) -> None:
    assert engine_arguments(tmp_path / "base", adapters, dtype="bfloat16", seed=3) == {
        "model": str(tmp_path / "base"),
        "enable_lora": True,
        "max_lora_rank": 16,
        "max_loras": 2,
        "dtype": "bfloat16",
        "seed": 3,
        "gpu_memory_utilization": 0.85,
        "generation_config": "vllm",
        "logits_processors": [NO_REPEAT_NGRAM],
    }
    base_only = engine_arguments(tmp_path / "base", {})
    assert base_only["enable_lora"] is False and base_only["max_loras"] == 1 and base_only["dtype"] == "auto"


@pytest.mark.parametrize(("rank", "accepted"), [(1, 8), (8, 8), (17, 32), (200, 256), (300, 320), (512, 512)])
def test_a_rank_is_rounded_up_to_one_vllm_accepts(tmp_path: Path, rank: int, accepted: int) -> None:
    arguments = engine_arguments(tmp_path / "base", {"a": adapter(tmp_path / "a", rank)})
    assert arguments["max_lora_rank"] == accepted


def test_a_rank_vllm_cannot_hold_names_its_adapter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'huge'))}.*1024"):
        engine_arguments(tmp_path / "base", {"a": adapter(tmp_path / "a", 8), "huge": adapter(tmp_path / "huge", 1024)})


def test_an_adapter_folder_without_its_config_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        engine_arguments(tmp_path / "base", {"v1": tmp_path / "empty"})


def test_lora_ids_count_from_one_in_the_mapping_order(tmp_path: Path) -> None:
    assert lora_ids({"b": tmp_path, "a": tmp_path, "c": tmp_path}) == {"b": 1, "a": 2, "c": 3}


# (b) each request's sampling arguments

PROMPT = (5, 6, 7, 8)


def test_a_greedy_request_has_no_seed_and_no_empty_stop_string() -> None:
    request = GenerationRequest(PROMPT, 24, Decoding(temperature=0.0, top_p=0.9, seed=7), stop_strings=("\n\n", ""))
    assert sampling_arguments(request, EOS) == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 24,
        "stop": ["\n\n"],
        "stop_token_ids": [EOS],
        "detokenize": True,
    }


def test_a_sampled_request_is_seeded_by_its_seed_and_prompt_and_asks_for_the_ngram_ban() -> None:
    request = GenerationRequest(PROMPT, 160, Decoding(temperature=0.7, top_p=0.9, no_repeat_ngram_size=3, seed=7))
    assert sampling_arguments(request, EOS) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 160,
        "stop": [],
        "stop_token_ids": [EOS],
        "detokenize": False,
        "seed": row_seed(7, PROMPT),
        "extra_args": {"no_repeat_ngram_size": 3},
    }


# a stand-in vllm package


@dataclass(frozen=True)
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def answer(prompt: list[int], params: FakeSamplingParams) -> list[int]:
    """What the stand-in model says: the prompt's tokens plus 100, then EOS, cut at the request's limit."""
    return ([t + 100 for t in prompt] + [EOS])[: params.kwargs["max_tokens"]]


def completion(request_id: str, tokens: list[int], finished: bool, limit: int) -> SimpleNamespace:
    reason = None if not finished else "length" if len(tokens) == limit and tokens[-1] != EOS else "stop"
    return SimpleNamespace(
        request_id=request_id,
        finished=finished,
        outputs=[SimpleNamespace(token_ids=tuple(tokens), finish_reason=reason)],
    )


class FakeLLMEngine:
    """vLLM's engine as `submit` and `step` use it: one token per request per step, cumulative outputs."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}
        self.added: list[tuple[str, Any, FakeSamplingParams, Any]] = []
        self.aborted: list[str] = []
        self.engine_core = SimpleNamespace(shutdown=lambda: self.aborted.append("shutdown"))

    def add_request(self, request_id: str, prompt: Any, params: FakeSamplingParams, lora_request: Any = None) -> None:
        self.added.append((request_id, prompt, params, lora_request))
        self.requests[request_id] = {"answer": answer(prompt["prompt_token_ids"], params), "sent": 0, "params": params}

    def step(self) -> list[SimpleNamespace]:
        outputs = []
        for request_id, state in list(self.requests.items()):
            state["sent"] += 1
            tokens = state["answer"][: state["sent"]]
            finished = state["sent"] >= len(state["answer"])
            outputs.append(completion(request_id, tokens, finished, state["params"].kwargs["max_tokens"]))
            if finished:
                del self.requests[request_id]
        return outputs

    def abort_request(self, request_ids: list[str]) -> None:
        self.aborted.extend(request_ids)
        for request_id in request_ids:
            self.requests.pop(request_id, None)


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[dict[str, Any]] = []
        self.llm_engine = FakeLLMEngine()
        FakeLLM.instances.append(self)

    def generate(self, prompts: list[Any], sampling_params: list[Any], lora_request: Any = None, use_tqdm: bool = True):
        self.calls.append({"prompts": prompts, "params": sampling_params, "loras": lora_request, "use_tqdm": use_tqdm})
        outputs = []
        for number, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            tokens = answer(prompt["prompt_token_ids"], params)
            outputs.append(completion(str(number), tokens, True, params.kwargs["max_tokens"]))
        return outputs


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch, llm: type = FakeLLM) -> None:
    FakeLLM.instances = []
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = llm, FakeSamplingParams  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # type: ignore[attr-defined]  (a TypedDict in vLLM)
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = FakeLoRARequest  # type: ignore[attr-defined]
    for name, module in [
        ("vllm", vllm),
        ("vllm.inputs", inputs),
        ("vllm.lora", lora),
        ("vllm.lora.request", lora_request),
    ]:
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, adapters: dict[str, Path]) -> VLLMEngine:
    install_fake_vllm(monkeypatch)
    return VLLMEngine(tmp_path / "base", adapters, EOS)


def llm() -> FakeLLM:
    (only,) = FakeLLM.instances
    return only


# (c) generate through the stand-in


def test_the_engine_asks_vllm_for_lora_slots_of_the_adapters_rank(engine: VLLMEngine, tmp_path: Path) -> None:
    kwargs = llm().kwargs
    assert kwargs["model"] == str(tmp_path / "base") and kwargs["enable_lora"] is True
    assert kwargs["max_lora_rank"] == 16 and kwargs["max_loras"] == 2
    assert kwargs["logits_processors"] == [NO_REPEAT_NGRAM]
    assert engine.choice.engine == "vllm" and engine.choice.precision == "auto"


def test_each_request_goes_with_its_adapters_lora_request_and_answers_come_back_in_order(
    engine: VLLMEngine, adapters: dict[str, Path]
) -> None:
    requests = [
        GenerationRequest((1, 2, 3), 10, adapter="v2"),
        GenerationRequest((4, 5), 10),
        GenerationRequest((6, 7, 8, 9), 2, Decoding(temperature=0.5, seed=7), adapter="v1"),
    ]
    heard: list[int] = []
    results = engine.generate(requests, heard.append)

    assert results == [
        Finished([101, 102, 103, EOS], "stop"),
        Finished([104, 105, EOS], "stop"),
        Finished([106, 107], "length"),
    ]
    assert heard == [3]
    (call,) = llm().calls
    assert call["use_tqdm"] is False
    assert call["prompts"] == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4, 5]},
        {"prompt_token_ids": [6, 7, 8, 9]},
    ]
    assert call["loras"] == [
        FakeLoRARequest("v2", 2, str(adapters["v2"])),
        None,  # the base model
        FakeLoRARequest("v1", 1, str(adapters["v1"])),
    ]
    assert [p.kwargs for p in call["params"]] == [sampling_arguments(r, EOS) for r in requests]


def test_a_sampled_requests_seed_is_the_same_whatever_else_is_in_the_batch(engine: VLLMEngine) -> None:
    sampled = Decoding(temperature=0.8, top_p=0.9, seed=7)
    asked = GenerationRequest((9, 9, 4), 8, sampled, adapter="v1")
    engine.generate([asked, GenerationRequest((1,), 8, sampled)])
    engine.generate([GenerationRequest((3, 3), 8, sampled, adapter="v2"), GenerationRequest((5,), 4), asked])

    first, second = (call["params"] for call in llm().calls)
    assert first[0].kwargs["seed"] == second[2].kwargs["seed"] == row_seed(7, (9, 9, 4))
    assert first[1].kwargs["seed"] != first[0].kwargs["seed"]


def test_an_unknown_adapter_is_refused_before_vllm_is_asked(engine: VLLMEngine) -> None:
    with pytest.raises(KeyError, match=r"'v3'.*\['v1', 'v2'\]"):
        engine.generate([GenerationRequest((1,), 4), GenerationRequest((1,), 4, adapter="v3")])
    with pytest.raises(KeyError, match="v3"):
        engine.submit(GenerationRequest((1,), 4, adapter="v3"))
    assert llm().calls == [] and llm().llm_engine.added == []


def test_no_requests_ask_nothing(engine: VLLMEngine) -> None:
    assert engine.generate([]) == [] and llm().calls == []


# (d) vLLM that cannot run


def test_without_vllm_the_engine_is_unavailable_and_names_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, adapters: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(EngineUnavailable, match=re.escape(f"vLLM cannot run {tmp_path / 'base'}: ModuleNotFoundError")):
        VLLMEngine(tmp_path / "base", adapters, EOS)


def test_a_model_vllm_cannot_load_is_unavailable_with_vllms_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class NoCuda:
        def __init__(self, **kwargs: Any) -> None:
            raise RuntimeError("Failed to infer device type")

    install_fake_vllm(monkeypatch, NoCuda)
    with pytest.raises(
        EngineUnavailable, match=re.escape(f"{tmp_path / 'base'}: RuntimeError: Failed to infer device type")
    ):
        VLLMEngine(tmp_path / "base", {}, EOS)


def test_an_adapter_folder_without_config_is_not_taken_for_an_engine_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install_fake_vllm(monkeypatch)
    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError, match="broken"):
        VLLMEngine(tmp_path / "base", {"v1": tmp_path / "broken"}, EOS)


# (e) submitted requests, stepped with the others


def test_submitted_requests_are_read_as_the_steps_bring_their_tokens(
    engine: VLLMEngine, adapters: dict[str, Path]
) -> None:
    short = engine.submit(GenerationRequest((1, 2), 10, adapter="v1"))
    capped = engine.submit(GenerationRequest((3, 4, 5, 6), 3))
    added = llm().llm_engine.added
    assert [lora for *_, lora in added] == [FakeLoRARequest("v1", 1, str(adapters["v1"])), None]
    assert added[0][1] == {"prompt_token_ids": [1, 2]}

    engine.step()
    assert short.read() == [101] and capped.read() == [103]
    assert short.read() == []  # each token is read once
    engine.step()
    engine.step()
    assert short.read() == [102, EOS] and short.finished and short.reason == "stop"
    assert capped.read() == [104, 105] and capped.finished and capped.reason == "length"
    engine.step()  # nothing left: vLLM is not stepped
    assert engine.generate([GenerationRequest((7,), 2)]) == [Finished([107, EOS], "stop")]


def test_stream_yields_tokens_and_closing_it_cancels_the_request(engine: VLLMEngine) -> None:
    assert [t for new in engine.stream(GenerationRequest((1, 2, 3), 10)) for t in new] == [101, 102, 103, EOS]

    stream = engine.stream(GenerationRequest((4, 5, 6), 10, adapter="v2"))
    assert next(stream) == [104]
    stream.close()
    (request_id, *_) = llm().llm_engine.added[-1]
    assert llm().llm_engine.aborted == [request_id]
    assert engine.generate([GenerationRequest((7,), 2)]) == [Finished([107, EOS], "stop")]  # nothing left running


def test_generate_waits_for_no_submitted_request_and_close_cancels_them(engine: VLLMEngine) -> None:
    running = engine.submit(GenerationRequest((1, 2), 10))
    with pytest.raises(RuntimeError, match="1 submitted requests still run"):
        engine.generate([GenerationRequest((3,), 2)])
    engine.close()
    assert running.finished and llm().llm_engine.aborted == ["fine-tune-dag-0", "shutdown"]


# the n-gram ban


@pytest.mark.parametrize(
    ("output", "size", "banned"),
    [
        ([], 2, []),
        ([7], 2, []),
        ([7, 7], 2, [7]),  # the answer's own pair (7, 7) may not come again
        ([1, 2, 3, 1, 2], 3, [3]),
        ([1, 2, 1, 4, 1], 2, [2, 4]),
        ([1, 2, 3, 1, 2], 1, [1, 2, 3]),
        ([1, 2, 3, 4], 2, []),
        ([1, 2, 3], 0, []),
    ],
)
def test_banned_tokens_are_those_that_would_repeat_an_ngram_of_the_answer(
    output: list[int], size: int, banned: list[int]
) -> None:
    assert banned_tokens(output, size) == banned


def test_the_processor_class_is_built_on_vllms_request_adapter_and_bans_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class AdapterLogitsProcessor:
        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            self.req_info: dict[int, Any] = {}

    processors = types.ModuleType("vllm.v1.sample.logits_processor")
    processors.AdapterLogitsProcessor = AdapterLogitsProcessor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", processors)
    engine_module._no_repeat_ngram_class.cache_clear()
    try:
        module_path, name = NO_REPEAT_NGRAM.split(":")
        cls = getattr(importlib.import_module(module_path), name)  # as vLLM loads it by name
        assert issubclass(cls, AdapterLogitsProcessor) and cls is engine_module.NoRepeatNGram
        assert pickle.loads(pickle.dumps(cls)) is cls

        processor = cls(None, torch.device("cpu"), False)
        assert processor.is_argmax_invariant() is False
        assert processor.new_req_logits_processor(SimpleNamespace(extra_args=None)) is None
        assert processor.new_req_logits_processor(SimpleNamespace(extra_args={"no_repeat_ngram_size": 0})) is None
        with pytest.raises(ValueError, match="no_repeat_ngram_size"):
            cls.validate_params(SimpleNamespace(extra_args={"no_repeat_ngram_size": -1}))

        ban = processor.new_req_logits_processor(SimpleNamespace(extra_args={"no_repeat_ngram_size": 2}))
        output = [3, 1, 3]
        row = torch.zeros(6)
        assert ban(output, row) is row  # changed in place
        assert row.tolist() == [0, float("-inf"), 0, 0, 0, 0]
        output.append(1)  # vLLM's list grows as tokens are chosen
        assert ban_repeated_ngrams(2, output, torch.zeros(6)).tolist() == [0, 0, 0, float("-inf"), 0, 0]
    finally:
        engine_module._no_repeat_ngram_class.cache_clear()
