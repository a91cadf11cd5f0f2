"""DPO's settings, beside its trainer as TRL keeps each method's config: torch-free, so Dagster config can name them."""

from __future__ import annotations

from dataclasses import dataclass, field

from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_HELP


@dataclass(frozen=True)
class DpoSettings:
    beta: float = field(
        default=0.1, metadata={"help": "how far the policy may move from the reference (the champion); TRL's default"}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of the adapter"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the preference pairs"})
    batch_size: int = field(default=4, metadata={"help": "preference pairs per optimizer step"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent warming the learning rate up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients are clipped to this norm"})
    max_seq_length: int = field(
        default=512, metadata={"help": "a pair with either side longer is dropped (and counted)"}
    )
    seed: int = field(default=42, metadata={"help": "seeds data order and dropout"})
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu"})
    dtype: str = field(
        default="auto", metadata={"help": "base weights: auto, bfloat16 or float32; the adapter trains in float32"}
    )
    logging_steps: int = field(default=5, metadata={"help": "how often progress is logged"})
    memory_budget_gb: float | None = field(
        default=None,
        metadata={
            "help": "the most the training process may hold: above it, gradient checkpointing and then fewer pairs "
            f"per forward pass (the same pairs per step) keep the activations within it; {MEMORY_BUDGET_HELP}"
        },
    )
