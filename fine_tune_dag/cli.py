"""`fine-tune-dag`: run the graph from a terminal, with a progress bar, on the same Dagster instance
the web UI reads, so every run shows up there too."""

# Each command imports what it uses inside its handler: `--help`, report, requests, rejected, lineage,
# estimate and privacy start without torch or transformers (fine_tune_dag_tests/end_to_end/test_cli_startup.py keeps it so). The
# parser's defaults come from torch-free settings modules.
from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, fields, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.retrieval.settings import RetrievalSettings
from fine_tune_dag.runner import (
    failure_reason,
    job_run_config,
    materialize_graph,
    project_instance,
    register_note_partitions,
)
from fine_tune_dag.settings import ProjectSettings

if TYPE_CHECKING:
    import pandas as pd

    from fine_tune_dag.core.store.warehouse import Warehouse

BASE_MODEL_ONLY = "base"  # `generate --adapter base`: no adapter, to hear what fine-tuning changed


def _warehouse(settings: ProjectSettings) -> Warehouse:
    from fine_tune_dag.core.store.warehouse import Warehouse

    return Warehouse(settings.warehouse)


def _quiet_model_loading() -> None:
    """One progress bar (ours) instead of one per model load, for the commands that load models."""
    import transformers

    transformers.logging.disable_progress_bar()


def run_demo(settings: ProjectSettings, args: argparse.Namespace) -> int:
    from fine_tune_dag.definitions import definitions_from_settings

    _quiet_model_loading()
    started = time.perf_counter()
    defs = definitions_from_settings(settings)
    print(f"notes: {settings.layout.notes.resolve()}  data: {settings.layout.data.resolve()}")
    run = materialize_graph(defs, project_instance(), settings.layout.notes)
    print(
        f"\n{len(run.notes)} notes, {len(run.failed_notes)} failed; finished in {time.perf_counter() - started:.0f} s"
    )
    if not run.success:
        print(f"training and evaluation failed: {run.model_failure}", file=sys.stderr)
        return 1
    if not run.promoted:
        print("the new adapter did not pass the promotion gate (see the report); the champion is unchanged")
    return print_latest_report(settings, args)


