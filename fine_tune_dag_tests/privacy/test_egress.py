"""The egress step (issue 29): a note full of planted identifiers — thirteen kinds of Presidio's patterns and the
user's own list — goes through the real chunking and synthesis assets to the Gemini and the OpenAI stubs, and none
of the identifiers reaches them, the cache or the request log, while the Q&A pairs and topics keep the real
words. Each policy (redact, block with its partition's reason, an explicit allow named in the metadata), the
defaults per provider, placeholders consistent within a note and mapped back, the list working offline with no
model, NER through a spaCy pipeline, and `push` refusing an adapter trained on personal data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubReply
from fine_tune_dag_testkit.openai_stub import ChatReply, OpenAIStub
from fine_tune_dag_testkit.scripted import ScriptedLLM

from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.cli import main, register_note_partitions
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.cache import CachedLLM
from fine_tune_dag.core.llm.gemini import GeminiLLM, GeminiSettings
from fine_tune_dag.core.llm.ratelimit import RetryPolicy
from fine_tune_dag.core.privacy.egress import Egress, EgressBlocked, EgressSettings
from fine_tune_dag.core.privacy.findings import MODEL_CARD_NOTICE, check_training_notes, report_line
from fine_tune_dag.core.privacy.placeholders import Placeholders
from fine_tune_dag.core.privacy.policy import choose_policy, is_loopback_url
from fine_tune_dag.core.privacy.scan import Finding, Scanner, parse_private_words, read_private_words, scanner_for
from fine_tune_dag.core.store.privacy import save_findings
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.chunking import ChunkingSettings, boundary_prompt_variables
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.prompts import load_prompt
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths

FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)
CHUNKING = {"ops": {"passages": {"config": {"min_chars": 60, "max_chars": 600}}}}

# kind → what is planted; every value must be absent from what the stubs receive
PLANTED = {
    "PERSON (list)": "Margaret Hollis",
    "PERSON (list, surname)": "Okafor",
    "PLACE (list)": "Hebden Bridge",
    "PRIVATE (list)": "Wexcombe",
    "EMAIL": "margaret.hollis@example.org",
    "PHONE": "+44 20 7946 0958",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "CARD": "4111 1111 1111 1111",
    "IP": "192.168.10.24",
    "URL": "https://hollis-family.net/photos",
    "SSN": "536-22-8745",
    "LICENSE": "BH1234563",
    "NHS": "943 476 5919",
    "NINO": "AB123456C",
    "POSTCODE": "SW1A 1AA",
    "WALLET": "1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
    "MAC": "00:1B:44:11:3A:B7",
}
PRIVATE_WORDS = """# names, places and words that never leave
PERSON: Margaret Hollis
PERSON: Okafor
PLACE: Hebden Bridge
Wexcombe
"""
PLANTED_NOTE = """# Letters and accounts

Margaret Hollis wrote from Hebden Bridge again. Her e-mail is margaret.hollis@example.org and her phone is
+44 20 7946 0958, and she still signs off as the girl from Wexcombe.

The bank wants the IBAN GB82 WEST 1234 5698 7654 32 and the card 4111 1111 1111 1111 on the renewal form.

The home server sits at 192.168.10.24 and the family photos live at https://hollis-family.net/photos for now.

The social security number 536-22-8745 is in the drawer, beside the medical licence BH1234563 of Dr Okafor.

My NHS number is 943 476 5919 and my National Insurance number is AB123456C; the postcode is SW1A 1AA.

The wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyT and the router's MAC 00:1B:44:11:3A:B7 go in the notebook too.
"""
CLEAN_NOTE = """# Chain wear

A chain stretches as its pins and rollers wear, and a stretched chain wears the cassette in turn.

