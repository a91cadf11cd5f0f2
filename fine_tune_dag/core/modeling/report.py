"""The evaluation report: a verdict first, then figures, pictures and side-by-side examples."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from fine_tune_dag.core.modeling.statistics import Interval
from fine_tune_dag.core.text.markdown import table  # noqa: E402

CONTENDER_COLORS = {"base": "tab:gray", "prompted": "tab:olive", "champion": "tab:blue", "tuned": "tab:green"}
METRIC_LABELS = {
    "nll": "answer NLL (lower is better)",
    "perplexity": "perplexity (lower is better)",
    "rouge_l": "ROUGE-L F1 (higher is better)",
    "token_f1": "token F1 (higher is better)",
    "unsupported": "unsupported content (lower is better)",
    "style_distance": "style distance to the author (lower is better)",
    "words": "words per answer",
}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    loss_curve: Path
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


def verdict(base: dict[str, float], tuned: dict[str, float]) -> str:
    change = (tuned["nll"] - base["nll"]) / base["nll"] * 100 if base["nll"] else 0.0
    if tuned["nll"] < base["nll"]:
        return f"The adapter beats the base model on held-out notes: answer NLL {base['nll']:.3f} → {tuned['nll']:.3f} ({change:+.1f}%)."
    return f"The adapter does not beat the base model on held-out notes: answer NLL {base['nll']:.3f} → {tuned['nll']:.3f} ({change:+.1f}%)."


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
    rows = [[label] + [f"{summary[c][name]:.4f}" for c in summary] for name, label in METRIC_LABELS.items()]
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


def write_report(
    folder: Path,
    title: str,
    summary: dict[str, dict[str, float]],
    results: dict[str, pd.DataFrame],
    training_steps: pd.DataFrame,
    facts: dict[str, Any],
    promotion: str,
    head_to_head: Sequence[tuple[str, str, Interval]] = (),
    edge_cases: str = "",
    examples: int = 6,
) -> ReportFiles:
    """`promotion` is the gate's verdict in words: whether this adapter may replace the champion, and why.
    `head_to_head` holds the new adapter's win rates against each other contender, with intervals."""
    folder.mkdir(parents=True, exist_ok=True)
    loss_curve = plot_loss_curve(training_steps, folder / "loss_curve.png")
    metrics_chart = plot_metrics(summary, folder / "metrics.png")
    text = f"""# {title}

**{verdict(summary["base"], summary["tuned"])}**

**Promotion gate:** {promotion}

## Metrics on the test split

{metrics_table(summary)}

![metrics](metrics.png)

## Head to head: the new adapter against each contender

Share of test items the new adapter wins (ties count half), with a 95% bootstrap interval; above
0.5 with the whole interval above 0.5 is a win beyond noise.

{table([[f"tuned vs {name}", basis, str(rate)] for name, basis, rate in head_to_head], ["comparison", "judged on", "win rate [95% CI]"])}

## Training

![loss curve](loss_curve.png)

{table(list(facts.items()), ["fact", "value"])}

## Side by side

{examples_table(results, examples)}
"""
    if edge_cases:
        text += f"""
## Edge cases across adapter versions

The held-out questions the base model found hardest, and your own (`edge_cases.jsonl`), answered by
the base model and each adapter version.

{edge_cases}
"""
    markdown = folder / "report.md"
    markdown.write_text(text, encoding="utf-8")
    files = ReportFiles(markdown, loss_curve, metrics_chart, text)
    files.write_html()
    return files
