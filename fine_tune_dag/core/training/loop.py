"""What supervised fine-tuning and DPO share: batching, answer-only losses, precision, seeding, the optimizer,
and how a finished adapter is saved. The methods (`sft.py`, `dpo.py`) are siblings over this module and never
import each other, as TRL's trainers sit over `trainer/utils.py`."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from peft import PeftModel
from peft.helpers import disable_input_dtype_casting
from transformers import get_scheduler

from fine_tune_dag.core.common.chat import TokenizedExample
from fine_tune_dag.core.models.adapters import save_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import select_device, select_dtype
from fine_tune_dag.core.models.memory_budget import (
    MemoryBudget,
    ModelShape,
    TrainingPlan,
    available_bytes,
    plan_training,
)

OUTPUT_CHUNK_BYTES = 64 * 2**20  # float32 logits scored at once without gradients


class LoopSettings(Protocol):
    """The fields every method's settings carry for the shared loop."""

    seed: int
    device: str
    dtype: str


@dataclass
class TrainingRun:
    model: PeftModel
    tokenizer: Any
    settings: Any  # the method's settings dataclass (TrainingSettings, DpoSettings), saved with the adapter
    device: str
    dtype: str
    steps: list[dict[str, float]] = field(default_factory=list)
    examples: int = 0
    dropped_too_long: int = 0
    eval_examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_early_at: int = 0  # the step early stopping ended training at; 0 when it ran to the end
    best_eval_loss: float = float("inf")
    resumed_from_step: int = 0  # the checkpoint's step when an interrupted run was picked up; 0: fresh start
    memory_budget: MemoryBudget | None = None  # what the steps were planned within, and why that much
    memory_plan: TrainingPlan | None = None  # how the memory budget shaped the steps

    def memory_budget_entries(self) -> dict[str, float | str | None]:
        """The budget and its reason, as the adapter's metadata and `training_config.json` show them."""
        budget = self.memory_budget
        return {
            "memory_budget_gb": round(budget.gb, 2) if budget else None,
            "memory_budget_reason": budget.reason if budget else None,
        }

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float:
        return self.steps[-1]["loss"] if self.steps else float("nan")


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding to the longest example; padded positions are masked by position, never by token
    id, so an EOS that shares its id with the pad token is still learned."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar lengths (as transformers' group_by_length), so padding is small."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 16
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def _scored_tokens(logits: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's NLL and whether its most likely token was the wanted one."""
    logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, wanted, reduction="none"), logits.argmax(-1) == wanted


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy over rows of logits, `chunk` rows of float32 at a time, keeping only the logits themselves
    for backward, which recomputes each chunk's softmax and writes its gradient over it. Autograd would keep every
    row's float32 log-softmax (twice the size of bfloat16 logits) and hold its gradient beside it. Softmax and its
    gradient are per row, so the numbers are the same bits as the unchunked loss."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, wanted: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(logits, wanted)
        ctx.chunk = chunk
        starts = range(0, max(len(wanted), 1), chunk)  # one empty chunk where no position is scored
        scored = [_scored_tokens(logits[i : i + chunk], wanted[i : i + chunk]) for i in starts]
        hit = torch.cat([h for _, h in scored])
        ctx.mark_non_differentiable(hit)
        return torch.cat([n for n, _ in scored]), hit

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor, _grad_hit: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, wanted = ctx.saved_tensors
        for i in range(0, len(wanted), ctx.chunk):  # each chunk's gradient replaces its logits, needed no more
            with torch.enable_grad():
                part = logits[i : i + ctx.chunk].detach().requires_grad_()
                nll, _ = _scored_tokens(part, wanted[i : i + ctx.chunk])
                (grad,) = torch.autograd.grad(nll, part, grad_nll[i : i + ctx.chunk])
            logits[i : i + ctx.chunk] = grad
        return logits, None, None


