"""Local generation: the engine (OpenVINO GenAI) against the decode loop it replaced and transformers' `model.generate`,
like for like, side by side in one run.

The prompts are question-synthesis requests as the qa_pairs asset builds them (grounded and back-translation,
from heuristic passages of the sample notes), rendered with the model's chat template. Every side decodes the
same weights (the bundled model) greedily, with the same `max_new_tokens`, the same stopping (EOS, and the
`--stop` strings if any) and at most `--batch-size` rows at once, and tokens are counted the same way on every
side: the tokens of the returned text. The sides take turns batch by batch, on the CPU:

- the engine: OpenVINO GenAI's continuous batching on the project's f16 GGUF, float32 inference, through
  `generate_batch` as every stage calls it;
- the previous loop (`previous_decoding.decode`, what `generate_batch` ran before the engines) in `--dtype`
  (bfloat16 by default: how it ran where the earlier figures were recorded), and again in float32, like for like
  with the engine's arithmetic;
- `model.generate` in `--dtype` on the same length-sorted, left-padded batches;
- the weight-streaming roof: tokens/s if a step cost only reading the engine's f16 weights once for a batch;
- the demo's synthesis stage: every sample note's synthesis requests through the `local` provider, note by note,
  on the engine, on transformers' `generate` and on the previous loop;
- batch invariance: the engine's greedy answers at batch 16 against batch 1, in f32 and bf16 inference;
- the engine's GGUF conversion of the bundled model: made from nothing, then found again (verified only);
- llama.cpp (an anchor, when `llama-cpp-python` is installed): the bundled Q4 GGUF file, one prompt at a time.

vLLM needs a CUDA GPU and is not measured here.

    python bench/generation.py --prompts 32 --batch-size 16 --max-new-tokens 120 --model bundled [--json rows.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Callable, Sequence
from unittest.mock import patch

import torch
from previous_decoding import Decoding, decode, left_pad
from results import Row, add_json_argument, machine, peak_rss_mib, report

from fine_tune_dag.core.common.chat import render_prompt_ids
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.generation.base import EngineSettings, GenerationEngine
from fine_tune_dag.core.generation.batch import continuation_text, generate_batch
from fine_tune_dag.core.generation.conversion import engine_gguf
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.ingest.notes import discover_notes, parse_note
from fine_tune_dag.core.llm.local import LocalLLM
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, bundled_gguf_file, resolve_model
from fine_tune_dag.core.synthesis.chunking import ChunkingSettings, Passage, heuristic_passages
from fine_tune_dag.core.synthesis.qa_pairs import MODES, SynthesisSettings, synthesis_request

DATA = Path(__file__).resolve().parents[1] / "data"
NOTES = DATA / "notes"
MODELS = DATA / "models"  # the bundled model's conversion is kept here, as `make demo` keeps it
ENGINE_WEIGHT_BYTES = 2  # the engine streams the GGUF's f16 weights, whatever precision it computes in


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bundled", help="'bundled' (SmolLM2-135M-Instruct) or a model folder")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the bundled model is converted once")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on AMX CPUs, as the assets do) or a torch dtype"
    )
    parser.add_argument("--notes", type=Path, default=NOTES, help="notes the prompts are built from")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    path: Path
    label: str  # folder, device and dtype, for the printed header


def load_model(reference: str, models_dir: Path, dtype: str, device: str = "auto") -> Loaded:
    """The model the assets would load for this reference (device and dtype picked the same way), in eval mode."""
    resolved = resolve_model(BUNDLED_MODEL if reference == "bundled" else reference, models_dir)
    device = select_device(device)
    chosen = select_dtype(dtype, device)
    model = load_causal_lm(resolved.path, device, chosen).eval()
    label = f"{resolved.path.name} ({device}, {str(chosen).removeprefix('torch.')})"
    return Loaded(model, load_tokenizer(resolved.path), resolved.path, label)


def dtype_name(model: Any) -> str:
    return str(model.dtype).removeprefix("torch.")


def sample_passages(notes_dir: Path) -> list[Passage]:
    """Every passage of every note, cut as the passages asset's heuristic strategy cuts them."""
    settings = ChunkingSettings(strategy="heuristic")
    passages = []
    for note_id, path in discover_notes(notes_dir).items():
        note = parse_note(path, notes_dir)
        passages += heuristic_passages(note_id, note.text, note.title, settings).passages
    return passages


