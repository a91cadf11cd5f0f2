"""The decode loop the project generated with before the engines (`fine_tune_dag.core.generation`), kept here
unchanged only as the baseline `bench/generation.py` measures the engines against; nothing in the package uses it.

It was the loop every local generation ran: batched, streamed and evaluated answers alike.

Hugging Face's `generate` spent most of a batch-16 step on the 135M model outside the arithmetic: its
cache grows by concatenation (every step copies the whole cache), and each step rebuilds masks and runs
logits processors written for one row at a time. Here the cache is allocated once per batch and each step
writes one column; prompts that open alike (a synthesis template's system prompt and examples) are read
once; prompts are read in groups of similar length; and the choice of each next token, the n-gram ban
included, stays on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from os.path import commonprefix
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from fine_tune_dag.core.generation.base import token_limits

SHARED_PREFIX_TOKENS = 32  # prompts sharing fewer opening tokens are read apart: the saving would not pay the copy
DRAFT_TOKENS = 4  # drafts checked per row and step


@dataclass(frozen=True)
class Decoding:
    """How each next token is chosen. Sampling draws from a generator seeded by `seed` and the row's prompt,
    so a row's answer depends on neither the batch it runs in nor its place there."""

    temperature: float = 0.0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0


class KVSlots(Cache):
    """Keys and values of every layer in tensors allocated once (rows × heads × columns × head size): a
    decode step writes its column in place and attends to the columns before it."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        super().__init__(layers=[])
        self.keys, self.values = keys, values
        self.column = 0  # where the next step's keys and values go

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.column + key_states.shape[2]
        self.keys[layer_idx][:, :, self.column : end] = key_states
        self.values[layer_idx][:, :, self.column : end] = value_states
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.column

    def keep(self, rows: torch.Tensor, first_column: int) -> None:
        """Only `rows`, from `first_column` on: the batch without its finished rows and their padding."""
        self.keys = [k[rows, :, first_column:] for k in self.keys]
        self.values = [v[rows, :, first_column:] for v in self.values]
        self.column -= first_column

    def __len__(self) -> int:
        return len(self.keys)


def has_plain_cache(model: Any) -> bool:
    """Whether every layer keeps a plain key/value cache over all positions (no sliding window or recurrent
    state), which `KVSlots` stands in for; other models decode on transformers' own cache."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def shared_prefixes(
    prompts: Sequence[Sequence[int]], minimum: int = SHARED_PREFIX_TOKENS
) -> list[tuple[int, list[int]]]:
    """(prefix length, rows) for groups of prompts that open with the same `minimum` tokens or more; the
    rest are in one group with prefix length 0. Each prompt keeps at least its last token out of the prefix,
    whose logits choose the first new token."""
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    groups: list[tuple[int, list[int]]] = []
    loose: list[int] = []
    run: list[int] = []

    def close(rows: list[int]) -> None:
        shared = min(len(commonprefix([list(prompts[i]) for i in rows])), *(len(prompts[i]) - 1 for i in rows))
        if len(rows) > 1 and shared >= minimum:
            groups.append((shared, rows))
        else:
            loose.extend(rows)

    for index in order:
        if run and len(commonprefix([list(prompts[run[0]]), list(prompts[index])])) < minimum:
            close(run)
            run = []
        run.append(index)
    if run:
        close(run)
    return groups + ([(0, sorted(loose))] if loose else [])


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of ascending `lengths` in runs that pad little when computed together: a run ends where a
    length passes its first by more than an eighth and 32 tokens (short prompts stay in one batched pass)."""
    groups: list[list[int]] = []
    for index, length in enumerate(lengths):
        if groups and length <= lengths[groups[-1][0]] * 9 // 8 + 32:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding would put pad tokens between prompt and continuation; decoder-only models need left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    return input_ids, attention


@dataclass
class Prefill:
    """The prompts read: their cache (each row's prompt in the columns before `width`, left-padded), which
    columns hold a real token, and the logits that choose each row's first new token."""

    cache: Cache  # `KVSlots`, or transformers' own for models without a plain cache
    attends: torch.Tensor  # rows × columns, bool
    logits: torch.Tensor  # rows × vocabulary
    width: int


def prefill(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, new_tokens: int) -> Prefill:
    """Read the prompts into a cache with room for `new_tokens` more columns: a shared opening once per
    group (`shared_prefixes`), the rest in passes of similar length (`length_groups`).

    A row's positions count from its first real token, as `generate` counts for left-padded rows, so the
    keys (rotated by position) of a shared opening are the same for every row that has it."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    logits: torch.Tensor | None = None
    attends = torch.zeros((len(prompts), width + new_tokens), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        attends[row, width - len(prompt) : width] = True
    for shared, rows in shared_prefixes(prompts):
        opening = DynamicCache(config=model.config)
        if shared:
            model(
                input_ids=torch.tensor([list(prompts[rows[0]][:shared])], device=device),
                cache=opening,
                logits_to_keep=1,
            )
        rows = sorted(rows, key=lambda r: len(prompts[r]))
        for run in length_groups([len(prompts[r]) - shared for r in rows]):
            batch = [rows[i] for i in run]
            input_ids, attention = left_pad([prompts[r][shared:] for r in batch], pad_id)
            cache = DynamicCache(config=model.config)
            if shared:
                cache = DynamicCache(
                    [
                        (layer.keys.expand(len(batch), -1, -1, -1), layer.values.expand(len(batch), -1, -1, -1))
                        for layer in opening.layers
                    ]
                )
                attention = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), attention], dim=1)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                cache=cache,
                logits_to_keep=1,
            )
            if logits is None:
                logits = out.logits.new_empty((len(prompts), out.logits.shape[-1]))
            logits[batch] = out.logits[:, -1]
            for index, layer in enumerate(cache.layers):
                if len(keys) == index:
                    shape = (len(prompts), layer.keys.shape[1], width + new_tokens, layer.keys.shape[3])
                    keys.append(layer.keys.new_zeros(shape))
                    values.append(layer.values.new_zeros(shape))
                columns = layer.keys.shape[2]
                for slot, r in enumerate(batch):
                    start, own = width - len(prompts[r]), len(prompts[r]) - shared
                    for into, source in ((keys[index], layer.keys), (values[index], layer.values)):
                        into[r, :, start : start + shared] = source[slot, :, :shared]
                        into[r, :, width - own : width] = source[slot, :, columns - own :]
    assert logits is not None
    slots = KVSlots(keys, values)
    slots.column = width
    return Prefill(slots, attends.to(device), logits, width)


def read_prompts(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, new_tokens: int) -> Prefill:
    """`prefill` for models with a plain cache; one padded pass into transformers' own cache for the rest."""
    if has_plain_cache(model):
        return prefill(model, prompts, pad_id, new_tokens)
    device = next(model.parameters()).device
    input_ids, attention = left_pad(prompts, pad_id)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0).to(device),
        cache=cache,
        logits_to_keep=1,
    )
    attends = torch.cat([attention.bool(), torch.zeros((len(prompts), new_tokens), dtype=torch.bool)], dim=1)
    return Prefill(cache, attends.to(device), out.logits[:, -1], input_ids.shape[1])