I check mine with a ruler every few hundred miles: twelve links should measure twelve inches exactly.
"""
KEY = "AIzaTEST-not-a-real-key-5f2c"


def leaked(text: str) -> list[str]:
    """The planted identifiers (and the names' parts) found in `text`, case-insensitively."""
    lowered = text.lower()
    parts = ["hollis", "okafor", "hebden", "wexcombe"]
    return [value for value in [*PLANTED.values(), *parts] if value.lower() in lowered]


def notes_folder(tmp_path: Path, with_list: bool = True) -> tuple[Path, Path]:
    notes, data = tmp_path / "notes", tmp_path / "data"
    notes.mkdir()
    (notes / "letters.md").write_text(PLANTED_NOTE, encoding="utf-8")
    (notes / "chain.md").write_text(CLEAN_NOTE, encoding="utf-8")
    if with_list:
        (notes / ".private-words.txt").write_text(PRIVATE_WORDS, encoding="utf-8")
    return notes, data


def template_of(system: str) -> str:
    return next(
        name
        for name in ("chunk_boundaries", "grounded_qa", "back_translation", "pair_judge")
        if load_prompt(name).system.strip()[:60] in (system or "")
    )


def teacher_answer(template: str, prompt: str) -> str:
    """The scripted model's answer, with a topic label that names the note's first placeholder person (when the
    prompt has one), as a teacher that writes around placeholders would."""
    answer = ScriptedLLM._answer(template, prompt)
    person = re.search(r"\bPERSON_\d+\b", prompt)
    if template == "chunk_boundaries" and person:
        answer = answer.replace("1 | opening", f"1 | news from {person.group()} and the bank")
    return answer


def gemini_reply(request) -> StubReply:
    prompt = request.body["contents"][-1]["parts"][0]["text"]
    return StubReply(text=teacher_answer(template_of(request.system_text), prompt))


def openai_reply(request) -> ChatReply:
    return ChatReply(text=teacher_answer(template_of(request.system_text), request.body["messages"][-1]["content"]))


def run_notes_job(notes: Path, data: Path, llm: LLMResource) -> dict[str, dg.ExecuteInProcessResult]:
    with dg.instance_for_test() as instance:
        job = build_definitions(str(notes), str(data), llm=llm).resolve_job_def(notes_job.name)
        return {  # by file stem: the partition keys carry a hash
            key.split("-md-")[0]: job.execute_in_process(instance=instance, partition_key=key, run_config=CHUNKING, raise_on_error=False)
            for key in register_note_partitions(instance, notes)
        }


def materialized(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {key: value.value for key, value in events[0].materialization.metadata.items()}


def resource(provider: str, stub_url: str, notes: Path, data: Path, **privacy: str) -> LLMResource:
    return LLMResource(
        provider=provider,
        model="gemini-2.5-flash" if provider == "gemini" else "gpt-4o-mini",
        api_key=KEY,
        base_url=stub_url,
        requests_per_minute=10_000,
        paths=ProjectPaths(notes_dir=str(notes), data_dir=str(data)),
        **privacy,
    )


@pytest.mark.parametrize("provider", ["gemini", "openai"])
def test_no_planted_identifier_reaches_the_remote_stub_and_the_answers_keep_the_real_words(tmp_path, provider):
    notes, data = notes_folder(tmp_path)
    stub = GeminiStub(gemini_reply) if provider == "gemini" else OpenAIStub(openai_reply)
    # the OpenAI stub listens on loopback, where the default is 'allow' (a server beside you): redact is configured
    privacy = {"privacy_policy": "redact"} if provider == "openai" else {}
    with stub:
        results = run_notes_job(notes, data, resource(provider, stub.base_url, notes, data, **privacy))
        bodies = [json.dumps(r.body, ensure_ascii=False) for r in stub.requests]
    assert all(result.success for result in results.values())
    assert len(bodies) >= 3  # the boundary request and several synthesis requests of the planted note
    assert [leaked(body) for body in bodies if leaked(body)] == []
    sent = " ".join(bodies)
    assert {"PERSON_1", "PLACE_1", "PRIVATE_1", "EMAIL_1", "PHONE_1", "IBAN_1", "CARD_1", "URL_1"} <= set(
        re.findall(r"\b[A-Z]+_\d+\b", sent)
    )

    db = Warehouse(data / "warehouse.duckdb")
    stored = (
        db.query("SELECT messages, response FROM llm_cache").to_string()
        + db.query("SELECT variables FROM llm_requests").to_string()
    )
    cache_and_log = " ".join(
        [*db.query("SELECT messages, response FROM llm_cache").stack().astype(str)]
        + [*db.query("SELECT variables FROM llm_requests")["variables"]]
    )
    assert stored and leaked(cache_and_log) == []  # only what was sent: the redacted text

    # mapped back on this machine: the passages stay verbatim, the topic and the answers name the real person
    note = db.query("SELECT text FROM raw_notes WHERE note_id LIKE 'letters-%'")["text"].iloc[0]
    passages = db.query("SELECT * FROM passages WHERE note_id LIKE 'letters-%' ORDER BY passage_index")
    assert all(note[p.start_char : p.end_char] == p.text for p in passages.itertuples())
    assert (
        passages["strategy"].iloc[0] == "llm" and passages["topic"].iloc[0] == "news from Margaret Hollis and the bank"
    )
    pairs = db.query("SELECT question, answer, status FROM qa_pairs WHERE note_id LIKE 'letters-%'")
    assert "Margaret Hollis" in " ".join(pairs["answer"]) and not re.search(
        r"\b[A-Z]+_\d+\b", " ".join(pairs["answer"])
    )
    assert (pairs["status"] == "kept").any()

    metadata = materialized(results["letters"], "passages")
    assert metadata["privacy_findings_total"] >= len(PLANTED) - 1  # counts by kind, never the values
    assert {
        "EMAIL",
        "PHONE",
        "IBAN",
        "CARD",
        "IP",
        "URL",
        "SSN",
        "LICENSE",
        "NHS",
        "NINO",
        "POSTCODE",
        "WALLET",
    } <= set(metadata["privacy_findings"])
    assert metadata["privacy_policy"].startswith("redact") and metadata["privacy_redacted_requests"] == 1
    assert metadata["privacy_names"].startswith("names covered by the list only")
    privacy = {key: value for key, value in metadata.items() if key.startswith("privacy")}
    assert len(privacy) >= 5 and leaked(json.dumps(privacy, default=str)) == []  # (the preview is the note's own)
    synthesis = materialized(results["letters"], "qa_pairs")
    assert synthesis["privacy_redacted_requests"] >= 1 and synthesis["privacy_redacted"]["PERSON"] >= 1


def test_gemini_defaults_to_redact_even_on_a_local_address_and_openai_to_allow_only_on_loopback():
    assert choose_policy("", "gemini", "http://127.0.0.1:8080").policy == "redact"
    assert choose_policy("", "gemini", "").policy == "redact"
    assert choose_policy("", "openai", "").policy == "redact"  # api.openai.com
    assert choose_policy("", "openai", "https://llm.example.com/v1").policy == "redact"
    assert choose_policy("", "openai", "http://localhost:11434/v1").policy == "allow"
    assert choose_policy("", "openai", "http://[::1]:8000/v1").policy == "allow"
    assert choose_policy("", "local", "").policy == "allow"
    assert not choose_policy("", "gemini", "").explicit and choose_policy("Block", "gemini", "").policy == "block"
    assert is_loopback_url("http://127.8.0.1/v1") and not is_loopback_url("http://10.0.0.5/v1")
    with pytest.raises(ValueError, match="unknown privacy policy"):
        choose_policy("share", "gemini", "")


def test_block_sends_nothing_of_a_note_with_findings_and_its_partition_says_why(tmp_path):
    notes, data = notes_folder(tmp_path)
    with GeminiStub(gemini_reply) as stub:
        results = run_notes_job(notes, data, resource("gemini", stub.base_url, notes, data, privacy_policy="block"))
        bodies = [json.dumps(r.body, ensure_ascii=False) for r in stub.requests]
    assert results["chain"].success and bodies  # the clean note is sent as written
    assert [leaked(body) for body in bodies if leaked(body)] == []
    assert "Letters and accounts" not in " ".join(bodies)  # nothing of the planted note at all
    failed = results["letters"]
    assert not failed.success
    passages = materialized(failed, "passages")  # chunked by headings and paragraphs, nothing sent
    assert "privacy policy 'block'" in passages["fallback_reason"] and passages["strategy_used"] == "heuristic"
    failure = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    reason = failure.step_failure_data.user_failure_data.description
    assert "note 'letters-md-" in reason and "not sent to Gemini" in reason and "EMAIL ×1" in reason and "PERSON ×" in reason
    assert leaked(reason) == []  # the kinds, never the values


def test_an_explicit_allow_sends_as_written_and_is_named_in_the_metadata(tmp_path):
    notes, data = notes_folder(tmp_path)
    with GeminiStub(gemini_reply) as stub:
        results = run_notes_job(notes, data, resource("gemini", stub.base_url, notes, data, privacy_policy="allow"))
        sent = " ".join(json.dumps(r.body, ensure_ascii=False) for r in stub.requests)
    assert all(result.success for result in results.values())
    assert "Margaret Hollis" in sent  # allowed: as written
    for asset in ("passages", "qa_pairs"):
        policy = materialized(results["letters"], asset)["privacy_policy"]
        assert policy == "allow (configured): Gemini gemini-2.5-flash; sent as written, personal data included"


def test_a_client_called_directly_still_redacts_and_maps_back(tmp_path):
    """No path skips the step: the remote client prepares whatever reaches it unprepared."""
    words = tmp_path / ".private-words.txt"
    words.write_text("PERSON: Okafor\n", encoding="utf-8")
    privacy = EgressSettings(private_words=str(words))
    with GeminiStub(lambda r: StubReply(text="PERSON_1 wrote to EMAIL_1; PERSON_9 is made up")) as stub:
        settings = GeminiSettings(base_url=stub.base_url, requests_per_minute=10_000, retry=FAST_RETRY, privacy=privacy)
        request = LLMRequest.from_template(
            load_prompt("grounded_qa"), 32, note="n", passage="Okafor writes from okafor@example.org.", count="1"
        )
        (result,) = GeminiLLM(KEY, settings).complete([request])
        body = json.dumps(stub.requests[0].body)
    assert "okafor" not in body.lower() and "PERSON_1 writes from EMAIL_1." in body
    assert result.text == "Okafor wrote to okafor@example.org; PERSON_9 is made up"  # an invented one stays


def test_placeholders_are_consistent_within_a_note_and_mapped_back():
    egress = Egress("gemini", "", EgressSettings(), "Gemini")
    words = parse_private_words("PERSON: Ann Lee\nPLACE: Ravenglass\n")
    egress.scanner = lambda: Scanner(words)  # the list without a file
    requests = [
        LLMRequest((("user", "Ann Lee walked to Ravenglass; ann lee wrote to ann@example.org."),), "t", "1", note="a"),
        LLMRequest((("user", "Later Ravenglass flooded, and Ann Lee called."),), "t", "1", note="a"),
        LLMRequest((("user", "Ravenglass, then ann@example.org."),), "t", "1", note="b"),
    ]
    batch = egress.prepare(requests)
    sent = [r.messages[0][1] for r in batch.sent]
    assert sent[0] == "PERSON_1 walked to PLACE_1; PERSON_1 wrote to EMAIL_1."
    assert sent[1] == "Later PLACE_1 flooded, and PERSON_1 called."  # the same note: the same placeholders
    assert sent[2] == "PLACE_1, then EMAIL_1."  # another note numbers its own
    assert all(r.egress == "redact" for r in batch.sent) and batch.redacted == {"PERSON": 1, "PLACE": 2, "EMAIL": 2}
    answer = "Did PERSON_1 enjoy PLACE_1? Person_1 said the walk to PLACE_1 was long; PLACE_7 is invented."
    assert batch.restore(0, answer) == (
        "Did Ann Lee enjoy Ravenglass? Ann Lee said the walk to Ravenglass was long; PLACE_7 is invented."
    )
    assert egress.prepare(batch.sent).sent == batch.sent  # prepared once: passed through as it is


def test_the_users_list_works_offline_with_no_model(tmp_path):
    path = tmp_path / ".private-words.txt"
    path.write_text("# family\nPERSON: Ann\nplace: Hebden Bridge\nWexcombe\nwexcombe\n\n", encoding="utf-8")
    words = read_private_words(path)
    assert words.by_kind == (("PERSON", ("Ann",)), ("PLACE", ("Hebden Bridge",)), ("PRIVATE", ("Wexcombe",)))
    scanner = scanner_for(path)
    found = scanner.scan("ANN went to hebden bridge from Wexcombe's mill; the Annual fair at Annbridge was quiet.")
    assert [(f.kind, f.text) for f in found] == [("PERSON", "ANN"), ("PLACE", "hebden bridge"), ("PRIVATE", "Wexcombe")]
    assert scanner.names == "names covered by the list only (no spaCy pipeline configured)"
    assert read_private_words(tmp_path / "missing.txt").count == 0


def test_ner_through_a_spacy_pipeline_when_one_is_named(tmp_path):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")  # no model download: a rule-based pipeline stands in for a trained one
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": "Tomas Brandt"}, {"label": "GPE", "pattern": "Ravenglass"}]
    )
    nlp.to_disk(tmp_path / "pipeline")
    scanner = Scanner(spacy_model=str(tmp_path / "pipeline"))
    found = scanner.scan("Tomas Brandt moved to Ravenglass in May.")
    assert [(f.kind, f.text) for f in found] == [("PERSON", "Tomas Brandt"), ("PLACE", "Ravenglass")]
    assert scanner.names.startswith("names covered by NER")
    with pytest.raises(ValueError, match="not installed"):
        Scanner(spacy_model="xx_no_such_pipeline")


def test_the_scan_overlaps_resolve_to_the_longer_and_more_certain_finding():
    found = Scanner().scan("Write to ann@example.org, not 192.168.10.24 (see https://example.org/a).")
    assert [(f.kind, f.text) for f in found] == [
        ("EMAIL", "ann@example.org"),
        ("IP", "192.168.10.24"),
        ("URL", "https://example.org/a"),
    ]


def test_a_cut_snippet_never_splits_a_finding_in_the_boundary_prompt():
    paragraph = "word " * 45 + "call +44 20 7946 0958 soon " + "more " * 40
    text = f"{paragraph}\n\nSecond paragraph here."
    settings = ChunkingSettings(min_chars=60, max_chars=2000)
    cut = boundary_prompt_variables(text, settings)["paragraphs"]
    kept = boundary_prompt_variables(text, settings, keep_whole=["+44 20 7946 0958"])["paragraphs"]
    assert "call +44 20 …" in cut  # the plain cut splits the number
    assert "+44 20 7946 0958 …" in kept


def test_a_judge_under_block_withholds_only_the_items_with_findings(tmp_path):
    with GeminiStub(lambda r: StubReply(text="A")) as stub:
        client = GeminiLLM(
            KEY,
            GeminiSettings(
                base_url=stub.base_url,
                requests_per_minute=10_000,
                retry=FAST_RETRY,
                privacy=EgressSettings(policy="block"),
            ),
        )
        judge = CachedLLM(client, Warehouse(tmp_path / "w.duckdb"), withhold_blocked=True)
        requests = [LLMRequest((("user", text),), "pairwise_judge", "1") for text in ("mail ann@example.org", "fine")]
        assert judge.complete(requests) == ["", "A"]
        assert judge.usage.withheld == 1 and len(stub.requests) == 1
        with pytest.raises(EgressBlocked, match="a pairwise_judge request not sent"):
            CachedLLM(client, Warehouse(tmp_path / "w.duckdb")).complete(requests)


def fake_adapter(folder: Path, dataset_version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "training_config.json").write_text(json.dumps({"dataset_version": dataset_version}), encoding="utf-8")
    return folder


def dataset_with(db: Warehouse, notes: dict[str, str]) -> None:
    """A dataset version 'dv1' whose train split holds these notes (id → text), parsed as raw notes."""
    import pandas as pd

    db.insert_rows(
        "dataset_notes",
        pd.DataFrame(
            [
                {"dataset_version": "dv1", "note_id": n, "path": f"{n}.md", "sha256": n, "split": "train", "pairs": 1}
                for n in notes
            ]
        ),
    )
    db.insert_rows(
        "raw_notes",
        pd.DataFrame([{"note_id": n, "path": f"{n}.md", "title": n, "text": t, "sha256": n} for n, t in notes.items()]),
    )


def test_push_refuses_an_adapter_trained_on_personal_data_unless_told_and_the_card_says_so(
    tmp_path, capsys, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    db = Warehouse(data / "warehouse.duckdb")
    dataset_with(db, {"letters": "Write to ann@example.org.", "chain": "Chains wear."})
    save_findings(db, "chain", "chain", {}, "gemini", "redact", "names covered by the list only")
    adapter = fake_adapter(tmp_path / "adapter", "dv1")
    check = check_training_notes(db, "dv1", lambda: Scanner())  # 'letters' was never scanned: scanned on the spot
    assert check.found == {"letters.md": {"EMAIL": 1}} and check.unchecked == []
    monkeypatch.delenv("HF_TOKEN", raising=False)
    base = ["--notes-dir", str(tmp_path / "notes"), "--data-dir", str(data), "push", "--repo-id", "me/voice"]
    assert main([*base, "--adapter", str(adapter)]) == 1
    refused = capsys.readouterr().err
    assert "trained on personal data" in refused and "letters.md (EMAIL ×1)" in refused
    assert "--allow-personal-data" in refused and "ann@example.org" not in refused
    assert main([*base, "--adapter", str(adapter), "--allow-personal-data"]) == 1
    assert "set HF_TOKEN" in capsys.readouterr().err  # past the check: on to the Hub (no token here)
    assert check_training_notes(db, "", lambda: Scanner()).refusal("x").startswith("cannot tell which notes")

    from fine_tune_dag.core.export.hub import model_card

    card = model_card(adapter, {}, "dv1", "bundled:SmolLM2-135M-Instruct")
    assert MODEL_CARD_NOTICE in card and "trained on personal writing" in card


def test_the_privacy_command_and_the_report_line_show_kinds_never_values(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    db = Warehouse(data / "warehouse.duckdb")
    dataset_with(db, {"letters": "x", "chain": "y"})
    save_findings(
        db, "letters", "letters", {"PERSON": 3, "EMAIL": 1}, "gemini", "redact", "names covered by the list only"
    )
    save_findings(db, "chain", "chain", {}, "gemini", "redact", "names covered by the list only")
    base = ["--notes-dir", str(tmp_path / "notes"), "--data-dir", str(data), "privacy"]
    assert main(base) == 0
    listing = capsys.readouterr().out
    assert "letters.md: PERSON ×3, EMAIL ×1  [gemini: redact]" in listing and "chain.md" not in listing
    assert "1 of 2 scanned notes hold personal data; names covered by the list only" in listing
    assert main([*base, "--all"]) == 0 and "chain.md: none" in capsys.readouterr().out
    line = report_line(db, "dv1")
    assert line.startswith("2 of 2 notes scanned, 1 with personal data (PERSON ×3, EMAIL ×1); teacher: gemini: redact")
    assert "names covered by the list only" in line


def test_placeholders_replace_whole_words_only():
    placeholders = Placeholders()
    placeholders.add(Finding("PERSON", 0, 3, "Ann", 1.0))
    assert placeholders.redact("Ann, Annual and ANN.") == "PERSON_1, Annual and PERSON_1."
    assert placeholders.restore("PERSON_1 and PERSON_12") == "Ann and PERSON_12"