def synthesis_prompts(tokenizer: Any, notes_dir: Path, count: int) -> list[list[int]]:
    """`count` question-synthesis prompts (every mode for each passage, passages reused when too few)."""
    settings = SynthesisSettings()
    requests = [synthesis_request(p, mode, settings) for p in sample_passages(notes_dir) for mode in MODES]
    return [render_prompt_ids(tokenizer, r.chat()) for r in islice(cycle(requests), count)]


def note_requests(notes_dir: Path) -> list[list[LLMRequest]]:
    """Each sample note's synthesis requests (every mode for each heuristic passage), as qa_pairs sends them."""
    settings = SynthesisSettings()
    by_note: dict[str, list[LLMRequest]] = {}
    for passage in sample_passages(notes_dir):
        by_note.setdefault(passage.note_id, []).extend(synthesis_request(passage, m, settings) for m in MODES)
    return list(by_note.values())


def previous_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    **_: Any,
) -> list[str]:
    """What `generate_batch` did before the engines: prompts in order of length through the previous decode loop,
    at most `batch_size` rows at once, each row's tokens gathered as the steps yield them."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    limits = [max_new_tokens] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    decoding = Decoding(temperature, top_p, 0, seed)
    for step in decode(
        model, tokenizer, [prompts[i] for i in order], limits, decoding, tuple(stop_strings), batch_size
    ):
        for slot, new in step.tokens.items():
            tokens[order[slot]].extend(new)
    return [continuation_text(tokenizer, t, stop_strings) for t in tokens]


@torch.inference_mode()
def transformers_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """The library's way: `model.generate`, greedy, on length-sorted, left-padded batches."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention = left_pad([prompts[i] for i in rows], tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=list(stop_strings) or None,
            tokenizer=tokenizer,
        )
        for row, tokens in zip(rows, generated[:, input_ids.shape[1] :]):
            outputs[row] = continuation_text(tokenizer, tokens, stop_strings)
    return outputs


@dataclass
class Side:
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0  # tokens of the returned texts

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def run(self, tokenizer: Any, work: Callable[[], list[str]]) -> None:
        started = time.perf_counter()
        outputs = work()
        self.seconds += time.perf_counter() - started
        self.outputs += outputs
        self.tokens += sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)


def openvino_engine(path: Path, tokenizer: Any, precision: str, max_batch: int) -> GenerationEngine:
    """OpenVINO GenAI on the model's GGUF; a bench of the engine refuses the transformers fallback."""
    engine = open_engine(path, {}, tokenizer, EngineSettings("openvino", precision, max_batch), "cpu")
    if engine.choice.engine != "openvino":
        raise SystemExit(f"OpenVINO GenAI did not open: {engine.choice.reason}")
    return engine


def memory_bandwidth() -> float:
    """Bytes per second this machine copies a tensor far larger than its caches (read plus write)."""
    source = torch.ones(128 * 2**20, dtype=torch.float32)  # 512 MiB
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(4):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best


def answers(client: LocalLLM, requests: Sequence[LLMRequest]) -> list[str]:
    return [result.text for result in client.complete(requests)]


def on_previous_loop(
    engine: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *args: Any, **kwargs: Any
) -> list[str]:
    """`generate_batch` as the `local` provider calls it, answered by the previous loop on the engine's torch model."""
    return previous_loop(engine.model, tokenizer, prompts, max_new_tokens, *args, **kwargs)


