"""Local generation: `generate_batch` against transformers' `model.generate`, like for like, side by side in one run.

The prompts are question-synthesis requests as the qa_pairs asset builds them (grounded and back-translation,
from heuristic passages of the sample notes), rendered with the model's chat template. Every side decodes
greedily with the same dtype, the same `max_new_tokens` and the same stopping (EOS, and the `--stop` strings if
any), and tokens are counted the same way on every side: the tokens of the returned text.

- like for like: `model.generate` on the same length-sorted, left-padded batches of `--batch-size`;
- one at a time: `model.generate` on each prompt alone, unpadded (what a single-request loop would do);
- compute roof: generated tokens/s against the machine's bf16 matmul peak at 2·N FLOPs a token (N: the
  weights a token passes through, the output head included);
- the demo's synthesis stage: every sample note's synthesis requests through the `local` provider, once on
  `generate_batch` and once on the previous path (transformers' `generate` on the same batches), note by note;
- batch invariance: greedy answers at batch 16 against batch 1, in float32 (evaluation's dtype) and bfloat16;
- llama.cpp (an anchor, when `llama-cpp-python` is installed): the bundled Q4 GGUF file, one prompt at a time.

    python bench/generation.py --prompts 32 --batch-size 16 --max-new-tokens 120 --model bundled [--json rows.json]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Callable, Sequence
from unittest.mock import patch

import torch
from results import Row, add_json_argument, machine, peak_rss_mib, peak_tflops, report

from fine_tune_dag.core.llm.local import LocalLLM
from fine_tune_dag.core.llm.types import LLMRequest
from fine_tune_dag.core.modeling.chat import render_prompt_ids
from fine_tune_dag.core.modeling.decoding import left_pad
from fine_tune_dag.core.modeling.generation import continuation_text, generate_batch
from fine_tune_dag.core.modeling.models import (
    BUNDLED_MODEL,
    bundled_gguf_file,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    select_device,
    select_dtype,
)
from fine_tune_dag.core.text.chunking import ChunkingSettings, Passage, heuristic_passages
from fine_tune_dag.core.text.ingest import discover_notes, parse_note
from fine_tune_dag.core.text.synthesis import MODES, SynthesisSettings, synthesis_request

DATA = Path(__file__).resolve().parents[1] / "data"
NOTES = DATA / "notes"
MODELS = DATA / "models"  # the bundled model's conversion is kept here, as `make demo` keeps it


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


def load_model(reference: str, models_dir: Path, dtype: str) -> Loaded:
    """The model the assets would load for this reference (device and dtype picked the same way), in eval mode."""
    resolved = resolve_model(BUNDLED_MODEL if reference == "bundled" else reference, models_dir)
    device = select_device("auto")
    chosen = select_dtype(dtype, device)
    model = load_causal_lm(resolved.path, device, chosen).eval()
    label = f"{resolved.path.name} ({device}, {str(chosen).removeprefix('torch.')})"
    return Loaded(model, load_tokenizer(resolved.path), resolved.path, label)


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


@torch.inference_mode()
def transformers_batched(
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
    """The library's way: `model.generate` on length-sorted, left-padded batches (the previous path of
    `generate_batch`, which also read mixed-length prompts in groups), greedy unless `temperature` > 0."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs = [""] * len(prompts)
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention = left_pad([prompts[i] for i in rows], tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or None,
            top_p=top_p if temperature > 0 else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=list(stop_strings) or None,
            tokenizer=tokenizer,
        )
        for row, tokens in zip(rows, generated[:, input_ids.shape[1] :]):
            outputs[row] = continuation_text(tokenizer, tokens, stop_strings)
    return outputs


def one_at_a_time(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_strings: Sequence[str]
) -> list[str]:
    """`model.generate` on each prompt alone: no padding at all."""
    return [
        transformers_batched(model, tokenizer, [p], max_new_tokens, batch_size=1, stop_strings=stop_strings)[0]
        for p in prompts
    ]


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