def run_crossval(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """The cost estimate first, then every fold not yet run (each a Dagster run the UI shows), then the verdict."""
    from tqdm import tqdm

    from fine_tune_dag.assets.crossval import CROSSVAL_FOLDS, CROSSVAL_VERDICT
    from fine_tune_dag.automation.jobs import crossval_job, crossval_verdict_job
    from fine_tune_dag.core.dataset.splits import fold_key
    from fine_tune_dag.core.evaluation.config import EvaluationSettings
    from fine_tune_dag.core.training.sft_config import TrainingSettings
    from fine_tune_dag.core.workflows.crossval import estimate_crossval
    from fine_tune_dag.definitions import definitions_from_settings

    settings = replace(settings, crossval_folds=args.folds or settings.crossval_folds)
    folds = settings.crossval_folds
    print(f"estimate: {estimate_crossval(_warehouse(settings), folds, TrainingSettings(), EvaluationSettings()).text}")
    if args.estimate:
        return 0
    _quiet_model_loading()
    defs, instance = definitions_from_settings(settings), project_instance()
    run_config = {"ops": {CROSSVAL_FOLDS: {"config": {}}, CROSSVAL_VERDICT: {"config": {}}}}
    job = defs.resolve_job_def(crossval_job.name)
    for fold in tqdm(range(folds), desc="cross-validation folds", unit="fold"):
        result = job.execute_in_process(
            instance=instance,
            partition_key=fold_key(fold, folds),
            run_config=job_run_config(job, run_config, "WARNING"),
            raise_on_error=False,
        )
        if not result.success:
            print(f"{fold_key(fold, folds)} failed: {failure_reason(result)} (rerun to resume)", file=sys.stderr)
            return 1
    verdict_job = defs.resolve_job_def(crossval_verdict_job.name)
    result = verdict_job.execute_in_process(
        instance=instance, run_config=job_run_config(verdict_job, run_config, "WARNING"), raise_on_error=False
    )
    if not result.success:
        print(f"the cross-validated verdict failed: {failure_reason(result)}", file=sys.stderr)
        return 1
    metadata = result.asset_materializations_for_node(CROSSVAL_VERDICT)[0].metadata
    print(f"\nCross-validated verdict: {metadata['verdict'].value.replace('**', '')}")
    print(f"Report: {metadata['report'].value}")
    return 0


def register(settings: ProjectSettings, args: argparse.Namespace) -> int:
    keys = register_note_partitions(project_instance(), args.notes_dir)
    print(f"{len(keys)} note partitions registered from {args.notes_dir}")
    return 0


def print_latest_report(settings: ProjectSettings, args: argparse.Namespace) -> int:
    from fine_tune_dag.core.evaluation.efficacy import METRIC_LABELS
    from fine_tune_dag.core.store.registry import current_champion, evaluation_summary, latest_evaluation

    db = _warehouse(settings)
    evaluation = latest_evaluation(db)
    if evaluation is None:
        print("no evaluation report yet")
        return 1
    summary = evaluation_summary(db, evaluation.adapter_version)
    names = list(summary)
    report = Path(evaluation.report_path).resolve()
    print(f"\nReport: {report} (and {report.with_suffix('.html').name}, self-contained)")
    print(f"Adapter {evaluation.adapter_version} on {evaluation.test_examples} held-out items:")
    labels = {metric: label.split(" (")[0] for metric, label in METRIC_LABELS.items()}
    width = max(map(len, labels.values())) + 2
    print("  " + " " * width + "".join(f"{name:>12}" for name in names))
    for metric, label in labels.items():
        print("  " + f"{label:<{width}}" + "".join(f"{summary[n].get(metric, float('nan')):>12.3f}" for n in names))
    if isinstance(evaluation.recommendation, str):  # evaluations from before the verdict was recorded have none
        print("\nWas fine-tuning worth it? " + evaluation.recommendation.replace("**", ""))
    champion = current_champion(db)
    print(f"  champion: {'none yet' if champion is None else champion.version}")
    return 0


def print_lineage(settings: ProjectSettings, args: argparse.Namespace) -> int:
    from fine_tune_dag.core.store.registry import lineage_text

    print(lineage_text(_warehouse(settings)))
    return 0


def print_requests(settings: ProjectSettings, args: argparse.Namespace) -> int:
    from fine_tune_dag.core.store.request_log import LISTED_COLUMNS, read_requests, summarize_requests

    log = read_requests(_warehouse(settings), args.template, args.status, args.since, args.run_id)
    summary = summarize_requests(log)
    print(
        f"{summary['requests']} requests: {summary['calls']} calls, {summary['cache_hits']} cache hits "
        f"({summary['cache_hit_rate']:.0%}), {summary['input_tokens']} input and {summary['output_tokens']} output "
        f"tokens, ${summary['cost_usd']:.4f}, {summary['rejected']} blocked or empty"
    )
    if len(log):
        print(log[LISTED_COLUMNS].head(args.limit).to_string(index=False, max_colwidth=28))
    return 0


def print_privacy(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """Notes whose scan found personal data: counts by kind (never the values) and the policy each met."""
    from fine_tune_dag.core.privacy.findings import findings_listing

    print(findings_listing(_warehouse(settings), everything=args.all))
    return 0


def print_rejected(settings: ProjectSettings, args: argparse.Namespace) -> int:
    from fine_tune_dag.core.store.notes import rejected_listing

    rejected, unread = rejected_listing(_warehouse(settings), settings.layout.notes)
    for line in rejected + unread:
        print(line)
    print(f"{len(rejected) or 'no'} rejected notes" + (f", {len(unread)} files of a type not read" if unread else ""))
    return 0


def print_estimate(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """Notes not yet synthesized with their current content: expected calls, tokens, cost, training tokens."""
    import pandas as pd

    from fine_tune_dag.core.common.llm_types import DEFAULT_PRICES
    from fine_tune_dag.core.dataset.splits import DEFAULT_TEST_FRACTION
    from fine_tune_dag.core.ingest.notes import NoteParseError, discover_notes, parse_note
    from fine_tune_dag.core.store.notes import synthesized_note_hashes
    from fine_tune_dag.core.training.sft_config import TrainingSettings
    from fine_tune_dag.core.workflows.estimate import CostEstimate, History, estimate_note, expected_training_tokens

    notes_dir = settings.layout.notes
    db = _warehouse(settings)
    provider, model = settings.llm_choice()
    history = History.from_warehouse(db, provider)
    synthesized = synthesized_note_hashes(db)
    total, rows = CostEstimate(), []
    for note_id, path in discover_notes(notes_dir).items():
        try:
            note = parse_note(path, notes_dir, settings.source_settings())
        except NoteParseError as error:
            print(f"skipped {error.path}: {error.reason}", file=sys.stderr)
            continue
        if synthesized.get(note_id) == note.sha256:
            continue
        expected = estimate_note(note_id, note.text, note.title, history, model, DEFAULT_PRICES)
        total.add(expected)
        rows.append([note.path, expected.requests, expected.input_tokens, expected.output_tokens, expected.cost_usd])
    training = expected_training_tokens(
        total.candidate_pairs, history, 1 - DEFAULT_TEST_FRACTION, TrainingSettings.epochs
    )
    print(f"{len(rows)} notes to synthesize with {provider} model {model}:")
    if rows:
        frame = pd.DataFrame(rows, columns=["note", "requests", "input tokens", "output tokens", "cost USD"])
        print(frame.to_string(index=False, max_colwidth=48))
    print(
        f"total: {total.requests} requests, {total.input_tokens} input + {total.output_tokens} output tokens, "
        f"${total.cost_usd:.4f}; then about {training} training tokens "
        f"(keep rate {history.keep_rate:.0%}, {history.pair_tokens:.0f} tokens a pair, {TrainingSettings.epochs:g} epochs)"
    )
    return 0


def answer_prompt(args: argparse.Namespace, settings: ProjectSettings, folder: Path | None) -> None:
    """Stream an answer from the adapter in `folder`, or from the base model alone (None). Decoding follows the
    adapter's saved settings (the defaults for the base model), with the options given here over them; which
    model answered, and how, goes to stderr so that stdout is the answer alone."""
    from fine_tune_dag.core.generation.answers import stream_answer
    from fine_tune_dag.core.generation.base import EngineSettings
    from fine_tune_dag.core.generation.engines import open_engine
    from fine_tune_dag.core.models.adapters import adapter_base_dir, load_generation_settings
    from fine_tune_dag.core.models.loading import load_tokenizer, select_device
    from fine_tune_dag.core.models.resolution import resolve_model
    from fine_tune_dag.core.retrieval.index import PassageIndex
    from fine_tune_dag.core.retrieval.prompt import cited_notes

    if folder is None:
        model_dir, adapters = resolve_model(settings.base_model, settings.layout.models).path, {}
        tokenizer, saved, who = load_tokenizer(model_dir), GenerationSettings(), "base model"
    else:
        model_dir, adapters = adapter_base_dir(folder), {"adapter": folder}
        tokenizer, saved, who = load_tokenizer(folder), load_generation_settings(folder), f"adapter {folder.name}"
    engine = open_engine(
        model_dir,
        adapters,
        tokenizer,
        EngineSettings(settings.generation_engine),
        select_device(),  # type: ignore[arg-type]
    )
    given = {option.name: getattr(args, option.name) for option in fields(GenerationSettings)}
    generation = replace(saved, **{name: value for name, value in given.items() if value is not None})
    how = ", ".join(f"{name} {value}" for name, value in asdict(generation).items())
    passages = PassageIndex.load(settings.layout.index).search(args.prompt, args.top_k) if args.rag else []
    print(
        f"{who} answers{' with retrieval' if args.rag else ''} on {engine.choice.engine} ({how}):",
        file=sys.stderr,
        flush=True,
    )
    adapter = "adapter" if adapters else None
    pieces = stream_answer(
        engine, tokenizer, args.prompt, args.system, passages=passages, adapter=adapter, **asdict(generation)
    )
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    if passages:
        print("Notes used: " + ", ".join(cited_notes(passages)))


def export_adapter(folder: Path, merged: Path | None, gguf_dir: Path | None) -> None:
    """The adapter merged into its base as a transformers folder, as GGUF files with an Ollama Modelfile each, or
    both (the GGUF files are written from a merged folder, kept only when asked for)."""
    from fine_tune_dag.core.export.merge import export_merged

    if merged is None and gguf_dir is None:
        raise ValueError("say where: --merged DIR (transformers), --gguf DIR (llama.cpp and Ollama), or both")
    with tempfile.TemporaryDirectory(prefix="merged-") as scratch:
        merged_dir = export_merged(folder, merged or Path(scratch) / folder.name)  # the files are named after it
        if merged is not None:
            print(f"merged model written to {merged_dir}")
        if gguf_dir is not None:
            from fine_tune_dag.core.export.gguf import export_gguf, write_ollama_modelfile
            from fine_tune_dag.core.models.adapters import load_generation_settings
            from fine_tune_dag.core.models.loading import load_tokenizer

            tokenizer, saved = load_tokenizer(merged_dir), load_generation_settings(merged_dir)
            for written in export_gguf(merged_dir, gguf_dir):
                print(f"{written} (Ollama: {write_ollama_modelfile(written, tokenizer, saved)})")


def push_to_hub(folder: Path, row: pd.Series | None, args: argparse.Namespace, settings: ProjectSettings) -> None:
    """The adapter with a model card (the registry's test metrics, dataset and base model when it has them); refused
    when its training notes hold personal data, unless --allow-personal-data."""
    import pandas as pd

    from fine_tune_dag.core.export.hub import model_card, push_adapter
    from fine_tune_dag.core.models.adapters import training_provenance
    from fine_tune_dag.core.privacy.findings import check_training_notes
    from fine_tune_dag.core.privacy.scan import scanner_for
    from fine_tune_dag.core.store.registry import METRIC_COLUMNS

    dataset = str(row.dataset_version) if row is not None else training_provenance(folder).get("dataset_version", "")
    check = check_training_notes(
        _warehouse(settings), dataset, lambda: scanner_for(settings.private_words, settings.spacy_model)
    )
    refusal = check.refusal(row.version if row is not None else str(folder))
    if refusal and not args.allow_personal_data:
        raise RuntimeError(refusal)
    token = os.environ.get("HF_TOKEN", "")
    if not token:
        raise RuntimeError("set HF_TOKEN to push to the Hugging Face Hub")
    metrics = {} if row is None else {m: float(row[f"test_{m}"]) for m in METRIC_COLUMNS if pd.notna(row[f"test_{m}"])}
    card = model_card(
        folder, metrics, "" if row is None else row.dataset_version, "" if row is None else row.base_model
    )
    print(f"pushed to {push_adapter(folder, args.repo_id, token, card, private=not args.public)}")


def use_adapter(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """generate, export and push: the registry's adapter by name, or an adapter folder (generate: or `base`)."""
    from fine_tune_dag.core.store.registry import resolve_adapter

    _quiet_model_loading()
    try:
        if args.command == "generate" and args.adapter == BASE_MODEL_ONLY:
            answer_prompt(args, settings, None)
            return 0
        folder = Path(args.adapter) if Path(args.adapter).is_dir() else None
        row = None if folder else resolve_adapter(_warehouse(settings), args.adapter)
        folder = folder or Path(row.path)
        if args.command == "generate":
            answer_prompt(args, settings, folder)
        elif args.command == "export":
            export_adapter(folder, args.merged, args.gguf)
        else:
            push_to_hub(folder, row, args, settings)
    except (KeyError, FileNotFoundError, FileExistsError, RuntimeError, ValueError) as error:
        print(f"fine-tune-dag {args.command}: {error.args[0] if error.args else error}", file=sys.stderr)
        return 1
    return 0


def annotate(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """Serve the preference page (or, --blind, the "which did the author write?" page; --pairs, the review of
    synthetic pairs) until Ctrl-C; it starts even with nothing to label, so the page can say why."""
    from fine_tune_dag.apps.annotate.server import introduction, serve

    mode = "blind" if args.blind else "pairs" if args.pairs else "preference"
    who = (args.who or "").strip() or os.environ.get("USER") or getpass.getuser()
    db = _warehouse(settings)
    print("\n".join(introduction(db, who, args.port, mode)), flush=True)
    serve(db, who, args.port, mode=mode)
    return 0


def serve_models(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """`fine-tune-dag serve`: the API and playground until interrupted; the key comes from the environment."""
    import uvicorn

    from fine_tune_dag.apps.serve.server import API_KEY_VARIABLE, Models, check_binding, recorder, serve_app
    from fine_tune_dag.core.models.resolution import resolve_model
    from fine_tune_dag.core.serving.engine import Engine

    _quiet_model_loading()
    api_key = os.environ.get(API_KEY_VARIABLE, "")
    try:
        check_binding(args.host, api_key)
        base = resolve_model(settings.base_model, settings.layout.models).path
    except ValueError as error:
        print(f"fine-tune-dag serve: {error}", file=sys.stderr)
        return 1
    warehouse = _warehouse(settings)
    engine = Engine(base, recorder(warehouse), args.batch_size, args.queue_size)
    engine.start()
    print(
        f"serving on http://{args.host}:{args.port}: the playground at /, the OpenAI API at /v1"
        f"{' (API key required)' if api_key else ''}",
        flush=True,
    )
    try:
        uvicorn.run(
            serve_app(engine, Models(warehouse, settings.layout.index), api_key), host=args.host, port=args.port
        )
    finally:
        engine.stop()
    return 0


def forget(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """`forget NOTE`: the note's derived data removed and its adapters retired, then (unless --no-retrain) the
    graph trains, evaluates and promotes without it."""
    from fine_tune_dag.assets.forgetting import forget_in_instance
    from fine_tune_dag.core.workflows.forget import ForgetSettings, UnknownNote
    from fine_tune_dag.definitions import definitions_from_settings

    instance, db, retrain = project_instance(), _warehouse(settings), not args.no_retrain
    try:
        done = forget_in_instance(instance, db, settings.layout, args.note, ForgetSettings(retrain=retrain), "cli")
    except UnknownNote as error:
        print(f"fine-tune-dag forget: {error}", file=sys.stderr)
        return 1
    print(done.text)
    if not retrain or done.nothing_removed:
        return 0
    _quiet_model_loading()
    run = materialize_graph(definitions_from_settings(settings), instance, settings.layout.notes)
    return 0 if run.success else print(f"retraining failed: {run.model_failure}", file=sys.stderr) or 1


def plant(settings: ProjectSettings, args: argparse.Namespace) -> int:
    """`plant-canaries`: the privacy audit's canary note written into the notes folder, on the user's request."""
    from fine_tune_dag.core.evaluation.canary import CanarySettings, plant_canaries

    try:
        path, canaries = plant_canaries(settings.layout.notes, CanarySettings())
    except FileExistsError as error:
        print(f"fine-tune-dag plant-canaries: {error.filename} exists already; nothing written", file=sys.stderr)
        return 1
    print(f"planted {len(canaries)} canaries in {path}; set canary_audit in eval_report's config to see them")
    return 0


COMMANDS = {  # each command's handler, called with the settings over --notes-dir/--data-dir and the arguments
    "demo": run_demo,
    "crossval": run_crossval,
    "report": print_latest_report,
    "register": register,
    "lineage": print_lineage,
    "generate": use_adapter,
    "export": use_adapter,
    "push": use_adapter,
    "rejected": print_rejected,
    "privacy": print_privacy,
    "estimate": print_estimate,
    "requests": print_requests,
    "annotate": annotate,
    "serve": serve_models,
    "forget": forget,
    "plant-canaries": plant,
}


def build_parser(environment: ProjectSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fine-tune-dag", description=__doc__)
    parser.add_argument("--notes-dir", type=Path, default=Path(environment.notes_dir))
    parser.add_argument("--data-dir", type=Path, default=Path(environment.data_dir))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="materialize the whole graph on the notes folder and print the report")
    commands.add_parser("report", help="print the latest evaluation report's path and headline numbers")
    crossval = commands.add_parser(
        "crossval", help="a cross-validated verdict: k folds by note, each training and evaluating an adapter"
    )
    crossval.add_argument("--folds", type=int, help=f"folds by note (default {environment.crossval_folds})")
    crossval.add_argument("--estimate", action="store_true", help="print what it will cost, run nothing")
    commands.add_parser("register", help="add a `notes` partition for every note file (for the web UI)")
    commands.add_parser("lineage", help="which notes and dataset version led to which adapter and report")
    adapter_help = "champion (default), latest, a version, or an adapter folder"
    generate = commands.add_parser("generate", help="answer a prompt with an adapter, streaming tokens")
    generate.add_argument("prompt")
    generate.add_argument("--adapter", default="champion", help=f"{adapter_help}; {BASE_MODEL_ONLY}: no adapter")
    generate.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt (the one training used)")
    generate.add_argument(
        "--rag", action="store_true", help="answer with the passages retrieval finds in context, and name their notes"
    )
    generate.add_argument("--top-k", type=int, default=RetrievalSettings.top_k, help="passages retrieved (--rag)")
    for option in fields(GenerationSettings):  # default None: the adapter's saved setting
        generate.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(option.default),
            help=f"{option.metadata['help']} (default: the adapter's, saved with it; {option.default} for base)",
        )
    export = commands.add_parser("export", help="an adapter merged into its base: transformers folder and/or GGUF")
    export.add_argument("--merged", type=Path, help="transformers folder to write (must not exist or be empty)")
    export.add_argument("--gguf", type=Path, help="folder for f16 and q8_0 GGUF files, each with an Ollama Modelfile")
    export.add_argument("--adapter", default="champion", help=adapter_help)
    push = commands.add_parser("push", help="push an adapter with a model card to the Hugging Face Hub (HF_TOKEN)")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--adapter", default="champion", help=adapter_help)
    push.add_argument("--public", action="store_true", help="public repository (default: private)")
    push.add_argument(
        "--allow-personal-data",
        action="store_true",
        help="push even though the adapter's training notes hold personal data (see `fine-tune-dag privacy`)",
    )
    commands.add_parser("rejected", help="notes that could not be used, each with the reason")
    privacy = commands.add_parser(
        "privacy", help="notes with personal data found by the scan, by kind (never the values), and the policy met"
    )
    privacy.add_argument("--all", action="store_true", help="every scanned note, with or without findings")
    commands.add_parser("estimate", help="expected LLM calls, tokens and cost of the notes not yet synthesized")
    requests = commands.add_parser("requests", help="list and summarize the LLM request log")
    requests.add_argument("--template", help="only this prompt template")
    requests.add_argument("--status", choices=["ok", "blocked", "empty"], help="only answers with this status")
    requests.add_argument("--since", type=datetime.fromisoformat, help="only requests at or after (ISO date, UTC)")
    requests.add_argument("--run-id", help="only requests made by this Dagster run")
    requests.add_argument("--limit", type=int, default=20, help="rows listed (the summary covers every match)")
    annotate_parser = commands.add_parser("annotate", help="a local page to pick the better of two answers")
    annotate_parser.add_argument("--port", type=int, default=8765)
    annotate_parser.add_argument("--who", help="who is labelling (default: your user name)")
    annotate_parser.add_argument(
        "--blind", action="store_true", help="the blind test: which of two texts did the author write?"
    )
    annotate_parser.add_argument(
        "--pairs", action="store_true", help="review synthetic Q&A pairs beside their passage: accept, edit, reject"
    )
    serve_parser = commands.add_parser("serve", help="an OpenAI-compatible API over your models, a playground at /")
    serve_parser.add_argument("--host", default="127.0.0.1", help="listen address; beyond this machine only with a key")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--batch-size", type=int, default=8, help="requests decoded together")
    serve_parser.add_argument("--queue-size", type=int, default=32, help="requests waiting at most; more get a 429")
    forget_parser = commands.add_parser(
        "forget", help="remove a note's derived data everywhere, retire adapters trained on it, retrain without it"
    )
    forget_parser.add_argument("note", help="the note's file (relative to the notes folder) or partition key")
    forget_parser.add_argument("--no-retrain", action="store_true", help="forget now, retrain later")
    commands.add_parser("plant-canaries", help="write the privacy audit's random canaries into a note of the folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    environment = ProjectSettings.from_environment()
    args = build_parser(environment).parse_args(argv)
    settings = environment.with_folders(args.notes_dir, args.data_dir)
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