def answer_token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example summed NLL, answer-token count and correct-prediction count.

    The output layer runs only on positions that predict an answer token: most of a sequence is
    prompt, and the vocabulary projection is a large share of the compute. The loss takes `OUTPUT_CHUNK_BYTES` of
    float32 logits at a time: eight rows' float32 logits, softmax and gradients held about 0.7 GiB of a
    training step's peak on the bundled model, and as much when scoring held-out passages. Without gradients the
    projection itself runs a chunk at a time too; with them it runs once, so training's numbers are those of the
    unchunked step.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    positions = (targets != -100).nonzero(as_tuple=True)
    states, wanted = hidden[:, :-1][positions], targets[positions]
    output = base.get_output_embeddings()
    chunk = max(1, OUTPUT_CHUNK_BYTES // (4 * output.out_features))
    if torch.is_grad_enabled():
        token_nll, right = _ChunkedCrossEntropy.apply(output(states), wanted, chunk)
    else:
        starts = range(0, max(len(wanted), 1), chunk)
        scored = [_scored_tokens(output(states[i : i + chunk]), wanted[i : i + chunk]) for i in starts]
        token_nll, right = torch.cat([n for n, _ in scored]), torch.cat([h for _, h in scored])
    rows = positions[0]
    count = torch.bincount(rows, minlength=targets.shape[0])
    nll = torch.zeros(targets.shape[0], dtype=torch.float32, device=hidden.device).index_add(0, rows, token_nll)
    correct = torch.bincount(rows[right], minlength=targets.shape[0])
    return nll, count, correct


@torch.inference_mode()
def held_out_loss(
    model: Any, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> tuple[float, float]:
    """Answer-token loss and token accuracy on examples the optimizer never sees."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll_total, tokens, correct = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        nll, count, right = answer_token_losses(model, batch)
        nll_total, tokens, correct = nll_total + float(nll.sum()), tokens + int(count.sum()), correct + int(right.sum())
    model.train(was_training)
    return nll_total / max(tokens, 1), correct / max(tokens, 1)


def enable_gradient_checkpointing(model: PeftModel) -> None:
    """Non-reentrant checkpointing of every decoder layer: it replays the same dropout masks and reaches the
    adapter's gradients without the frozen embeddings' output requiring grad (transformers also sets that
    hook for input-id models, which reentrant checkpointing would need)."""
    base = model.get_base_model()
    if hasattr(base, "activation_checkpointing_enable"):  # the name since transformers 5.x; the old one warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def fit_memory_budget(
    model: PeftModel,
    dtype: torch.dtype,
    rows: int,
    sequences: Sequence[TokenizedExample],
    budget: MemoryBudget,
    checkpointing: bool,
) -> TrainingPlan:
    """The micro-batch and checkpointing that keep a step of `rows` of these sequences within the budget (see
    `memory_budget.plan_training`), with checkpointing switched on when the plan needs it."""
    longest = max(len(s.input_ids) for s in sequences)
    answers = max(sum(label != -100 for label in s.labels) for s in sequences)
    available = available_bytes(budget)
    plan = plan_training(ModelShape.of(model.config), dtype.itemsize, rows, longest, answers, available, checkpointing)
    if plan.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return plan


def seeded_device(settings: LoopSettings) -> tuple[str, torch.dtype]:
    """Seeds every generator the run draws from, and picks the device and the base weights' dtype."""
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    device = select_device(settings.device)
    return device, select_dtype(settings.dtype, device)


def optimizer_and_schedule(
    model: PeftModel, learning_rate: float, weight_decay: float, schedule: str, warmup_ratio: float, total_steps: int
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    """AdamW over the adapter's trainable weights and the learning-rate schedule with warmup."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler(schedule, optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return trainable, optimizer, scheduler


@contextmanager
def base_precision(model: PeftModel, device: str, dtype: torch.dtype) -> Iterator[torch.autocast]:
    """Beside low-precision base weights the adapter computes in that precision too (the yielded autocast, for
    the forward pass) while its weights, gradients and optimizer state stay float32; otherwise peft casts every
    adapted layer's input to float32 and its output back, copies of whole activations that hold about a quarter
    of the peak memory of a small model. The casts stay off for the whole block, backward included, where
    checkpointing reruns the layers."""
    low_precision = dtype != torch.float32
    with disable_input_dtype_casting(model, active=low_precision):
        yield torch.autocast(device_type=device, dtype=dtype, enabled=low_precision)


def next_adapter_version(adapters_dir: Path, dataset_version: str, kind: str = "") -> str:
    """Time-ordered, never reused: an existing folder is never overwritten. `kind` ("dpo") marks adapters
    not trained by supervised fine-tuning."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = "-".join(filter(None, [stamp, dataset_version[:8], kind]))
    version, n = stem, 1
    while (adapters_dir / version).exists() or (adapters_dir / f"{version}.tmp").exists():
        n += 1
        version = f"{stem}-{n}"
    return version


def save_adapter(
    run: TrainingRun,
    adapters_dir: Path,
    version: str,
    provenance: dict[str, Any],
    generation: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen: one shared default is safe)
) -> Path:
    """Weights, tokenizer, config, per-step metrics, provenance and how the adapter answers by default
    (`generation`, as `generation_config.json`), written to a temporary folder and renamed so no
    half-written adapter is ever listed."""
    final = adapters_dir / version
    tmp = adapters_dir / f"{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        run.model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        save_generation_settings(tmp, generation)
        config = {
            "version": version,
            "settings": asdict(run.settings),
            "device": run.device,
            "dtype": run.dtype,
            "examples": run.examples,
            "dropped_too_long": run.dropped_too_long,
            "tokens": run.tokens,
            "seconds": round(run.seconds, 2),
            "memory_plan": run.memory_plan.describe() if run.memory_plan else None,
            **run.memory_budget_entries(),
            **provenance,
        }
        (tmp / "training_config.json").write_text(json.dumps(config, indent=2, default=str))
        with (tmp / "metrics.csv").open("w", newline="") as handle:
            # eval columns join late, so the header is the union of every step's keys
            columns = list(dict.fromkeys(key for step in run.steps for key in step)) or ["step"]
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(run.steps)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
    return final
