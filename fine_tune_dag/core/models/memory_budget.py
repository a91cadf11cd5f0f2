"""How much a training micro-batch or a decoding batch may hold, so a stage stays within a memory budget.

The sizes come from the model's config, not from trying: a transformer layer's activations grow with the tokens
it reads, its key/value cache with the tokens it keeps, and both are known before the first step. The budget is
what the whole process may hold; what it holds already (imports, the loaded weights) is read when the plan is made.
Unless set, the budget follows the machine (`resolve_memory_budget`).

Coefficients were read off the bundled model (SmolLM2, LoRA on every linear layer, dropout 0.05) with
`torch.autograd.graph.saved_tensors_hooks` at 8 rows of 507 tokens: 39.4 KB a token a layer in bfloat16 against
42.6 KB measured (the rest: weights that autograd also keeps a reference to, and the output layer's logits).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

from fine_tune_dag.core.common.memory import available_memory_bytes, resident_bytes

GIB = 2**30
MEMORY_BUDGET_FLOOR_GB = 2.5  # an 8 GB laptop, with room for the system, a browser and the Dagster UI
# how every memory_budget_gb setting describes its default
MEMORY_BUDGET_HELP = (
    f"None (the default): half of the memory available when the stage starts, at least {MEMORY_BUDGET_FLOOR_GB:g} GB"
)
HEADROOM = 1.5  # estimates below are of live tensors; the allocator and temporaries need room around them


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a Hugging Face decoder config (Llama, Mistral, Qwen and their kin name these fields alike)."""
        heads = config.num_attention_heads
        hidden = config.hidden_size
        return cls(
            layers=config.num_hidden_layers,
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", 4 * hidden),
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            vocab=config.vocab_size,
        )


def layer_activation_bytes(shape: ModelShape, tokens: int, length: int, element: int) -> int:
    """What backward keeps of one layer over `tokens` tokens in rows of `length`: the inputs of the attention
    and MLP projections and of their LoRA branches (dropout copies included), the attention's queries, keys,
    values and output, RMSNorm's float32 copies, and the expanded attention mask (a row of `length` a token)."""
    per_token = 16 * shape.hidden * element + 8 * shape.hidden + 5 * shape.intermediate * element + length * element
    return tokens * per_token


def output_layer_bytes(shape: ModelShape, answer_tokens: int, element: int) -> int:
    """The logits at each answer position, kept for backward, which writes their gradient over them
    (`loop.answer_token_losses`)."""
    return answer_tokens * shape.vocab * element


def training_bytes(
    shape: ModelShape, rows: int, length: int, answer_tokens: int, element: int, checkpointing: bool
) -> int:
    """Activations of one micro-batch of `rows` × `length` tokens, `answer_tokens` of each row scored. With
    checkpointing, each layer's input is kept and one layer at a time is recomputed."""
    tokens = rows * length
    layer = layer_activation_bytes(shape, tokens, length, element)
    kept = shape.layers * tokens * shape.hidden * element + layer if checkpointing else shape.layers * layer
    return kept + output_layer_bytes(shape, rows * answer_tokens, element)


def reading_bytes(shape: ModelShape, rows: int, length: int, element: int) -> int:
    """The largest passage through one layer without gradients: MLP intermediates, and attention scores where
    no fused kernel runs."""
    intermediates = rows * length * (3 * shape.intermediate + 4 * shape.hidden) * element
    return intermediates + rows * shape.heads * length * length * element


def decoding_bytes(shape: ModelShape, rows: int, prompt_length: int, new_tokens: int, element: int) -> int:
    """A decoding batch: its key/value cache for prompt and answer, reading the prompts, and each row's logits."""
    columns = prompt_length + new_tokens
    cache = 2 * shape.layers * rows * columns * shape.kv_heads * shape.head_dim * element
    return cache + reading_bytes(shape, rows, prompt_length, element) + rows * shape.vocab * 4


@dataclass(frozen=True)
class MemoryBudget:
    """The most a stage's process may hold (GB, counted in GiB like every size here), and why that much."""

    gb: float
    reason: str


def resolve_memory_budget(explicit: float | None) -> MemoryBudget:
    """`explicit` when set; else half the memory available now (a stage resolves it when it starts), at least
    `MEMORY_BUDGET_FLOOR_GB`.

    Available, not total: what other programs hold is not ours to plan with. Half: the other half is for what
    starts after the stage (a browser, the Dagster UI, a second stage in another process) and for the page cache
    the weights are read through, and it is a margin for the estimates, which count live tensors only. An 8 GB
    laptop has about 3–5 GiB available and gets the floor; a 24 GB machine with 20 GiB available gets 10, where
    8 rows of the bundled model's longest passages (6.8 GiB of activations with headroom) train without
    checkpointing."""
    if explicit is not None:
        return MemoryBudget(explicit, "explicit")
    available = available_memory_bytes()
    floor = f"the {MEMORY_BUDGET_FLOOR_GB:g} GB floor"
    if available is None:
        return MemoryBudget(MEMORY_BUDGET_FLOOR_GB, f"{floor}: this system does not say what memory is available")
    gib = available / GIB
    if gib / 2 < MEMORY_BUDGET_FLOOR_GB:
        return MemoryBudget(MEMORY_BUDGET_FLOOR_GB, f"{floor}: {gib:.1f} GiB available")
    return MemoryBudget(gib / 2, f"half of the {gib:.1f} GiB available when the stage started")


@dataclass(frozen=True)
class TrainingPlan:
    micro_batch: int  # rows per forward and backward; a step still sees the configured batch
    gradient_checkpointing: bool
    estimated_bytes: int  # activations of the largest micro-batch
    available_bytes: int  # the budget less what the process held when the plan was made

    def describe(self) -> str:
        return (
            f"micro-batch {self.micro_batch}, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
            f" ({self.estimated_bytes / GIB:.2f} GiB of activations for {self.available_bytes / GIB:.2f} GiB left)"
        )


def available_bytes(budget: MemoryBudget) -> int:
    """The budget less what this process holds now; what the next allocations may take (no limit: `math.inf`)."""
    if math.isinf(budget.gb):
        return sys.maxsize
    return max(0, int(budget.gb * GIB) - resident_bytes())


def plan_training(
    shape: ModelShape,
    element: int,
    batch_size: int,
    longest: int,
    answer_tokens: int,
    available: int,
    checkpointing: bool = False,
) -> TrainingPlan:
    """The cheapest way to fit micro-batches of `batch_size` rows of up to `longest` tokens, `answer_tokens` of
    them scored: as configured; with checkpointing (the same numbers, about a quarter
    more compute); then halved micro-batches with checkpointing (the same step, other dropout draws). The
    smallest, one row with checkpointing, when nothing fits."""
    options = [(batch_size, checkpointing), (batch_size, True)]
    rows = batch_size
    while rows > 1:
        rows = (rows + 1) // 2
        options.append((rows, True))
    for rows, checkpoint in options:
        needed = training_bytes(shape, rows, longest, answer_tokens, element, checkpoint)
        if needed * HEADROOM <= available:
            return TrainingPlan(rows, checkpoint, needed, available)
    return TrainingPlan(1, True, training_bytes(shape, 1, longest, answer_tokens, element, True), available)


def fitting_rows(requested: int, needed: Callable[[int], int], available: int) -> int:
    """The most rows, up to `requested`, for which `needed(rows)` bytes fit in `available` (at least one)."""
    rows = requested
    while rows > 1 and needed(rows) * HEADROOM > available:
        rows -= 1
    return max(rows, 1)
