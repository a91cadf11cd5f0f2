"""Local generation: `generate_batch` (batches of 16) against one prompt at a time, side by side in one run.

The prompts are question-synthesis requests as the qa_pairs asset builds them (grounded and
back-translation, from heuristic passages of the sample notes), rendered with the model's chat template.
Both sides decode greedily with a KV cache, the same `max_new_tokens` and the same stopping (EOS, and the
`--stop` strings if any); the baseline is plain `model.generate` on one unpadded prompt at a time. Tokens
are counted the same way on both sides: the tokens of the returned text (up to EOS or a stop string).
Greedy decoding in bfloat16 rounds a batch of rows differently from a single row, so the two can part ways
after a while: the share of identical outputs is reported, not required (`--dtype float32` to compare exactly).

    python bench/generation.py --prompts 32 --batch-size 16 --max-new-tokens 64 --model bundled [--json rows.json]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import cycle, islice
from os.path import commonprefix
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from results import Row, add_json_argument, machine, peak_rss_mib, report

from fine_tune_dag.core.modeling.chat import render_prompt_ids
from fine_tune_dag.core.modeling.generation import StopStrings, continuation_text, generate_batch
from fine_tune_dag.core.modeling.models import (
    BUNDLED_MODEL,
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


@torch.inference_mode()
def one_at_a_time(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_strings: Sequence[str]
) -> list[str]:
    """The obvious alternative: `model.generate` on each prompt alone (no padding), greedy, KV cache on."""
    device = next(model.parameters()).device
    stops = StopStrings(tokenizer, stop_strings)
    outputs = []
    for prompt in prompts:
        input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=stops.after(len(prompt)),
        )
        outputs.append(continuation_text(tokenizer, generated[0, len(prompt) :], stops.strings))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--stop", action="append", default=[], help="a stop string (repeatable; $'\\n\\n' in bash); none by default"
    )
    add_model_arguments(parser)
    add_json_argument(parser)
    args = parser.parse_args()
    loaded = load_model(args.model, args.models_dir, args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    # generate_batch's own batches (length-sorted runs of batch_size), so the sides can take turns batch by
    # batch and a change in the machine's other load falls on both alike
    prompts = sorted(synthesis_prompts(tokenizer, args.notes, args.prompts), key=len)
    generate_batch(model, tokenizer, prompts[:2], 2, batch_size=2)  # first-call kernel set-up, on neither side
    batched, single = Side(), Side()
    for start in range(0, len(prompts), args.batch_size):
        turn = prompts[start : start + args.batch_size]
        batched.run(
            tokenizer,
            partial(
                generate_batch,
                model,
                tokenizer,
                turn,
                args.max_new_tokens,
                batch_size=args.batch_size,
                stop_strings=args.stop,
            ),
        )
        single.run(tokenizer, partial(one_at_a_time, model, tokenizer, turn, args.max_new_tokens, args.stop))
    agree = sum(a == b for a, b in zip(batched.outputs, single.outputs)) / len(prompts)
    shared = [len(commonprefix([a, b])) / max(len(a), len(b), 1) for a, b in zip(batched.outputs, single.outputs)]
    lengths = sorted(len(p) for p in prompts)
    print(
        f"generation: {len(prompts)} question-synthesis prompts ({lengths[0]}–{lengths[-1]} tokens), greedy, "
        f"max_new_tokens {args.max_new_tokens}, stop {args.stop or 'EOS only'}; {loaded.label}; {machine()}\n"
    )
    print(f"{'':<34}{'seconds':>10}{'tokens':>10}{'tokens/s':>10}")
    for name, side in (
        (f"generate_batch, batch {args.batch_size}", batched),
        ("model.generate, one at a time", single),
    ):
        print(f"{name:<34}{side.seconds:>10.1f}{side.tokens:>10}{side.tokens_per_second:>10.2f}")
    print(
        f"outputs identical: {agree:.0%}; on average the two agree on the first {sum(shared) / len(shared):.0%} "
        f"of the longer text; peak RSS {peak_rss_mib():.0f} MiB\n"
    )
    rows = [
        Row(
            "generation",
            f"generated tokens/s (batch {args.batch_size} vs one at a time)",
            batched.tokens_per_second,
            single.tokens_per_second,
            batched.tokens_per_second / max(single.tokens_per_second, 1e-9),
            "tokens/s",
            target=5.0,
        ),
        Row("generation", "greedy outputs identical to one at a time", agree, 1.0, agree, "share"),
    ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
