"""The evaluation report: a verdict first, then figures, pictures and side-by-side examples."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from fine_tune_dag.core.common.markdown import table  # noqa: E402
from fine_tune_dag.core.common.statistics import Interval
from fine_tune_dag.core.evaluation.efficacy import (
    AUTHORSHIP_DECIDES,
    CONTENDER_ROLES,
    METRIC_LABELS,
    Efficacy,
    HeldOut,
    Verdict,
)
from fine_tune_dag.core.evaluation.gate import (
    ANSWER_NLL,
    AUTHORSHIP,
    GROUNDING,
    VOICE,
    Measure,
    PromotionVerdict,
    stored_gap,
)

if TYPE_CHECKING:  # scikit-learn loads only where a classifier is trained, torch only where canaries are read
    from fine_tune_dag.core.evaluation.authorship import Calibration
    from fine_tune_dag.core.evaluation.canary import Exposure
    from fine_tune_dag.core.store.blind import BlindReading

CONTENDER_COLORS = {
    "base": "tab:gray",
    "prompted": "tab:olive",
    "base+rag": "tab:cyan",
    "champion": "tab:blue",
    "tuned": "tab:green",
    "tuned+rag": "tab:red",
}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    loss_curve: Path | None  # None for a verdict with no adapter of its own (cross-validation)
    metrics_chart: Path
    text: str

    def with_inline_images(self) -> str:
        """The Markdown with its PNGs embedded as data URIs, for viewers that cannot open local files."""

        def inline(match: re.Match[str]) -> str:
            data = base64.b64encode((self.markdown.parent / match.group(2)).read_bytes()).decode("ascii")
            return f"![{match.group(1)}](data:image/png;base64,{data})"

        return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, self.text)

    @property
    def html(self) -> Path:
        return self.markdown.with_suffix(".html")

    def write_html(self) -> Path:
        """One self-contained page (styles and images inline) to open in any browser or attach anywhere."""
        body = MarkdownIt("commonmark").enable("table").render(self.with_inline_images())
        title = html.escape(self.text.splitlines()[0].lstrip("# ").strip())
        page = _HTML_PAGE.format(title=title, body=body)
        self.html.write_text(page, encoding="utf-8")
        return self.html


_HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""


def _cell(summary: Mapping[str, float], intervals: Mapping[str, Interval], metric: str, digits: int = 3) -> str:
    """A metric with its interval when there is one; a dash where it was not measured."""
    if metric in intervals and not math.isnan(intervals[metric].value):
        return str(intervals[metric])
    value = summary.get(metric, math.nan)
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def worth_it_table(summary: Mapping[str, Mapping[str, float]], efficacy: Efficacy, costs: Mapping[str, str]) -> str:
    """Every contender on voice, authorship, grounding, loops and cost: the answer to "was it worth it?"."""
    rows = []
    undecided = " (cannot decide: see the calibration)" if summary.get("tuned", {}).get(AUTHORSHIP_DECIDES) == 0 else ""
    for name, values in summary.items():
        spread = efficacy.intervals.get(name, {})
        rows.append(
            [
                name,
                CONTENDER_ROLES.get(name, name),
                _cell(values, spread, "voice_perplexity"),
                _cell(values, spread, "authorship") + undecided,
                _cell(values, spread, "unsupported"),
                _cell(values, spread, "rouge_l"),
                _cell(values, spread, "cited_right"),
                _cell(values, {}, "loops", 2),
                _cell(values, {}, "memorized", 2),
                costs.get(name, ""),
            ]
        )
    return table(
        rows,
        [
            "contender",
            "how it answers",
            "voice perplexity [95% CI] (lower: more like you)",
            "written notes attributed to you [95% CI]",
            "unsupported content [95% CI]",
            "ROUGE-L [95% CI]",
            "right note cited [95% CI]",
            "looping",
            "regurgitating",
            "cost",
        ],
    )


def _reading(measure: Measure, gap: Interval) -> str:
    if not gap.decided:
        return f"cannot tell ({gap.notes} note{'s' * (gap.notes != 1)})"
    if measure.better(gap):
        return "**better beyond noise**"
    if measure.worse(gap):
        return "**worse beyond noise**"
    return "within noise"


def comparisons_table(summary: Mapping[str, Mapping[str, float]], mine: str = "tuned") -> str:
    """The new adapter against every other contender, paired over the same items, each interval resampling notes."""
    rows = []
    for measure in (VOICE, AUTHORSHIP, GROUNDING, ANSWER_NLL):
        for other in summary:
            gap = stored_gap(summary, mine, measure, other)
            if other == mine or gap is None:
                continue
            rows.append(
                [
                    f"{mine} vs {other}",
                    measure.label,
                    str(gap),
                    f"{gap.notes} notes, {gap.items} items",
                    _reading(measure, gap),
                ]
            )
    return table(rows, ["comparison", "measure", "difference (mine − theirs) [95% CI]", "rests on", "reading"])


def not_judged(held_out: HeldOut, calibration_text: str | None) -> list[str]:
    """What this evaluation could not judge, in words, so a missing figure is never read as a pass."""
    gaps = []
    if not held_out.qa_notes:
        gaps.append("answer NLL and grounding: no held-out Q&A items (the held-out notes kept no pair)")
    if not held_out.voice_notes:
        gaps.append("voice, authorship and the blind test: no held-out passages")
    if held_out.voice_notes and calibration_text is None:
        gaps.append("authorship: no train passages to train the classifier on")
    return gaps


def plot_worth_it(summary: Mapping[str, Mapping[str, float]], efficacy: Efficacy, path: Path) -> Path:
    """Voice perplexity, authorship and unsupported content per contender, each with its 95% interval."""
    names = [
        ("voice_perplexity", "voice perplexity (lower is better)"),
        ("authorship", "attributed to you (higher is better)"),
        ("unsupported", "unsupported content (lower is better)"),
    ]
    figure, axes = plt.subplots(1, len(names), figsize=(14, 3.4))
    contenders = list(summary)
    for axis, (metric, label) in zip(axes, names):
        spreads = [efficacy.intervals.get(c, {}).get(metric) for c in contenders]
        values = [summary[c].get(metric, math.nan) for c in contenders]
        heights = [0 if math.isnan(v) else v for v in values]
        errors = [
            [v - s.low if s and s.decided else 0 for v, s in zip(heights, spreads)],
            [s.high - v if s and s.decided else 0 for v, s in zip(heights, spreads)],
        ]
        axis.bar(
            contenders,
            heights,
            yerr=errors,
            capsize=4,
            color=[CONTENDER_COLORS.get(c, "tab:purple") for c in contenders],
        )
        axis.set_title(label, fontsize=9)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        for x, value in enumerate(values):
            axis.annotate(
                "—" if math.isnan(value) else f"{value:.2f}",
                (x, 0 if math.isnan(value) else value),
                ha="left",
                va="bottom",
                fontsize=8,
            )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_loss_curve(steps: pd.DataFrame, path: Path) -> Path:
    """Train loss and token accuracy every step; held-out loss and accuracy where they were measured. A DPO
    run (its steps carry `rewards/accuracies`) shows its loss and how often the chosen answer wins."""
    preference = "rewards/accuracies" in steps
    accuracy, accuracy_label = (
        ("rewards/accuracies", "chosen answer preferred")
        if preference
        else ("mean_token_accuracy", "train token accuracy")
    )
    figure, loss_axis = plt.subplots(figsize=(7, 3.6))
    lines = loss_axis.plot(steps["step"], steps["loss"], marker="o", color="tab:blue", label="train loss")
    accuracy_axis = loss_axis.twinx()
    lines += accuracy_axis.plot(
        steps["step"], steps[accuracy], color="tab:orange", linestyle="--", label=accuracy_label
    )
    if "eval_loss" in steps:
        held = steps.dropna(subset=["eval_loss"])
        lines += loss_axis.plot(held["step"], held["eval_loss"], marker="s", color="tab:red", label="held-out loss")
        lines += accuracy_axis.plot(
            held["step"],
            held["eval_token_accuracy"],
            marker="s",
            linestyle=":",
            color="tab:brown",
            label="held-out token accuracy",
        )
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("DPO loss" if preference else "answer-token loss")
    accuracy_axis.set_ylabel("share of pairs" if preference else "token accuracy")
    loss_axis.legend(handles=lines, loc="best", fontsize=8)
    loss_axis.set_title("Preference training (DPO)" if preference else "Training")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_metrics(summary: dict[str, dict[str, float]], path: Path) -> Path:
    names = ["nll", "rouge_l", "token_f1", "unsupported", "style_distance"]
    figure, axes = plt.subplots(1, len(names), figsize=(14, 3.4))
    for axis, name in zip(axes, names):
        values = [summary[c][name] for c in summary]
        axis.bar(list(summary), values, color=[CONTENDER_COLORS.get(c, "tab:purple") for c in summary])
        axis.set_title(METRIC_LABELS[name], fontsize=9)
        for x, value in enumerate(values):
            axis.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def metrics_table(summary: dict[str, dict[str, float]]) -> str:
    rows = [
        [label] + [f"{summary[c].get(name, math.nan):.4f}" for c in summary] for name, label in METRIC_LABELS.items()
    ]
    return table(rows, ["metric", *summary])


def examples_table(results: dict[str, pd.DataFrame], count: int) -> str:
    """Contenders side by side on the same items (every frame holds the same questions in order)."""
    names = list(results)
    first = results[names[0]]
    rows = [
        [first["question"].iloc[i], first["reference"].iloc[i], *(results[n]["generation"].iloc[i] for n in names)]
        for i in range(min(count, len(first)))
    ]
    return table(rows, ["question", "reference", *names], limit=220)


def verdict_section(
    summary: Mapping[str, Mapping[str, float]],
    efficacy: Efficacy,
    gate: PromotionVerdict,
    verdict: Verdict,
    calibration: Calibration | None,
    blind: BlindReading | None,
    costs: Mapping[str, str],
    min_held_out_notes: int,
) -> str:
    """The answer first, then everything it rests on: the gate, the held-out counts, the table, the paired
    comparisons, the classifier's own calibration and the blind test."""
    held_out = efficacy.held_out
    overridden = [f"promoted all the same: `{gate.override}` is set"] if gate.override else []
    gate_lines = "\n".join(f"- {reason}" for reason in (*gate.reasons, *overridden))
    text = f"""{verdict.text}

**Promotion gate: {"passes" if gate.passed else "does not pass"}.**

{gate_lines}

**Held out:** {held_out.text}. Every interval below resamples these notes (passages of one note are not
independent), and every comparison is paired over the items both contenders were scored on.
"""
    if held_out.notes < min_held_out_notes:
        text += (
            f"\n**Few held-out notes ({held_out.notes} < {min_held_out_notes}):** intervals from so few notes are rough "
            "and rarely decide anything. Ask for a cross-validated verdict (`fine-tune-dag crossval`: k folds by "
            "note, each training and evaluating an adapter), which judges the method on every note.\n"
        )
    gaps = not_judged(held_out, calibration.text if calibration else None)
    if gaps:
        text += "\n**Not judged:** " + "; ".join(gaps) + ".\n"
    text += f"""
{worth_it_table(summary, efficacy, costs)}

![voice, authorship and grounding](worth_it.png)

### The new adapter against each contender

{comparisons_table(summary)}

Voice: perplexity of your held-out notes' own passages under "write a note about …" (retrieval never hands a
contender the passage it is scored on); its difference is in nats per token (−0.1 is about 10% lower perplexity).
Authorship: share of the notes a contender wrote, each cut to the same number of words, that a classifier trained
on your train passages against other writers only (never on any contender's output) attributes to you.
Unsupported content: share of an answer's content words absent from its source passage. Looping: share of
generations stuck repeating a phrase. Regurgitating: share of generations that copy a long run of words from the
train split.

**The authorship classifier's own calibration** (cross-validated by note): {calibration.text if calibration else "not measured"}
"""
    text += f"\n**Blind test:** {blind.text}\n" if blind is not None else ""
    return text


