"""The one egress step every request to a provider passes before it is sent: scan, then redact, block or allow.

Two places call it, and they are the only doors out:
- `CachedLLM.complete` (what every stage uses) prepares requests before it computes cache keys, so the cache and
  the request log hold only what was sent — the redacted text — and maps the answers back after;
- `RemoteLLM.complete` (the base of the Gemini and OpenAI-compatible clients) prepares whatever reaches it
  unprepared, so a caller that skips the cache still cannot skip the scan.

A prepared request carries the policy it passed (`LLMRequest.egress`), and is never prepared twice. Requests of
one note (`LLMRequest.note`) share one set of placeholders, so `PERSON_1` is the same person in every passage of
the note that one call sends; a request without a note is its own scope. The mapping stays in this process's
memory for the call and is never stored, logged or sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.privacy.placeholders import Placeholders
from fine_tune_dag.core.privacy.policy import PolicyChoice, choose_policy
from fine_tune_dag.core.privacy.scan import Scanner, names_coverage, scanner_for


@dataclass(frozen=True)
class EgressSettings:
    """A provider's privacy configuration (hashable: it is part of a client's settings)."""

    policy: str = ""  # redact | block | allow; empty: the destination's default (policy.choose_policy)
    private_words: str = ""  # the user's list of names, places and words (scan.PRIVATE_WORDS_FILE)
    spacy_model: str = ""  # an installed spaCy pipeline for NER; empty: names covered by the list only


def kinds_text(kinds: dict[str, int]) -> str:
    """`EMAIL ×2, PERSON ×1`: kinds and counts, never values."""
    return ", ".join(f"{kind} ×{count}" for kind, count in kinds.items()) or "none"


class EgressBlocked(StageError):
    """Policy `block` and personal data in what would be sent: nothing was sent. Names the notes and the kinds
    found, never the values."""

    def __init__(self, scopes: Sequence[str], kinds: dict[str, int], destination: str) -> None:
        self.scopes = list(scopes)
        self.kinds = kinds
        super().__init__(
            f"{', '.join(self.scopes)} not sent to {destination}: privacy policy 'block', and it holds personal data "
            f"({kinds_text(kinds)}). Set the LLM's privacy_policy to 'redact' to send it with placeholders, or use "
            "the local provider",
            {"notes": self.scopes, "personal_data": kinds, "privacy_policy": "block"},
        )


@dataclass
class EgressBatch:
    """What one call sends (`sent[i]` is None for a request withheld under `block`), and how to map answers back."""

    sent: list[LLMRequest | None]
    scopes: list[Placeholders | None]
    redacted: dict[str, int] = field(default_factory=dict)  # distinct values replaced, by kind
    redacted_requests: int = 0
    withheld: int = 0

    def restore(self, index: int, text: str) -> str:
        scope = self.scopes[index]
        return scope.restore(text) if scope is not None else text

    def restore_all(self, texts: Sequence[str]) -> list[str]:
        return [self.restore(i, text) for i, text in enumerate(texts)]


class Egress:
    """The policy of one destination and the scan it runs; the scanner is built on first use."""

    def __init__(self, provider: str, base_url: str, settings: EgressSettings, destination: str) -> None:
        self.settings = settings
        self.destination = destination
        self.choice: PolicyChoice = choose_policy(settings.policy, provider, base_url)

    @property
    def policy(self) -> str:
        return self.choice.policy

    @property
    def names(self) -> str:
        return names_coverage(self.settings.spacy_model)

    def describe(self) -> str:
        return self.choice.describe(self.destination)

    def scanner(self) -> Scanner:
        return scanner_for(self.settings.private_words, self.settings.spacy_model)

    def prepare(self, requests: Sequence[LLMRequest], withhold: bool = False) -> EgressBatch:
        """The requests as they may leave. Under `block`, a scope with findings raises `EgressBlocked` — or, with
        `withhold`, only its requests are held back (the judge's: the rest are still judged)."""
        fresh = [i for i, request in enumerate(requests) if not request.egress]
        batch = EgressBatch(list(requests), [None] * len(requests))
        if not fresh:
            return batch
        if self.policy == "allow":
            for i in fresh:
                batch.sent[i] = replace(requests[i], egress="allow")
            return batch
        scanner = self.scanner()
        scopes: dict[str, Placeholders] = {}
        found: dict[str, Counter[str]] = {}
        # a request without a note is a scope of its own, named by its template where a message needs a name
        scope_of = {i: requests[i].note or f"\x00{i}" for i in fresh}
        names = {
            scope_of[i]: f"note '{requests[i].note}'" if requests[i].note else f"a {requests[i].template} request"
            for i in fresh
        }
        for i in fresh:
            placeholders = scopes.setdefault(scope_of[i], Placeholders())
            counts = found.setdefault(scope_of[i], Counter())
            for text in _outgoing_texts(requests[i]):
                for finding in scanner.scan(text):
                    placeholders.add(finding)
                    counts[finding.kind] += 1
        if self.policy == "block":
            offending = sorted(scope for scope, counts in found.items() if counts)
            if offending and not withhold:
                total = sum((Counter(scopes[scope].kinds()) for scope in offending), Counter())  # distinct values
                raise EgressBlocked([names[scope] for scope in offending], dict(total.most_common()), self.destination)
            for i in fresh:
                blocked = bool(found[scope_of[i]])
                batch.sent[i] = None if blocked else replace(requests[i], egress="block")
                batch.withheld += blocked
            return batch
        redacted: Counter[str] = Counter()
        for placeholders in scopes.values():
            redacted.update(placeholders.kinds())
        for i in fresh:
            placeholders = scopes[scope_of[i]]
            request = requests[i]
            sent = replace(
                request,
                messages=tuple((role, placeholders.redact(content)) for role, content in request.messages),
                variables=tuple((name, placeholders.redact(value)) for name, value in request.variables),
                egress="redact",
            )
            batch.sent[i] = sent
            batch.scopes[i] = placeholders if len(placeholders) else None
            batch.redacted_requests += sent.messages != request.messages
        batch.redacted = dict(redacted.most_common())
        return batch


def _outgoing_texts(request: LLMRequest) -> list[str]:
    """The messages, and any template variable not rendered into them (the request log keeps variables too)."""
    contents = [content for _, content in request.messages]
    extra = [value for _, value in request.variables if value and not any(value in content for content in contents)]
    return contents + extra