def synthesis_stage(path: Path, tokenizer: Any, dtype: str, notes_dir: Path) -> dict[str, Side]:
    """The demo's qa_pairs generation, note by note, through the `local` provider at its default batch size: on
    the engine, on transformers' `generate` and on the previous loop, taking turns. Each client is loaded and
    warmed up first, as a run's client is once per process."""
    engine = LocalLLM(path, device="cpu", engine="openvino")
    torch_client = LocalLLM(path, device="cpu", dtype=dtype, engine="transformers")
    notes = note_requests(notes_dir)
    warm_up = [replace(notes[0][0], max_new_tokens=2)]
    answers(engine, warm_up)
    answers(torch_client, warm_up)
    sides = {"engine": Side(), "transformers": Side(), "previous": Side()}
    for requests in notes:
        sides["engine"].run(tokenizer, partial(answers, engine, requests))
        sides["transformers"].run(tokenizer, partial(answers, torch_client, requests))
        with patch("fine_tune_dag.core.llm.local.generate_batch", on_previous_loop):
            sides["previous"].run(tokenizer, partial(answers, torch_client, requests))
    return sides


def batch_invariance(
    path: Path, tokenizer: Any, precision: str, prompts: Sequence[Sequence[int]], new_tokens: int, batch_size: int
) -> float:
    """The share of the engine's greedy answers at `batch_size` identical to the same prompts' answers one at a
    time, at inference precision `precision`."""
    texts = []
    for max_batch in (batch_size, 1):
        engine = openvino_engine(path, tokenizer, precision, max_batch)
        texts.append(generate_batch(engine, tokenizer, prompts, new_tokens, batch_size=max_batch))
        engine.close()
    return sum(a == b for a, b in zip(*texts)) / len(prompts)


