"""Personal data in text, found on this machine by Microsoft Presidio's analyzer.

Three sources, all local:
- Presidio's pattern recognizers (e-mail, phone, credit card, IBAN, IP and MAC address, URL, US SSN, medical
  licence, NHS and National Insurance numbers, UK postcode, crypto wallet), which need no model;
- the user's own list (`.private-words.txt` beside the notes): names, places and words that must never leave,
  one a line, an optional `KIND:` prefix (`PERSON: Margaret Hollis`, `PLACE: Hebden Bridge`), matched
  case-insensitively on word boundaries by Presidio's deny-list recognizer — no model needed either;
- named-entity recognition (people and places) through a spaCy pipeline, when one is installed and named.
  Without one, names are covered by the list only, and the run metadata and the report say so.

Nothing here reaches the network: spaCy pipelines are never downloaded, and the e-mail recognizer's domain check
reads the public-suffix list shipped with `tldextract` instead of fetching it (which Presidio's own would do).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

PRIVATE_WORDS_FILE = ".private-words.txt"  # hidden, so never taken for a note
LIST_KIND = "PRIVATE"  # the kind of a listed word without a `KIND:` prefix
SCORE_THRESHOLD = 0.1  # Presidio's weakest patterns (a bare 9-digit number as a passport) score 0.05

# Presidio's entity types → the kinds placeholders and counts use (`EMAIL_1`, `PLACE_2`).
KINDS: dict[str, str] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
    "MAC_ADDRESS": "MAC",
    "URL": "URL",
    "US_SSN": "SSN",
    "MEDICAL_LICENSE": "LICENSE",
    "UK_NHS": "NHS",
    "UK_NINO": "NINO",
    "UK_POSTCODE": "POSTCODE",
    "CRYPTO": "WALLET",
    "PERSON": "PERSON",
    "LOCATION": "PLACE",
}
NER_ENTITIES = ("PERSON", "LOCATION")
_KIND_PREFIX = re.compile(r"^([A-Za-z][A-Za-z_]{0,30})\s*:\s*(.+)$")
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind (`EMAIL`, `PERSON`, a listed kind), where it is, and the text."""

    kind: str
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class PrivateWords:
    """The user's list, by kind, in the order written."""

    by_kind: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def count(self) -> int:
        return sum(len(words) for _, words in self.by_kind)


def parse_private_words(text: str) -> PrivateWords:
    """One name, place or word a line; `KIND: entry` files it under KIND (upper-cased), `#` starts a comment."""
    by_kind: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prefixed = _KIND_PREFIX.match(line)
        kind, entry = (prefixed.group(1).upper(), prefixed.group(2).strip()) if prefixed else (LIST_KIND, line)
        words = by_kind.setdefault(kind, [])
        if entry and entry.casefold() not in {w.casefold() for w in words}:
            words.append(entry)
    return PrivateWords(tuple((kind, tuple(words)) for kind, words in by_kind.items() if words))


def read_private_words(path: Path | str | None) -> PrivateWords:
    """The list at `path`; no file is an empty list (the list is optional)."""
    if not path or not Path(path).is_file():
        return PrivateWords()
    return parse_private_words(Path(path).read_text(encoding="utf-8", errors="replace"))


def names_coverage(spacy_model: str) -> str:
    """How names and places are found, in the words the run metadata and the report use."""
    if spacy_model:
        return f"names covered by NER (spaCy {spacy_model}) and the list"
    return "names covered by the list only (no spaCy pipeline configured)"


def count_kinds(findings: Iterable[Finding]) -> dict[str, int]:
    """Counts by kind, largest first: what metadata shows instead of the values."""
    return dict(Counter(f.kind for f in findings).most_common())


def _import_presidio() -> Any:
    """Presidio's analyzer package, or an error that says how to install it.

    Importing it loads torch and transformers (its Hugging Face NER engine, spaCy's thinc), 3.7 s and 450 MB on a
    process that has neither yet: it happens at the first scan, never at import, and the Dagster process has
    loaded both already by then (the LLM resource imports the model code)."""
    try:
        import presidio_analyzer
    except ImportError as error:
        raise ImportError(
            "Please install `presidio-analyzer` to scan notes for personal data (`pip install presidio-analyzer`)"
        ) from error
    return presidio_analyzer