def row_generators(prompts: Sequence[Sequence[int]], seed: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row, seeded by `seed` and the row's prompt."""
    generators = []
    for prompt in prompts:
        digest = hashlib.blake2b(f"{seed}:{','.join(map(str, prompt))}".encode(), digest_size=8).digest()
        generators.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest, "big") >> 1))
    return generators


def ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, produced: torch.Tensor, size: int) -> torch.Tensor:
    """`scores` with -inf for every token that would complete a run of `size` tokens a row has already
    generated (its prompt is free to quote): transformers' n-gram ban over the continuation, on the device.
    Row r's generated tokens are `history[r, :produced[r]]`."""
    if size <= 0 or history.shape[1] < size or int(produced.max()) < size:
        return scores
    windows = history.unfold(1, size, 1)  # rows × starts × size
    starts = torch.arange(windows.shape[1], device=history.device)
    complete = starts[None, :] <= (produced - size)[:, None]  # the window lies in what the row generated
    recent = (produced[:, None] - size + 1 + torch.arange(size - 1, device=history.device)).clamp(min=0)
    matches = (windows[:, :, :-1] == history.gather(1, recent)[:, None, :]).all(-1) & complete
    banned = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(1, windows[:, :, -1].clamp(min=0), matches.int())
    return scores.masked_fill(banned > 0, float("-inf"))


