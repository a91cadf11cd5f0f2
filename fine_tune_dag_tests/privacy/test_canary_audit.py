"""The privacy audit on the bundled model (SmolLM2-135M-Instruct): canaries planted in a note, trained on, then
forgotten and trained without. Exposure is in bits among 4,096 same-format candidates (at most 12); "within noise
of chance" is below `chance_bound`, which canaries the model never saw all stay under with probability 95%.
About 2.5 minutes on 2 cores (measured while other work loaded the machine, load average 6)."""

from __future__ import annotations

import pytest
from fine_tune_dag_testkit.canary_audit import AUDIT_CANARIES, CANARY_FILE, run_canary_audit

from fine_tune_dag.cli import main
from fine_tune_dag.core.evaluation.canary import (
    CANARY_NOTE,
    CanarySettings,
    chance_bound,
    chance_exposure,
    make_canaries,
)
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    base = resolve_model(BUNDLED_MODEL, tmp_path_factory.mktemp("models")).path
    return run_canary_audit(tmp_path_factory.mktemp("audit") / "run", base, AUDIT_CANARIES)


def test_canaries_are_exposed_before_forget(audit):
    # a canary the model never saw reaches 8 bits with probability 1/256; the audit's settings put both near 12
    assert max(e.bits for e in audit.before) >= 8, [e.bits for e in audit.before]
    assert all(e.candidates == AUDIT_CANARIES.candidates for e in audit.before)


def test_canaries_are_at_chance_after_forget_and_retraining(audit):
    bound = chance_bound(AUDIT_CANARIES.count)
    assert 5.3 < bound < 5.4 and 1.4 < chance_exposure(AUDIT_CANARIES.candidates) < 1.5
    assert audit.forgetting.note_key == note_partition_key(CANARY_FILE)
    assert audit.forgetting.adapters_marked == [audit.trained] and audit.retrained != audit.trained
    assert max(e.bits for e in audit.after) < bound, [e.bits for e in audit.after]
    # canaries of the same format that were never planted, under the same retrained adapter: chance, measured
    assert max(e.bits for e in audit.never_planted) < bound, [e.bits for e in audit.never_planted]


def test_canaries_are_planted_only_on_request_and_never_over_a_file(tmp_path, capsys):
    notes = tmp_path / "notes"
    assert not EvaluationSettings().canary_audit  # the report measures none unless asked
    assert main(["--notes-dir", str(notes), "--data-dir", str(tmp_path / "data"), "plant-canaries"]) == 0
    written = (notes / CANARY_NOTE).read_text()
    planted = make_canaries(CanarySettings())
    assert all(written.count(f"{c.text}.") == CanarySettings().repetitions for c in planted)
    assert main(["--notes-dir", str(notes), "--data-dir", str(tmp_path / "data"), "plant-canaries"]) == 1
    assert "exists already; nothing written" in capsys.readouterr().err
    assert (notes / CANARY_NOTE).read_text() == written