def flops_per_token(model: Any) -> float:
    """2·N: every weight a generated token passes through, once (tied output head counted as the head)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    weights = sum(p.numel() for p in model.parameters() if p is not embedding and p is not output)
    return 2.0 * (weights + output.numel())


def weight_bytes(model: Any) -> int:
    """What a decode step reads whatever the batch: every weight once (the tied output head once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


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


def synthesis_stage(loaded: Loaded, notes_dir: Path) -> tuple[Side, Side]:
    """The demo's qa_pairs generation, note by note, through the `local` provider (its default batch size):
    on `generate_batch`, and on the previous path, taking turns."""
    client = LocalLLM(loaded.path, dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."))
    new, previous = Side(), Side()
    for requests in note_requests(notes_dir):
        new.run(loaded.tokenizer, partial(answers, client, requests))
        with patch("fine_tune_dag.core.llm.local.generate_batch", transformers_batched):
            previous.run(loaded.tokenizer, partial(answers, client, requests))
    return new, previous


def answers(client: LocalLLM, requests: Sequence[LLMRequest]) -> list[str]:
    return [result.text for result in client.complete(requests)]


def batch_invariance(
    reference: str, models_dir: Path, dtype: str, prompts: Sequence[Sequence[int]], new_tokens: int, batch_size: int
) -> float:
    """The share of greedy answers at `batch_size` identical to the same prompts' answers one at a time."""
    loaded = load_model(reference, models_dir, dtype)
    batched = generate_batch(loaded.model, loaded.tokenizer, prompts, new_tokens, batch_size=batch_size)
    alone = generate_batch(loaded.model, loaded.tokenizer, prompts, new_tokens, batch_size=1)
    return sum(a == b for a, b in zip(batched, alone)) / len(prompts)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=120, help="120: what synthesis asks for")
    parser.add_argument("--invariance-prompts", type=int, default=16, help="prompts decoded at batch 16 and alone")
    parser.add_argument(
        "--stop", action="append", default=[], help="a stop string (repeatable; $'\\n\\n' in bash); none by default"
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak (default: measured on a CPU)")
    add_model_arguments(parser)
    add_json_argument(parser)
    args = parser.parse_args()
    loaded = load_model(args.model, args.models_dir, args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = sorted(synthesis_prompts(tokenizer, args.notes, args.prompts), key=len)
    generate_batch(model, tokenizer, prompts[:2], 2, batch_size=2)  # first-call kernel set-up, on no side
    transformers_batched(model, tokenizer, prompts[:2], 2, batch_size=2)
    ours, batched, single = Side(), Side(), Side()
    for start in range(0, len(prompts), args.batch_size):  # the sides take turns batch by batch
        turn = prompts[start : start + args.batch_size]
        options = {"batch_size": args.batch_size, "stop_strings": args.stop}
        ours.run(tokenizer, partial(generate_batch, model, tokenizer, turn, args.max_new_tokens, **options))
        batched.run(tokenizer, partial(transformers_batched, model, tokenizer, turn, args.max_new_tokens, **options))
        single.run(tokenizer, partial(one_at_a_time, model, tokenizer, turn, args.max_new_tokens, args.stop))
    new_stage, previous_stage = synthesis_stage(loaded, args.notes)
    anchor = (
        llama_cpp_side(tokenizer, prompts, args.max_new_tokens) if args.model == "bundled" else "not the bundled model"
    )
    device = str(next(model.parameters()).device)
    peak, peak_source = peak_tflops(device.split(":")[0], args.peak_tflops)
    roof = peak * 1e12 / flops_per_token(model)  # tokens/s if every FLOP of the peak went into generated tokens
    # tokens/s if a step cost only reading the weights once, for a batch of rows: what a batch can reach
    bandwidth = memory_bandwidth()
    streaming_roof = args.batch_size * bandwidth / weight_bytes(model)
    invariance_prompts = prompts[:: max(1, len(prompts) // args.invariance_prompts)][: args.invariance_prompts]
    invariant = {
        dtype: batch_invariance(
            args.model, args.models_dir, dtype, invariance_prompts, args.max_new_tokens, args.batch_size
        )
        for dtype in ("float32", "bfloat16")
    }
    lengths = [len(p) for p in prompts]
    print(
        f"generation: {len(prompts)} question-synthesis prompts ({lengths[0]}–{lengths[-1]} tokens), greedy, "
        f"max_new_tokens {args.max_new_tokens}, stop {args.stop or 'EOS only'}; {loaded.label}; {machine()}\n"
    )
    print(f"{'':<52}{'seconds':>10}{'tokens':>10}{'tokens/s':>10}")
    sides = [
        (f"generate_batch, batches of {args.batch_size}", ours),
        (f"model.generate, the same batches of {args.batch_size}", batched),
        ("model.generate, one prompt at a time", single),
        ("synthesis stage, generate_batch (local provider)", new_stage),
        ("synthesis stage, previous path (local provider)", previous_stage),
    ]
    if isinstance(anchor, Side):
        sides.append(("llama.cpp, bundled Q4 GGUF, one at a time", anchor))
    for name, side in sides:
        print(f"{name:<52}{side.seconds:>10.1f}{side.tokens:>10}{side.tokens_per_second:>10.2f}")
    agree = sum(a == b for a, b in zip(ours.outputs, batched.outputs)) / len(prompts)
    print(
        f"\ngenerate_batch and model.generate give the same text for {agree:.0%} of prompts; compute roof "
        f"{roof:.0f} tokens/s ({peak:.2f} TFLOP/s, {peak_source}; {flops_per_token(model) / 1e9:.3f} GFLOP a token); "
        f"answers at batch {args.batch_size} identical to batch 1 on {len(invariance_prompts)} prompts: "
        + ", ".join(f"{d} {share:.0%}" for d, share in invariant.items())
        + (f"; llama.cpp: {anchor}" if isinstance(anchor, str) else "")
        + f"; peak RSS {peak_rss_mib():.0f} MiB\n"
    )
    speedup = ours.tokens_per_second / max(batched.tokens_per_second, 1e-9)
    rows = [
        Row(
            "generation",
            f"tokens/s, generate_batch vs model.generate, same batches of {args.batch_size}",
            ours.tokens_per_second,
            batched.tokens_per_second,
            speedup,
            "tokens/s",
            target=2.0,
        ),
        Row(
            "generation",
            "tokens/s, generate_batch vs model.generate one at a time",
            ours.tokens_per_second,
            single.tokens_per_second,
            ours.tokens_per_second / max(single.tokens_per_second, 1e-9),
            "tokens/s",
            target=5.0,
        ),
        Row(
            "generation",
            f"share of the compute roof ({roof:.0f} tokens/s), ours vs ≥ 0.10",
            ours.tokens_per_second / roof,
            0.10,
            ours.tokens_per_second / roof / 0.10,
            "share",
            target=1.0,
        ),
        Row(
            "generation",
            "share of the compute roof, model.generate batched",
            batched.tokens_per_second / roof,
            None,
            None,
            "share",
        ),
        Row(
            "generation",
            f"share of the weight-streaming roof ({streaming_roof:.0f} tokens/s at batch {args.batch_size}, "
            f"{bandwidth / 1e9:.1f} GB/s)",
            ours.tokens_per_second / streaming_roof,
            None,
            None,
            "share",
        ),
        Row(
            "generation",
            "demo synthesis stage, speed: previous path's time ÷ generate_batch's",
            new_stage.seconds,
            previous_stage.seconds,
            previous_stage.seconds / max(new_stage.seconds, 1e-9),
            "s",
            target=1.35,  # 35% faster: 1.35 times the requests a second (26% less time)
        ),
        Row(
            "generation",
            f"greedy answers identical, batch {args.batch_size} vs 1, float32 (evaluation)",
            invariant["float32"],
            1.0,
            invariant["float32"],
            "share",
            target=1.0,
        ),
        Row(
            "generation",
            f"greedy answers identical, batch {args.batch_size} vs 1, bfloat16",
            invariant["bfloat16"],
            None,
            None,
            "share",
        ),
    ]
    if isinstance(anchor, Side):
        rows.append(
            Row(
                "generation",
                "tokens/s, generate_batch vs llama.cpp one at a time (Q4 GGUF)",
                ours.tokens_per_second,
                anchor.tokens_per_second,
                ours.tokens_per_second / max(anchor.tokens_per_second, 1e-9),
                "tokens/s",
            )
        )
    report(rows, args.json)


if __name__ == "__main__":
    main()