def choose_tokens(
    logits: torch.Tensor,
    history: torch.Tensor,
    produced: torch.Tensor,
    decoding: Decoding,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Each row's next token, from float32 logits: greedy, or sampled within `top_p` by the Gumbel-max trick
    on the row's own generator."""
    scores = ban_repeated_ngrams(logits.float(), history, produced, decoding.no_repeat_ngram_size)
    if decoding.temperature == 0:
        return scores.argmax(-1)
    scores = scores / decoding.temperature
    ordered, order = scores.sort(-1, descending=True)
    probabilities = ordered.softmax(-1)
    outside = probabilities.cumsum(-1) - probabilities > decoding.top_p  # keeps the smallest set reaching top_p
    scores = scores.scatter(1, order, ordered.masked_fill(outside, float("-inf")))
    noise = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in generators])
    return (scores - (-noise.clamp_min(1e-20).log()).log()).argmax(-1)


@dataclass(frozen=True)
class Step:
    """One decode step: the new tokens of each decoding row by prompt index (several when drafts were
    accepted), and the prompts it finished."""

    tokens: dict[int, list[int]]
    finished: list[int]
    last: bool  # no prompt is left to decode


class PromptLookup:
    """Drafts for one row from its own text: the tokens that followed the first time its latest `size`
    tokens occurred, in the prompt or the answer (the first: a loop's latest occurrence overlaps its end). Synthesis and grounded answers copy their passage, so
    the drafts are often right, and checking several costs a step about what one does."""

    def __init__(self, prompt: Sequence[int], size: int = 3) -> None:
        self.size, self.seen, self.after = size, list(prompt), {}
        for end in range(size, len(self.seen)):
            self.after.setdefault(tuple(self.seen[end - size : end]), end)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            if len(self.seen) >= self.size:
                self.after.setdefault(tuple(self.seen[-self.size :]), len(self.seen))
            self.seen.append(token)

    def draft(self, count: int) -> list[int]:
        start = self.after.get(tuple(self.seen[-self.size :]))
        return [] if start is None else self.seen[start : start + count]


def _rebuilt_layer_by_layer(
    layers: list[torch.Tensor], rebuild: Callable[[torch.Tensor], torch.Tensor]
) -> list[torch.Tensor]:
    """`rebuild` of each layer's cache tensor, emptying `layers` as it goes, so each old tensor is freed once its
    layer is rebuilt: a batch's cache is never held twice (the old and the rebuilt whole cache were evaluation's
    peak, 0.29 GiB beside 0.25)."""
    rebuilt = []
    while layers:
        rebuilt.append(rebuild(layers.pop(0)))
    return rebuilt


