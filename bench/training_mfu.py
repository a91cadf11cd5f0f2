"""bf16 LoRA training throughput and model FLOP utilisation (MFU) of `train_lora`, for the bundled model and
for a Llama-shaped model of about 1.2B parameters (Llama 3.2 1B's shape) built from a config with random
weights, so no hub is needed.

MFU = model FLOPs per second / the device's peak bf16 rate. A LoRA step runs the frozen base forward (2·N
FLOPs a token) and backward through it for the activations only (another 2·N; the frozen weights get no
gradient), so model FLOPs are counted as 4·N per token, N the base's parameters; the adapter and attention
scores are left out (small at these lengths), so the figure is a slight underestimate. The peak is the
datasheet's dense bf16 rate for known GPUs (`--peak-tflops` for others); on a CPU it is measured here, as the
best rate of a 4096² bf16 matrix product, so CPU MFU reads "share of what this CPU's matrix units reach".
The first step (warm-up, kernel selection) is not timed.

    python bench/training_mfu.py --steps 8 --batch-size 8   # a GPU: both models
    python bench/training_mfu.py --steps 3                  # a CPU: the bundled model (add --models llama-1b)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from generation import MODELS
from results import Row, add_json_argument, machine, peak_rss_mib, report
from training import conversations
from transformers import AutoModelForCausalLM, LlamaConfig

from fine_tune_dag.core.modeling.models import (
    BUNDLED_MODEL,
    count_parameters,
    load_tokenizer,
    resolve_model,
    select_device,
)
from fine_tune_dag.core.modeling.sft import TrainingSettings, train_lora

# dense bf16 tensor-core peaks from the datasheets, TFLOP/s, by a part of torch's device name
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
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


def peak_tflops(device: str, given: float | None) -> tuple[float, str]:
    """The bf16 peak MFU is measured against, and where it came from."""
    if given:
        return given, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for part, tflops in GPU_PEAK_TFLOPS.items():
            if part in name:
                return tflops, f"{name} datasheet"
        raise SystemExit(f"no datasheet peak for {name}: pass --peak-tflops")
    a = torch.randn(4096, 4096, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(4):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * 4096**3 / best / 1e12, "measured 4096² bf16 matmul"


def random_llama(folder: Path, tokenizer_from: Path) -> Path:
    """Llama 3.2 1B's shape with random weights, and the bundled tokenizer (its ids fit the larger vocabulary)."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LLAMA_1B, dtype=torch.bfloat16).save_pretrained(folder)
    load_tokenizer(tokenizer_from).save_pretrained(folder)
    return folder


def measure(model_path: Path, steps: int, batch_size: int, examples: int) -> dict[str, float]:
    """tokens/s over every step but the first, and the base's parameter count."""
    tokenizer = load_tokenizer(model_path)
    data = conversations(tokenizer, examples, seed=0)
    logged: list[dict[str, float]] = []
    settings = TrainingSettings(
        max_steps=steps, batch_size=batch_size, dtype="bfloat16", eval_fraction=0.0, logging_steps=1, checkpoint_steps=0
    )
    run = train_lora(model_path, data, settings, on_log=lambda metrics, _: logged.append(metrics))
    first, last = logged[0], logged[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    parameters = count_parameters(run.model.get_base_model()) - sum(
        p.numel() for p in run.model.parameters() if p.requires_grad
    )
    return {"tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / seconds, "parameters": parameters}


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
            achieved = 4 * result["parameters"] * result["tokens_per_s"] / 1e12
            print(
                f"  {name}: {result['parameters'] / 1e9:.2f}B parameters, {result['tokens_per_s']:.0f} tokens/s, "
                f"{achieved:.2f} TFLOP/s, MFU {achieved / peak:.1%}; peak RSS {peak_rss_mib():.0f} MiB"
            )
            rows.append(
                Row("training", f"{name} bf16 LoRA tokens/s on {device}", result["tokens_per_s"], None, None, "tok/s")
            )
            rows.append(
                Row("training", f"{name} MFU (4·N FLOPs/token vs {source})", achieved / peak, None, None, "share")
            )
    report(rows, args.json)


if __name__ == "__main__":
    main()
