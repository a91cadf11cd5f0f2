"""bf16 LoRA training throughput and model FLOP utilisation (MFU) of `train_lora`, for the bundled model and
for a Llama-shaped model of about 1.2B parameters (Llama 3.2 1B's shape) built from a config with random
weights, so no hub is needed.

MFU = model FLOPs per second / the device's peak bf16 rate, the FLOPs counted as our loop executes them. With a
frozen base, a token's forward through the decoder layers costs 2·N_dec FLOPs and its backward, which computes
activation gradients only (the frozen weights get none), another 2·N_dec; each LoRA adapter adds 2·N_lora
forward, 2·N_lora for its weight gradients and 2·N_lora for the gradient it passes back. The output layer
(the vocabulary projection, N_head = vocabulary × hidden) runs only at answer positions (`answer_token_losses`),
forward and backward to the activations. So the FLOPs of the timed steps are

    (4·N_dec + 6·N_lora) · T  +  4·N_head · A

T the non-pad tokens fed (padding is waste, not model work), A the positions the output layer ran on, counted
by a hook on it as the steps run; N_dec the frozen weights of the decoder layers' linear maps (embeddings
excluded: a lookup, no FLOPs), N_lora the adapter's weights. Attention scores (QKᵀ and the weighted sum, about
12·layers·hidden·context FLOPs a token) are left out, small at these lengths, so the figure slightly understates.
The peak is the datasheet's dense bf16 rate for known GPUs (`--peak-tflops` for others); on a CPU it is measured
here, as the best rate of a 4096² bf16 matrix product, so CPU MFU reads "share of what this CPU's matrix units
reach". The first step (warm-up, kernel selection) is not timed.

    python bench/training_mfu.py --steps 8 --batch-size 8   # a GPU: both models
    python bench/training_mfu.py --steps 3                  # a CPU: the bundled model (add --models llama-1b)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from generation import MODELS
from peft import PeftModel
from results import Row, add_json_argument, machine, peak_rss_mib, peak_tflops, report
from torch.nn.modules.module import register_module_forward_hook
from training import conversations
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from fine_tune_dag.core.models.loading import load_tokenizer, select_device
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora

BENCHMARK = "training_mfu"
FORMULA = "FLOPs (4·N_dec+6·N_lora)·T + 4·N_head·A"  # the formula at the top, for the rows' labels
LLAMA_1B = LlamaConfig(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    rope_theta=500000.0,
)


def random_llama(folder: Path, tokenizer_from: Path) -> Path:
    """Llama 3.2 1B's shape with random weights, and the bundled tokenizer (its ids fit the larger vocabulary)."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LLAMA_1B, dtype=torch.bfloat16).save_pretrained(folder)
    load_tokenizer(tokenizer_from).save_pretrained(folder)
    return folder


@dataclass
class Measured:
    tokens_per_s: float
    flops_per_s: float
    dec: int  # N_dec, N_head, N_lora of the formula at the top
    head: int
    lora: int
    answer_share: float  # A / T over the timed steps


def frozen_weights(model: PeftModel) -> tuple[int, int, int]:
    """N_dec (the decoder layers' frozen linear weights), N_head (the output layer's) and N_lora (the adapter's)."""
    base = model.get_base_model()
    embeddings = base.get_input_embeddings().weight
    dec = sum(
        p.numel()
        for p in base.get_decoder().parameters()
        if not p.requires_grad and p.dim() == 2 and p is not embeddings
    )
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dec, base.get_output_embeddings().weight.numel(), lora


def measure(model_path: Path, steps: int, batch_size: int, examples: int) -> Measured:
    """tokens/s and model FLOPs/s over every step but the first."""
    tokenizer = load_tokenizer(model_path)
    data = conversations(tokenizer, examples, seed=0)
    vocabulary = AutoConfig.from_pretrained(model_path).vocab_size
    head_rows = [0]  # positions the output layer has run on so far

    def count_head_rows(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear) and module.out_features == vocabulary:
            head_rows[0] += output.shape[:-1].numel()

    logged: list[dict[str, float]] = []

    def log(metrics: dict[str, float], _: int) -> None:
        logged.append({**metrics, "head_rows": head_rows[0]})

    settings = TrainingSettings(
        max_steps=steps,
        batch_size=batch_size,
        dtype="bfloat16",
        eval_fraction=0.0,
        logging_steps=1,
        checkpoint_steps=0,
        memory_budget_gb=math.inf,  # the FLOPs counted are those of the configured steps, never recomputed
    )
    hook = register_module_forward_hook(count_head_rows)  # train_lora builds the model inside: a global hook
    try:
        run = train_lora(model_path, data, settings, on_log=log)
    finally:
        hook.remove()
    first, last = logged[0], logged[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    tokens, answers = last["tokens_seen"] - first["tokens_seen"], last["head_rows"] - first["head_rows"]
    dec, head, lora = frozen_weights(run.model)
    flops = (4 * dec + 6 * lora) * tokens + 4 * head * answers
    return Measured(tokens / seconds, flops / seconds, dec, head, lora, answers / tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=["bundled", "llama-1b"], help="default: both on a GPU, the bundled one on a CPU"
    )
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, when not in the table")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the bundled model is converted once")
    add_json_argument(parser)
    args = parser.parse_args()
    device = select_device("auto")
    models = args.models or (["bundled", "llama-1b"] if device == "cuda" else ["bundled"])
    peak, source = peak_tflops(device, args.peak_tflops)
    bundled = resolve_model(BUNDLED_MODEL, args.models_dir).path
    device_name = torch.cuda.get_device_name() if device == "cuda" else machine()
    print(
        f"training MFU on {device_name}: peak {peak:.1f} TFLOP/s bf16 ({source}); {args.steps} steps of {args.batch_size}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            path = bundled if name == "bundled" else random_llama(Path(folder) / name, bundled)
            result = measure(path, args.steps, args.batch_size, args.steps * args.batch_size)
            achieved = result.flops_per_s / 1e12
            print(
                f"  {name}: N_dec {result.dec / 1e6:.1f}M, N_head {result.head / 1e6:.1f}M, N_lora "
                f"{result.lora / 1e6:.2f}M; {result.tokens_per_s:.0f} tokens/s, answer positions "
                f"{result.answer_share:.0%} of them; {achieved:.2f} TFLOP/s, MFU {achieved / peak:.1%}; "
                f"peak RSS {peak_rss_mib():.0f} MiB"
            )
            rows.append(
                Row(BENCHMARK, f"{name} bf16 LoRA tokens/s on {device}", result.tokens_per_s, None, None, "tok/s")
            )
            rows.append(Row(BENCHMARK, f"{name} MFU, {FORMULA} vs {source}", achieved / peak, None, None, "share"))
    report(rows, args.json)


if __name__ == "__main__":
    main()