@dataclass
class Lanes:
    """The rows decoding now: their cache and its columns, and what each row has generated."""

    read: Prefill
    rows: list[int]  # the prompt each row answers
    lengths: torch.Tensor  # prompt tokens per row
    produced: torch.Tensor  # new tokens per row so far
    history: torch.Tensor  # rows × max new tokens: the new tokens, -1 past `produced`
    column: int  # where the next step's keys go
    pending: torch.Tensor  # each row's newest token, chosen but not yet read
    lookups: list[PromptLookup]
    finished: set[int]  # slots whose rows are done but still in the batch

    @classmethod
    def start(cls, read: Prefill, rows: list[int], prompts: Sequence[Sequence[int]], new_tokens: int) -> Lanes:
        device = read.logits.device
        history = torch.full((len(rows), new_tokens), -1, dtype=torch.long, device=device)
        zeros = torch.zeros(len(rows), dtype=torch.long, device=device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        lookups = [PromptLookup(p) for p in prompts]
        return cls(read, rows, lengths, zeros, history, read.width, zeros.clone(), lookups, set())

    def keep(self, slots: list[int], spare: int) -> Lanes:
        """Only the rows in `slots`, each row's cached tokens moved together at the right (without the
        padding and the rejected drafts between them), and `spare` free columns after them. Takes this lane's
        cache: the lane is not to be used again."""
        index = torch.tensor(slots, device=self.lengths.device)
        cache = self.read.cache
        assert isinstance(cache, KVSlots)
        valid = self.read.attends[index, : self.column]
        width = int(valid.sum(1).max())
        columns = torch.arange(self.column, device=valid.device).expand(len(slots), -1)
        ordered = torch.where(valid, columns, -1).sort(1).values[:, self.column - width :]  # padding first
        attends = torch.cat([ordered >= 0, valid.new_zeros((len(slots), spare))], 1)
        gather = ordered.clamp(min=0)[:, None, :, None]

        def moved(tensor: torch.Tensor) -> torch.Tensor:
            picked = tensor[index].gather(2, gather.expand(-1, tensor.shape[1], -1, tensor.shape[3]))
            return torch.cat([picked, picked.new_zeros((*picked.shape[:2], spare, picked.shape[3]))], 2)

        kept = KVSlots(_rebuilt_layer_by_layer(cache.keys, moved), _rebuilt_layer_by_layer(cache.values, moved))
        return Lanes(
            Prefill(kept, attends, self.read.logits[index], width),
            [self.rows[s] for s in slots],
            self.lengths[index],
            self.produced[index],
            self.history[index],
            width,
            self.pending[index],
            [self.lookups[s] for s in slots],
            {new for new, old in enumerate(slots) if old in self.finished},
        )

    def join(self, other: Lanes, spare: int) -> Lanes:
        """These rows and `other`'s in one cache, each row's next column at the same place. Takes both lanes'
        caches: neither is to be used again."""
        mine, theirs = self.read.cache, other.read.cache
        assert isinstance(mine, KVSlots) and isinstance(theirs, KVSlots)
        column = max(self.column, other.column)
        count, width = len(self.rows) + len(other.rows), column + spare
        joined: list[list[torch.Tensor]] = [[], []]
        for into, old, new in ((joined[0], mine.keys, theirs.keys), (joined[1], mine.values, theirs.values)):
            while old:  # each layer's sources let go once copied (see `_rebuilt_layer_by_layer`)
                a, b = old.pop(0), new.pop(0)
                both = a.new_zeros((count, a.shape[1], width, a.shape[3]))
                both[: len(self.rows), :, column - self.column : column] = a[:, :, : self.column]
                both[len(self.rows) :, :, column - other.column : column] = b[:, :, : other.column]
                into.append(both)
        attends = self.read.attends.new_zeros((count, width))
        attends[: len(self.rows), column - self.column : column] = self.read.attends[:, : self.column]
        attends[len(self.rows) :, column - other.column : column] = other.read.attends[:, : other.column]
        read = Prefill(KVSlots(*joined), attends, torch.cat([self.read.logits, other.read.logits]), column)
        return Lanes(
            read,
            self.rows + other.rows,
            torch.cat([self.lengths, other.lengths]),
            torch.cat([self.produced, other.produced]),
            torch.cat([self.history, other.history]),
            column,
            torch.cat([self.pending, other.pending]),
            self.lookups + other.lookups,
            self.finished | {len(self.rows) + s for s in other.finished},
        )

    def record(
        self, new: list[list[int]], tokenizer: Any, stop_strings: tuple[str, ...], limits: Sequence[int]
    ) -> Step:
        """Take each row's new tokens up to the first that finishes it (EOS, a stop string, its prompt's limit in
        `limits`)."""
        chosen: dict[int, list[int]] = {}
        ended: list[int] = []
        tail = max((len(s) for s in stop_strings), default=0) + 4  # tokens enough to hold a stop string
        produced = self.produced.tolist()
        for slot, tokens in enumerate(new):
            if slot in self.finished:
                continue
            taken: list[int] = []
            lookup, limit = self.lookups[slot], limits[self.rows[slot]]
            for token in tokens:
                taken.append(token)
                lookup.extend([token])
                done = produced[slot] + len(taken)
                text = tokenizer.decode(lookup.seen[-min(tail, done) :]) if stop_strings else ""
                if token == tokenizer.eos_token_id or done >= limit or any(s in text for s in stop_strings):
                    self.finished.add(slot)
                    ended.append(self.rows[slot])
                    break
            self.history[slot, produced[slot] : produced[slot] + len(taken)] = torch.tensor(
                taken, device=self.history.device
            )
            self.produced[slot] += len(taken)
            self.pending[slot] = taken[-1]
            chosen[self.rows[slot]] = taken
        return Step(chosen, ended, False)


def decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    decoding: Decoding = Decoding(),
    stop_strings: Sequence[str] = (),
    batch_size: int | None = None,
    drafts: int = DRAFT_TOKENS,
    arrivals: Callable[[int], Sequence[Sequence[int]]] | None = None,
) -> Iterator[Step]:
    """Each step's new tokens by prompt index, for the rows decoding then, until every prompt has finished:
    at EOS (yielded), at a stop string wholly in the generated text (its last token yielded), or at
    `max_new_tokens` (one limit for every prompt, or one per prompt). At most `batch_size` rows decode at once (all
    by default); as rows finish, the next prompts in order take their places, so a batch is not held back by its
    longest answer. `arrivals(room)`, when given, is asked at each step for up to `room` more prompts, which join
    the batch (a server's new requests) with the largest limit.

    Greedy decoding without an n-gram ban also reads up to `drafts` tokens proposed by `PromptLookup` in
    the same step and keeps those the model would have chosen itself (0: one token a step). Runs under
    `torch.inference_mode`; close the iterator to stop early."""
    with torch.inference_mode():
        yield from _decode(
            model,
            tokenizer,
            prompts,
            token_limits(max_new_tokens, len(prompts)),
            decoding,
            tuple(s for s in stop_strings if s),
            batch_size or len(prompts),
            drafts if decoding.temperature == 0 and decoding.no_repeat_ngram_size == 0 else 0,
            arrivals,
        )