def conversion_seconds(model_dir: Path) -> tuple[float, float]:
    """Seconds to make the engine's GGUF of `model_dir` from nothing, then to find it again (checksum verified,
    nothing converted): in a scratch models folder whose model links to the real files, so the conversion the
    other sides run is left alone."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / model_dir.name
        copy.mkdir()
        for file in model_dir.iterdir():
            (copy / file.name).symlink_to(file.resolve())
        started = time.perf_counter()
        first = engine_gguf(copy)
        middle = time.perf_counter()
        again = engine_gguf(copy)
        ended = time.perf_counter()
    if not first.built or again.built:
        raise SystemExit(f"the scratch conversion was {'not ' if not first.built else ''}built, then rebuilt: {again}")
    return middle - started, ended - middle


def llama_cpp_side(tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Side | str:
    """llama.cpp on the bundled Q4 GGUF file, one prompt at a time, greedy: a Side, or why there is none."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python builds it from source)"
    engine = Llama(model_path=str(bundled_gguf_file()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    side = Side()

    def generate() -> list[str]:
        texts = []
        for prompt in prompts:
            out = engine.create_completion(list(prompt), max_tokens=max_new_tokens, temperature=0.0, top_k=1)
            texts.append(out["choices"][0]["text"].strip())
        return texts

    side.run(tokenizer, generate)
    return side


def ratio(a: float, b: float) -> float:
    return a / max(b, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=120, help="120: what synthesis asks for")
    parser.add_argument("--invariance-prompts", type=int, default=16, help="prompts decoded at batch 16 and alone")
    parser.add_argument(
        "--stop", action="append", default=[], help="a stop string (repeatable; $'\\n\\n' in bash); none by default"
    )
    add_model_arguments(parser)
    # the torch sides' dtype: bfloat16, as the previous loop ran where the earlier figures were recorded (AMX)
    parser.set_defaults(dtype="bfloat16")
    add_json_argument(parser)
    args = parser.parse_args()
    loaded = load_model(args.model, args.models_dir, args.dtype, "cpu")
    full = load_model(args.model, args.models_dir, "float32", "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = openvino_engine(loaded.path, tokenizer, "f32", args.batch_size)
    engine_bf16 = openvino_engine(loaded.path, tokenizer, "bf16", args.batch_size)
    prompts = sorted(synthesis_prompts(tokenizer, args.notes, args.prompts), key=len)
    options = {"batch_size": args.batch_size, "stop_strings": args.stop}
    sides: dict[str, tuple[Side, Callable[..., list[str]]]] = {
        "engine": (Side(), partial(generate_batch, engine, tokenizer)),
        "engine bf16": (Side(), partial(generate_batch, engine_bf16, tokenizer)),
        "loop": (Side(), partial(previous_loop, model, tokenizer)),
        "generate": (Side(), partial(transformers_batched, model, tokenizer)),
        "loop f32": (Side(), partial(previous_loop, full.model, tokenizer)),
    }
    for _, work in sides.values():
        work(prompts[:2], 2, batch_size=2)  # first-call set-up (the engine's pipeline, kernels), on no side
    for start in range(0, len(prompts), args.batch_size):  # the sides take turns batch by batch
        turn = prompts[start : start + args.batch_size]
        for side, work in sides.values():
            side.run(tokenizer, partial(work, turn, args.max_new_tokens, **options))
    engine.close()
    engine_bf16.close()
    ours, ours_bf16, loop, batched, loop_f32 = (side for side, _ in sides.values())
    stage = synthesis_stage(loaded.path, tokenizer, args.dtype, args.notes)
    anchor = (
        llama_cpp_side(tokenizer, prompts, args.max_new_tokens) if args.model == "bundled" else "not the bundled model"
    )
    parameters = sum(p.numel() for p in model.parameters())  # the tied output head once
    engine_bytes = ENGINE_WEIGHT_BYTES * parameters
    bandwidth = memory_bandwidth()
    # tokens/s if a step cost only reading the weights once, for a batch of rows: what a batch can reach
    streaming_roof = args.batch_size * bandwidth / engine_bytes
    loop_roof = args.batch_size * bandwidth / (parameters * model.dtype.itemsize)
    invariance_prompts = prompts[:: max(1, len(prompts) // args.invariance_prompts)][: args.invariance_prompts]
    invariant = {
        precision: batch_invariance(
            loaded.path, tokenizer, precision, invariance_prompts, args.max_new_tokens, args.batch_size
        )
        for precision in ("f32", "bf16")
    }
    first_conversion, reuse = conversion_seconds(loaded.path)
    torch_dtype = dtype_name(model)
    engine_label = "engine (OpenVINO f32 on f16 GGUF)"
    bf16_label = "engine (OpenVINO bf16 on f16 GGUF, the default of a stage whose dtype is auto)"
    lengths = [len(p) for p in prompts]
    print(
        f"generation: {len(prompts)} question-synthesis prompts ({lengths[0]}–{lengths[-1]} tokens), greedy, "
        f"max_new_tokens {args.max_new_tokens}, at most {args.batch_size} rows at once, stop "
        f"{args.stop or 'EOS only'}; {loaded.path.name} on the CPU; {machine()}\n"
    )
    print(f"{'':<62}{'seconds':>10}{'tokens':>10}{'tokens/s':>10}")
    printed = [
        (f"{engine_label}, generate_batch", ours),
        ("engine (OpenVINO bf16), generate_batch", ours_bf16),
        (f"previous loop ({torch_dtype})", loop),
        (f"model.generate ({torch_dtype}), the same batches", batched),
        ("previous loop (float32)", loop_f32),
        ("synthesis stage, engine (local provider)", stage["engine"]),
        (f"synthesis stage, transformers' generate ({torch_dtype})", stage["transformers"]),
        (f"synthesis stage, previous loop ({torch_dtype})", stage["previous"]),
    ]
    if isinstance(anchor, Side):
        printed.append(("llama.cpp, bundled Q4 GGUF, one at a time", anchor))
    for name, side in printed:
        print(f"{name:<62}{side.seconds:>10.1f}{side.tokens:>10}{side.tokens_per_second:>10.2f}")
    agree = {
        name: sum(a == b for a, b in zip(ours.outputs, side.outputs)) / len(prompts)
        for name, side in (("loop " + torch_dtype, loop), ("loop float32", loop_f32), ("generate", batched))
    }
    print(
        "\nthe engine's text is the same as "
        + ", ".join(f"{name}'s for {share:.0%}" for name, share in agree.items())
        + f" of prompts; engine answers at batch {args.batch_size} identical to batch 1 on "
        f"{len(invariance_prompts)} prompts: "
        + ", ".join(f"{p} {share:.0%}" for p, share in invariant.items())
        + f"; weight-streaming roof {streaming_roof:.0f} tokens/s ({parameters / 1e6:.1f}M parameters × "
        f"{ENGINE_WEIGHT_BYTES} bytes a step, {bandwidth / 1e9:.1f} GB/s), the previous loop's share "
        f"{loop.tokens_per_second / loop_roof:.3f} of its own ({loop_roof:.0f} tokens/s on {torch_dtype} weights); GGUF conversion {first_conversion:.1f} s first, {reuse:.1f} s reused"
        + f"; llama.cpp: {anchor if isinstance(anchor, str) else 'measured'}"
        + f"; vLLM: not measured ({'no CUDA GPU here' if not torch.cuda.is_available() else 'a CPU bench'})"
        + f"; peak RSS {peak_rss_mib():.0f} MiB\n"
    )
    share = ours_bf16.tokens_per_second / streaming_roof
    rows = [
        Row(
            "generation",
            f"tokens/s, {bf16_label} vs previous loop ({torch_dtype}), batches of {args.batch_size}",
            ours_bf16.tokens_per_second,
            loop.tokens_per_second,
            ratio(ours_bf16.tokens_per_second, loop.tokens_per_second),
            "tokens/s",
            target=2.5,
        ),
        Row(
            "generation",
            f"tokens/s, {engine_label} vs previous loop (float32): evaluation's precision on both sides",
            ours.tokens_per_second,
            loop_f32.tokens_per_second,
            ratio(ours.tokens_per_second, loop_f32.tokens_per_second),
            "tokens/s",
        ),
        Row(
            "generation",
            f"tokens/s, {bf16_label} vs model.generate ({torch_dtype}), same batches of {args.batch_size}",
            ours_bf16.tokens_per_second,
            batched.tokens_per_second,
            ratio(ours_bf16.tokens_per_second, batched.tokens_per_second),
            "tokens/s",
        ),
        Row(
            "generation",
            f"tokens/s, {engine_label} vs previous loop ({torch_dtype}): labelled, precisions differ",
            ours.tokens_per_second,
            loop.tokens_per_second,
            ratio(ours.tokens_per_second, loop.tokens_per_second),
            "tokens/s",
        ),
        Row(
            "generation",
            f"share of the weight-streaming roof, engine bf16 ({streaming_roof:.0f} tokens/s at batch {args.batch_size}: "
            f"{engine_bytes / 1e6:.0f} MB of f16 weights a step, {bandwidth / 1e9:.1f} GB/s), vs ≥ 0.25",
            share,
            0.25,
            share / 0.25,
            "share",
            target=1.0,
        ),
        Row(
            "generation",
            f"demo synthesis stage (local provider), seconds: transformers' generate ({torch_dtype}) ÷ engine",
            stage["engine"].seconds,
            stage["transformers"].seconds,
            ratio(stage["transformers"].seconds, stage["engine"].seconds),
            "s",
        ),
        Row(
            "generation",
            f"demo synthesis stage (local provider), seconds: previous loop ({torch_dtype}) ÷ engine",
            stage["engine"].seconds,
            stage["previous"].seconds,
            ratio(stage["previous"].seconds, stage["engine"].seconds),
            "s",
        ),
        Row(
            "generation",
            f"engine greedy answers identical, batch {args.batch_size} vs 1, f32 inference",
            invariant["f32"],
            1.0,
            invariant["f32"],
            "share",
            target=1.0,
        ),
        Row(
            "generation",
            f"engine greedy answers identical, batch {args.batch_size} vs 1, bf16 inference",
            invariant["bf16"],
            None,
            None,
            "share",
        ),
        Row("generation", "engine GGUF of the bundled model, first conversion", first_conversion, None, None, "s"),
        Row("generation", "engine GGUF of the bundled model, reused (checksum verified)", reuse, None, None, "s"),
    ]
    if isinstance(anchor, Side):
        rows.append(
            Row(
                "generation",
                f"tokens/s, {engine_label} vs llama.cpp one at a time (Q4 GGUF)",
                ours.tokens_per_second,
                anchor.tokens_per_second,
                ratio(ours.tokens_per_second, anchor.tokens_per_second),
                "tokens/s",
            )
        )
    report(rows, args.json)


if __name__ == "__main__":
    main()