def canary_section(found: Sequence[Exposure]) -> str:
    """Each planted canary's exposure under the new adapter, against chance and the bound of noise."""
    from fine_tune_dag.core.evaluation.canary import chance_bound, chance_exposure  # torch is loaded by now

    bound, chance = chance_bound(len(found)), chance_exposure(found[0].candidates)
    rows = [[f"the {e.canary.prefix} code is …", f"{e.rank} of {e.candidates}", f"{e.bits:.1f}"] for e in found]
    above = sum(e.bits >= bound for e in found)
    return f"""
## Memorization: canaries planted on purpose

The canaries `fine-tune-dag plant-canaries` wrote into your notes (random words and digits, seeded), ranked among
same-format candidates under the new adapter: exposure in bits (Carlini et al., "The Secret Sharer"). A canary the
model never saw averages {chance:.1f} bits; {len(found)} of them all stay below {bound:.1f} bits with probability 95%.
**{above} of {len(found)} above that bound**: {"the adapter has memorized them" if above else "within noise of chance"}.

{table(rows, ["canary (secret left out)", "rank", "exposure (bits)"])}
"""


def _write(folder: Path, text: str, loss_curve: Path | None, metrics_chart: Path) -> ReportFiles:
    markdown = folder / "report.md"
    markdown.write_text(text, encoding="utf-8")
    files = ReportFiles(markdown, loss_curve, metrics_chart, text)
    files.write_html()
    return files