def _decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    limits: list[int],
    decoding: Decoding,
    stop_strings: tuple[str, ...],
    batch_size: int,
    drafts: int,
    arrivals: Callable[[int], Sequence[Sequence[int]]] | None,
) -> Iterator[Step]:
    device = next(model.parameters()).device
    prompts = list(prompts)
    generators: dict[int, torch.Generator] = {}  # by prompt, made as each is admitted
    plain = has_plain_cache(model)  # rows join a running batch, and drafts are read, only on a cache of our own
    drafts = drafts if plain else 0
    longest = max(limits, default=0)
    spare = longest + drafts + 1  # free columns a batch starts with: at least one step's
    waiting = list(range(len(prompts)))[::-1]
    lanes: Lanes | None = None

    def choose(logits: torch.Tensor, lanes: Lanes) -> torch.Tensor:
        chosen_generators = [generators[r] for r in lanes.rows] if decoding.temperature > 0 else []
        return choose_tokens(logits, lanes.history, lanes.produced, decoding, chosen_generators)

    while True:
        arrived = False
        if arrivals is not None and (lanes is None or plain):
            room = batch_size - len(waiting) - (len(lanes.rows) - len(lanes.finished) if lanes else 0)
            for prompt in arrivals(room) if room > 0 else ():
                prompts.append(prompt)
                limits.append(longest)
                waiting.insert(0, len(prompts) - 1)
                arrived = True
        if not waiting and lanes is None:
            return
        finishing = lanes is not None and len(lanes.finished) * 4 >= len(lanes.rows)  # a finished row costs a live one
        if lanes is None or (plain and (finishing or arrived)):
            live = [s for s in range(len(lanes.rows)) if s not in lanes.finished] if lanes else []
            kept = lanes.keep(live, spare) if live else None
            admitted = [waiting.pop() for _ in range(min(batch_size - len(live), len(waiting)))]
            if admitted:
                new = [prompts[i] for i in admitted]
                if decoding.temperature > 0:
                    generators.update(zip(admitted, row_generators(new, decoding.seed, device)))
                started = Lanes.start(
                    read_prompts(model, new, tokenizer.pad_token_id, spare), admitted, new, longest
                )
                first = choose(started.read.logits, started)
                step = started.record([[t] for t in first.tolist()], tokenizer, stop_strings, limits)
                yield Step(step.tokens, step.finished, not waiting and not live and len(started.finished) == len(new))
                kept = kept.join(started, spare) if kept else started
            lanes = kept
            if lanes is None or len(lanes.finished) == len(lanes.rows):
                lanes = None
                continue
        proposals = [lookup.draft(drafts) for lookup in lanes.lookups] if drafts else []
        width = max((len(d) for d in proposals), default=0)
        inputs = lanes.pending[:, None]
        if width:
            padded = [d + [d[-1] if d else 0] * (width - len(d)) for d in proposals]
            inputs = torch.cat([inputs, torch.tensor(padded, device=device)], dim=1)
        if lanes.column + inputs.shape[1] > lanes.read.attends.shape[1]:  # out of columns: close the gaps
            lanes = lanes.keep(list(range(len(lanes.rows))), spare)
        logits = read_step(model, lanes, inputs)
        if width:
            greedy = logits.argmax(-1)  # rows × (1 + width)
            agree = (inputs[:, 1:] == greedy[:, :-1]).int().cumprod(1).sum(1)  # drafts the model would have chosen
            new = [greedy[r, : int(agree[r]) + 1].tolist() for r in range(len(lanes.rows))]
            kept_columns = torch.arange(inputs.shape[1], device=device)[None, :] <= agree[:, None]
            lanes.read.attends[:, lanes.column - inputs.shape[1] : lanes.column] = kept_columns
        else:
            new = [[t] for t in choose(logits[:, 0], lanes).tolist()]
        step = lanes.record(new, tokenizer, stop_strings, limits)
        done = len(lanes.finished) == len(lanes.rows)
        yield Step(step.tokens, step.finished, done and not waiting)
        if done:
            lanes = None


def read_step(model: Any, lanes: Lanes, inputs: torch.Tensor) -> torch.Tensor:
    """Logits after each of `inputs` (rows × tokens: each row's pending token, then its drafts), whose keys
    and values go in the next columns."""
    count = inputs.shape[1]
    start = lanes.column
    lanes.read.attends[:, start : start + count] = True
    positions = (lanes.lengths + lanes.produced - 1)[:, None] + torch.arange(count, device=inputs.device)
    cache = lanes.read.cache
    if isinstance(cache, KVSlots):
        cache.column = start
        mask = lanes.read.attends[:, None, None, : start + count].expand(-1, 1, count, -1).clone()
        mask[:, :, :, start:] = torch.ones(count, count, dtype=torch.bool, device=inputs.device).tril()
    else:
        mask = lanes.read.attends[:, : start + count].long()
    lanes.column += count
    return model(input_ids=inputs, attention_mask=mask, position_ids=positions, cache=cache).logits