def _offline_email_recognizer() -> Any:
    """Presidio's e-mail recognizer, its domain check on the public-suffix list that ships with tldextract."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return suffixes(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _spacy_engine(model: str) -> Any:
    """A loaded spaCy NLP engine for `model` (an installed package or a folder); never a download."""
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    if not (spacy.util.is_package(model) or Path(model).exists()):
        raise ValueError(
            f"spaCy pipeline '{model}' is not installed: install its package (e.g. `pip install en_core_web_sm` "
            "from where you have it) or name a pipeline folder; leave spacy_model empty to cover names by the list only"
        )
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()  # loads only: the model exists, so nothing is downloaded
    return engine


class Scanner:
    """Finds personal data in text with one Presidio `AnalyzerEngine`: the pattern recognizers, one deny-list
    recognizer per kind of the user's list, and spaCy NER when `spacy_model` names a pipeline.

    Findings never overlap: where two do, the longer wins (an e-mail over the domain inside it), then the more
    certain (an IP address over the phone number its digits also match).
    """

    def __init__(self, words: PrivateWords = PrivateWords(), spacy_model: str = "") -> None:
        presidio = _import_presidio()
        from presidio_analyzer import predefined_recognizers as known
        from presidio_analyzer.nlp_engine import NoOpNlpEngine

        self.words = words
        self.spacy_model = spacy_model
        recognizers = [
            _offline_email_recognizer(),
            known.PhoneRecognizer(),
            known.CreditCardRecognizer(),
            known.IbanRecognizer(),
            known.IpRecognizer(),
            known.MacAddressRecognizer(),
            known.UrlRecognizer(),
            known.UsSsnRecognizer(),
            known.MedicalLicenseRecognizer(),
            known.NhsRecognizer(),
            known.UkNinoRecognizer(),
            known.UkPostcodeRecognizer(),
            known.CryptoRecognizer(),
        ]
        recognizers += [
            presidio.PatternRecognizer(supported_entity=kind, deny_list=list(entries), name=f"private_words_{kind}")
            for kind, entries in words.by_kind
        ]
        if spacy_model:
            engine = _spacy_engine(spacy_model)
            recognizers.append(known.SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
        else:
            engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
            engine.load()
        registry = presidio.RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        self._analyzer = presidio.AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
        self.entities = sorted({entity for r in recognizers for entity in r.supported_entities})

    @property
    def names(self) -> str:
        return names_coverage(self.spacy_model)

    def scan(self, text: str) -> list[Finding]:
        """Every finding in `text`, in order, none overlapping."""
        if not text.strip():
            return []
        results = self._analyzer.analyze(text, language="en", entities=self.entities, score_threshold=SCORE_THRESHOLD)
        candidates = [found for found in (self._finding(text, r) for r in results) if found is not None]
        kept: list[Finding] = []
        for finding in sorted(candidates, key=lambda f: (-(f.end - f.start), -f.score, f.start)):
            if all(finding.end <= other.start or finding.start >= other.end for other in kept):
                kept.append(finding)
        return sorted(kept, key=lambda f: f.start)

    @staticmethod
    def _finding(text: str, result: Any) -> Finding | None:
        start, end = result.start, result.end
        kind = KINDS.get(result.entity_type, result.entity_type)
        if kind == "URL":  # the pattern takes a sentence's closing full stop into the path
            while end > start and text[end - 1] in _TRAILING_PUNCTUATION:
                end -= 1
        value = text[start:end]
        if not value.strip() or (kind == "IP" and not any(c.isdigit() for c in value)):  # "::" alone
            return None
        return Finding(kind, start, end, value, float(result.score))


@lru_cache(maxsize=4)
def _cached_scanner(words: PrivateWords, spacy_model: str) -> Scanner:
    return Scanner(words, spacy_model)


def scanner_for(private_words: Path | str | None, spacy_model: str = "") -> Scanner:
    """One scanner per list content and pipeline in a process: the list is read each time, so an edit shows at
    the next scan, while the analyzer (and any spaCy pipeline) is built once."""
    return _cached_scanner(read_private_words(private_words), spacy_model)
