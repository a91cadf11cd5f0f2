"""Privacy: Q&A synthesis on the shipped notes with the local teacher, sent as written (`allow`) against sent through
the egress step under `redact` (issue 29's target: quality within noise of the unredacted run, names kept in the
answers once mapped back).

Both arms run the same requests — every passage of every note in `--notes` (heuristic chunking), every synthesis
mode — through `CachedLLM` on the same local model, greedy. The redact arm's client carries the egress step a remote
provider has, forced on, with a list of the people and places of the shipped notes (`--words`), so what the model
sees has placeholders and its answers are mapped back before the synthesis filters read them. Reported:
- kept pairs and the keep rate of each arm, and the paired difference in kept pairs per request with a 95% interval
  that resamples notes (within noise: the interval holds 0);
- grounding: the mean support (share of answer words found in the passage) of kept answers, each arm;
- the names: occurrences of listed names in kept answers (redact vs allow), and placeholders left in kept pairs
  (none expected: every one the teacher was given is mapped back);
- what the egress step replaced: requests redacted, distinct values by kind.

    python bench/privacy_redaction.py [--notes data/notes] [--max-new-tokens 120] [--passages N] [--json rows.json]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from generation import sample_passages
from results import Row, add_json_argument, machine, report

from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.common.statistics import clustered_ratio, paired_difference
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.llm.local import LocalLLM
from fine_tune_dag.core.models.bundled import BUNDLED_MODEL
from fine_tune_dag.core.models.resolution import resolve_model
from fine_tune_dag.core.privacy.egress import Egress, EgressSettings
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.chunking import Passage
from fine_tune_dag.core.synthesis.qa_pairs import (
    MODES,
    SynthesisSettings,
    candidate_pairs,
    filter_pairs,
    synthesis_request,
)

ROOT = Path(__file__).resolve().parents[1]
# the people and places of the shipped notes, as their author would list them
SHIPPED_WORDS = """PERSON: Okafor
PERSON: Tomas
PERSON: Agnes
PERSON: Hanne
PERSON: Brenn
PLACE: Kettleford
"""
PLACEHOLDER = re.compile(r"\b[A-Z]+_\d+\b")


class AsIfRemote:
    """The local teacher behind the egress step a remote provider has: `CachedLLM` prepares every request with it."""

    def __init__(self, client: LocalLLM, egress: Egress) -> None:
        self.client, self.egress = client, egress
        self.provider, self.model_name = "local-as-remote", client.model_name

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        return self.client.complete(requests)


def synthesize(llm: CachedLLM, passages: list[Passage], settings: SynthesisSettings) -> list[dict]:
    """Per request: its note, candidate and kept pairs, the kept answers' support, and the kept pairs' text."""
    jobs = [(p, mode) for p in passages for mode in MODES]
    answers = llm.complete([synthesis_request(p, mode, settings) for p, mode in jobs])
    rows = []
    for (passage, mode), answer in zip(jobs, answers):
        candidates = [
            (pair, passage) for pair in candidate_pairs(passage, mode, answer, settings.questions_per_passage)
        ]
        judged = filter_pairs(candidates, settings)
        kept = [pair for pair in judged if pair.status == "kept"]
        rows.append(
            {
                "note": passage.note_id,
                "candidates": len(judged),
                "kept": len(kept),
                "support": sum(pair.support for pair in kept),
                "text": " ".join(f"{pair.question} {pair.answer}" for pair in kept),
            }
        )
    return rows


def name_count(rows: list[dict], names: list[str]) -> int:
    pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, names))})\b", re.IGNORECASE)
    return sum(len(pattern.findall(row["text"])) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=Path, default=ROOT / "data" / "notes")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    parser.add_argument("--words", type=Path, help="the list of names and places (default: the shipped notes')")
    parser.add_argument("--max-new-tokens", type=int, default=SynthesisSettings.max_new_tokens)
    parser.add_argument("--passages", type=int, help="only the first N passages (a smoke run)")
    add_json_argument(parser)
    args = parser.parse_args()
    settings = SynthesisSettings(max_new_tokens=args.max_new_tokens)
    passages = sample_passages(args.notes)[: args.passages]
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as scratch:
        words = args.words or Path(scratch) / ".private-words.txt"
        if args.words is None:
            words.write_text(SHIPPED_WORDS, encoding="utf-8")
        names = [line.split(":", 1)[-1].strip() for line in words.read_text().splitlines() if line.strip()]
        model = resolve_model(BUNDLED_MODEL, args.models_dir).path
        teacher = LocalLLM(model)
        warehouse = Warehouse(Path(scratch) / "warehouse.duckdb")
        started = time.perf_counter()
        allow = synthesize(CachedLLM(teacher, warehouse), passages, settings)
        allow_s = time.perf_counter() - started
        egress = Egress("gemini", "", EgressSettings("redact", str(words)), "the local teacher, as if remote")
        redacting = CachedLLM(AsIfRemote(teacher, egress), warehouse)
        started = time.perf_counter()
        redact = synthesize(redacting, passages, settings)
        redact_s = time.perf_counter() - started
    notes = [row["note"] for row in allow]
    kept = {arm: sum(r["kept"] for r in rows) for arm, rows in (("allow", allow), ("redact", redact))}
    candidates = {arm: sum(r["candidates"] for r in rows) for arm, rows in (("allow", allow), ("redact", redact))}
    gap = paired_difference([r["kept"] for r in redact], [r["kept"] for r in allow], notes)
    support = {
        arm: clustered_ratio([r["support"] for r in rows], [r["kept"] for r in rows], notes).value
        for arm, rows in (("allow", allow), ("redact", redact))
    }
    left = sum(len(PLACEHOLDER.findall(r["text"])) for r in redact)
    names_kept = (name_count(redact, names), name_count(allow, names))
    replaced = Counter(redacting.usage.redacted)
    print(machine())
    print(
        f"{len(passages)} passages of {len(set(notes))} notes, {len(allow)} requests an arm; allow {allow_s:.0f} s, "
        f"redact {redact_s:.0f} s; redacted {redacting.usage.redacted_requests} requests, values by kind: "
        f"{dict(replaced.most_common())}; kept pairs per request, redact − allow: {gap}"
    )
    rows = [
        Row("redaction", "kept Q&A pairs, redact vs allow", kept["redact"], kept["allow"], _ratio(kept)),
        Row(
            "redaction",
            "keep rate, redact vs allow",
            kept["redact"] / max(candidates["redact"], 1),
            kept["allow"] / max(candidates["allow"], 1),
            None,
        ),
        Row("redaction", "kept pairs a request, redact − allow [95% CI low]", gap.low, None, None),
        Row("redaction", "kept pairs a request, redact − allow [95% CI high]", gap.high, None, None),
        Row("redaction", "mean support of kept answers, redact vs allow", support["redact"], support["allow"], None),
        Row("redaction", "listed names in kept pairs, redact vs allow", names_kept[0], names_kept[1], None),
        Row("redaction", "placeholders left in kept pairs (redact)", left, None, None),
        Row("redaction", "requests redacted (of each arm's)", redacting.usage.redacted_requests, len(allow), None),
    ]
    report(rows, args.json)


def _ratio(values: dict[str, int]) -> float | None:
    return values["redact"] / values["allow"] if values["allow"] else None


if __name__ == "__main__":
    main()