def write_verdict_report(
    folder: Path,
    title: str,
    summary: dict[str, dict[str, float]],
    efficacy: Efficacy,
    gate: PromotionVerdict,
    verdict: Verdict,
    calibration: Calibration | None,
    facts: dict[str, Any],
    min_held_out_notes: int,
) -> ReportFiles:
    """A verdict with what it rests on and no adapter of its own to show: the cross-validated verdict."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics_chart = plot_metrics(summary, folder / "metrics.png")
    plot_worth_it(summary, efficacy, folder / "worth_it.png")
    text = f"""# {title}

## Was fine-tuning worth it on your notes?

{verdict_section(summary, efficacy, gate, verdict, calibration, None, {}, min_held_out_notes)}
## Metrics pooled over the folds

{metrics_table(summary)}

![metrics](metrics.png)

## How it was run

{table(list(facts.items()), ["fact", "value"])}
"""
    return _write(folder, text, None, metrics_chart)


def write_report(
    folder: Path,
    title: str,
    summary: dict[str, dict[str, float]],
    results: dict[str, pd.DataFrame],
    training_steps: pd.DataFrame,
    facts: dict[str, Any],
    gate: PromotionVerdict,
    verdict: Verdict,
    efficacy: Efficacy,
    head_to_head: Sequence[tuple[str, str, Interval]] = (),
    edge_cases: str = "",
    examples: int = 6,
    calibration: Calibration | None = None,
    blind: BlindReading | None = None,
    costs: Mapping[str, str] | None = None,
    written: str = "",
    min_held_out_notes: int = 5,
    canaries: Sequence[Exposure] = (),
) -> ReportFiles:
    """`gate` is whether this adapter may replace the champion, and why; `verdict` the recommendation the report
    opens with; `head_to_head` the new adapter's win rates against each other contender, with intervals;
    `canaries` the exposures of canaries planted on purpose, only when the evaluation was asked for them."""
    folder.mkdir(parents=True, exist_ok=True)
    loss_curve = plot_loss_curve(training_steps, folder / "loss_curve.png")
    metrics_chart = plot_metrics(summary, folder / "metrics.png")
    plot_worth_it(summary, efficacy, folder / "worth_it.png")
    text = f"""# {title}

## Was fine-tuning worth it on your notes?

{verdict_section(summary, efficacy, gate, verdict, calibration, blind, costs or {}, min_held_out_notes)}"""
    if written:
        text += f"""
### Your voice, side by side

Held-out passages of yours and what each contender wrote on the same prompt (sampled with the generation
defaults).

{written}
"""
    text += f"""

## Metrics on the test split

{metrics_table(summary)}

![metrics](metrics.png)

## Head to head: the new adapter against each contender

Share of test items the new adapter wins (ties count half), with a 95% interval that resamples held-out notes;
a win beyond noise needs the whole interval above 0.5.

{table([[f"tuned vs {name}", basis, str(rate)] for name, basis, rate in head_to_head], ["comparison", "judged on", "win rate [95% CI]"])}

## Training

![loss curve](loss_curve.png)

{table(list(facts.items()), ["fact", "value"])}

## Side by side

{examples_table(results, examples)}
"""
    if canaries:
        text += canary_section(canaries)
    if edge_cases:
        text += f"""
## Edge cases across adapter versions

The held-out questions the base model found hardest, and your own (`edge_cases.jsonl`), answered by
the base model and each adapter version.

{edge_cases}
"""
    return _write(folder, text, loss_curve, metrics_chart)
