import json
import shutil
import traceback
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import pytest
import requests
import torch
import yaml
from huggingface_hub import HfApi
from peft import PeftModel
from transformers import AutoModelForCausalLM, GenerationConfig

from fine_tune_dag.cli import main
from fine_tune_dag.core.common.chat import (
    DEFAULT_SYSTEM_PROMPT,
    chat_messages,
    render_prompt_ids,
    render_training_example,
)
from fine_tune_dag.core.export.hub import model_card, push_adapter
from fine_tune_dag.core.export.merge import export_merged
from fine_tune_dag.core.generation.answers import stream_answer
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.models.adapters import (
    adapter_base_dir,
    load_adapter_model,
    load_generation_settings,
    save_generation_settings,
)
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora

QUESTION = "Why do you oil the chain?"
ANSWER = "Here is the thing: the chain wears slowly, then all at once."
TOKEN = "hf_NotARealTokenButSecret123"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten steps at a high rate: the adapter then answers in words (1-2 steps only emit newlines)."""
    settings = TrainingSettings(
        max_steps=10, batch_size=1, learning_rate=1e-2, warmup_ratio=0.0, lora_dropout=0.0, dtype="float32"
    )
    run = train_lora(tiny_model_dir, [chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION, ANSWER)], settings)
    provenance = {"base_model": "tiny-llama", "base_model_path": str(tiny_model_dir), "dataset_version": "abc123"}
    return save_adapter(run, tmp_path_factory.mktemp("adapters"), "v1", provenance)


@pytest.fixture(scope="module")
def loaded(adapter_dir: Path):
    return load_adapter_model(adapter_dir, device="cpu", dtype="float32")


def test_load_adapter_model_is_the_peft_model_in_eval_mode(loaded):
    model, tokenizer = loaded
    assert isinstance(model, PeftModel) and not model.training
    assert tokenizer.pad_token_id is not None


# The tiny adapter's logits lie close together: only a low temperature samples words, not bytes.
SAMPLED = GenerationSettings(max_new_tokens=24, temperature=0.05, top_p=0.9, no_repeat_ngram_size=3, seed=7)


@pytest.mark.parametrize("options", [{"max_new_tokens": 24}, asdict(SAMPLED)], ids=["greedy", "sampled"])
def test_stream_joins_to_generate_batch_answer_from_the_training_prompt(loaded, options):
    model, tokenizer = loaded
    sent: list[list[int]] = []
    handle = (
        model.get_base_model()
        .get_decoder()
        .register_forward_pre_hook(
            lambda _m, args, kwargs: sent.append(kwargs["input_ids"][0].tolist()) if not sent else None,
            with_kwargs=True,
        )
    )
    pieces = list(stream_answer(model, tokenizer, QUESTION, **options))
    handle.remove()
    training = render_training_example(tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION, ANSWER))
    assert sent[0] == training.input_ids[: training.prompt_length]  # the exact prompt tokens training used
    expected = generate_batch(model, tokenizer, [sent[0]], **options)[0]
    assert len(expected.split()) > 3  # the adapter answers in words, so the comparison is not vacuous
    if options.get("temperature"):  # sampling and the n-gram ban did take part
        assert expected != generate_batch(model, tokenizer, [sent[0]], max_new_tokens=24)[0]
        unbanned = asdict(replace(SAMPLED, no_repeat_ngram_size=0))
        assert expected != generate_batch(model, tokenizer, [sent[0]], **unbanned)[0]
    assert "".join(pieces) == expected
    assert len(pieces) > 1  # streamed word by word, not at the end


def test_stream_of_whitespace_only_tokens_joins_to_the_stripped_empty_answer(tiny_model_dir, tiny_tokenizer):
    """The untrained tiny model emits only newlines: generate_batch strips them to "", the stream yields nothing."""
    model = load_causal_lm(tiny_model_dir).eval()
    prompt = render_prompt_ids(tiny_tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION))
    assert generate_batch(model, tiny_tokenizer, [prompt], max_new_tokens=8) == [""]
    assert list(stream_answer(model, tiny_tokenizer, QUESTION, max_new_tokens=8)) == []


def test_closing_the_stream_stops_generation(loaded):
    model, tokenizer = loaded
    steps: list[int] = []
    handle = model.get_base_model().get_decoder().register_forward_pre_hook(lambda *_: steps.append(1))
    stream = stream_answer(model, tokenizer, QUESTION, max_new_tokens=1500)
    next(stream)
    stream.close()
    handle.remove()
    assert len(steps) < 1500


def test_generation_errors_reach_the_reader(tiny_model_dir, tiny_tokenizer):
    model = load_causal_lm(tiny_model_dir).eval()

    def fail(*_: object) -> None:
        raise ValueError("out of memory, say")

    model.get_decoder().register_forward_pre_hook(fail)
    with pytest.raises(ValueError, match="out of memory"):
        list(stream_answer(model, tiny_tokenizer, QUESTION))


def test_export_merged_loads_without_peft_and_matches_the_adapter(adapter_dir, loaded, tiny_model_dir, tmp_path):
    model, tokenizer = loaded
    out = tmp_path / "merged"
    out.mkdir()  # an existing empty folder is fine
    assert export_merged(adapter_dir, out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary folder left
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in plain.state_dict())
    ids = torch.tensor([render_prompt_ids(tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION))])
    with torch.no_grad():
        merged_logits = plain(input_ids=ids).logits
        adapter_logits = model(input_ids=ids).logits
        base_logits = load_causal_lm(tiny_model_dir)(input_ids=ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-2)  # the adapter does change the outputs
    assert (out / "training_config.json").read_text() == (adapter_dir / "training_config.json").read_text()
    assert (out / "tokenizer.json").exists()
    assert GenerationConfig.from_pretrained(out).no_repeat_ngram_size == 3  # the adapter's defaults travel along


def test_export_merged_refuses_a_non_empty_target(adapter_dir, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken"):
        export_merged(adapter_dir, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_cli_export_writes_gguf_files_with_modelfiles_carrying_the_adapters_settings(adapter_dir, tmp_path, capsys):
    from gguf import GGUFReader

    folders = ["--notes-dir", str(tmp_path / "notes"), "--data-dir", str(tmp_path / "data")]
    assert main([*folders, "export", "--adapter", str(adapter_dir)]) == 1  # nowhere to write: refused
    assert "--gguf" in capsys.readouterr().err
    assert main([*folders, "export", "--adapter", str(adapter_dir), "--gguf", str(tmp_path / "gguf")]) == 0
    written = sorted(p.name for p in (tmp_path / "gguf").iterdir())
    assert [n for n in written if n.endswith(".gguf")] and len(written) == 2 * len(
        [n for n in written if n.endswith(".gguf")]
    )
    saved = load_generation_settings(adapter_dir)
    for gguf_file in (tmp_path / "gguf").glob("*.gguf"):
        assert len(GGUFReader(gguf_file).tensors) > 0
        modelfile = gguf_file.with_suffix(".Modelfile").read_text()
        assert f"FROM ./{gguf_file.name}" in modelfile and f"PARAMETER num_predict {saved.max_new_tokens}" in modelfile
        assert 'PARAMETER stop "' in modelfile and "TEMPLATE" in modelfile


def _front_matter(card: str) -> dict:
    _, header, _ = card.split("---\n", 2)
    return yaml.safe_load(header)


def test_model_card_has_metadata_metrics_and_dataset_version(adapter_dir):
    card = model_card(adapter_dir, {"rouge_l": 0.41234, "perplexity": 12.5}, "abc123", "HuggingFaceTB/SmolLM2-135M")
    assert _front_matter(card) == {
        "library_name": "peft",
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "fine_tune_dag"],
    }
    assert "| rouge_l | 0.4123 |" in card and "| perplexity | 12.5 |" in card
    assert "`abc123`" in card and "PeftModel.from_pretrained" in card and DEFAULT_SYSTEM_PROMPT in card


def test_model_card_keeps_a_non_hub_base_model_out_of_the_metadata(adapter_dir):
    card = model_card(adapter_dir, {"nll": 1.0}, "abc123", "bundled:SmolLM2-135M-Instruct")
    assert "base_model" not in _front_matter(card)  # the Hub rejects a card naming a non-id base_model
    assert "`bundled:SmolLM2-135M-Instruct` is not a Hugging Face Hub model id" in card


class FakeApi:
    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, str] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.error:
            raise self.error
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])  # a temporary copy: read it while it exists
        self.uploaded = {p.name: p.read_text() if p.name == "README.md" else "" for p in folder.iterdir()}


def test_push_adapter_uploads_the_folder_with_the_card_privately(adapter_dir):
    peft_readme = (adapter_dir / "README.md").read_text()  # peft's own card, written by save_pretrained
    api = FakeApi()
    url = push_adapter(adapter_dir, "me/notes-adapter", TOKEN, "# my card\n", api=api)
    assert url == "https://huggingface.co/me/notes-adapter"
    (create, created), (upload, uploaded) = api.calls
    assert create == "create_repo" and created == {
        "repo_id": "me/notes-adapter",
        "token": TOKEN,
        "private": True,
        "exist_ok": True,
    }
    assert upload == "upload_folder" and uploaded["repo_id"] == "me/notes-adapter" and uploaded["token"] == TOKEN
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.csv"} <= set(
        api.uploaded
    )
    assert "tokenizer.json" in api.uploaded and api.uploaded["README.md"] == "# my card\n"
    assert (adapter_dir / "README.md").read_text() == peft_readme  # the versioned folder stays as trained


@pytest.mark.parametrize(
    "api",
    [
        FakeApi(requests.exceptions.ConnectionError(f"Max retries exceeded (Authorization: Bearer {TOKEN})")),
        HfApi(endpoint="http://127.0.0.1:9"),  # a closed port: the real client's own connection error
        "offline",
    ],
    ids=["requests-error", "closed-port", "HF_HUB_OFFLINE"],
)
def test_push_adapter_without_network_says_so_and_hides_the_token(adapter_dir, api, monkeypatch):
    if api == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        api = FakeApi()
    with pytest.raises(RuntimeError, match="cannot reach the Hugging Face Hub") as raised:
        push_adapter(adapter_dir, "me/notes-adapter", TOKEN, "# card", api=api)
    message = str(raised.value)
    assert f"adapter not pushed; it stays at {adapter_dir}" in message
    assert TOKEN not in "".join(traceback.format_exception(raised.value))
    if isinstance(api, FakeApi) and api.error is None:
        assert api.calls == []  # offline: nothing attempted


def test_load_adapter_model_names_a_folder_that_is_not_an_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not an adapter folder"):
        load_adapter_model(tmp_path)


def test_load_adapter_model_names_a_missing_base_model(adapter_dir, tmp_path):
    moved = shutil.copytree(adapter_dir, tmp_path / "v1")
    config = json.loads((moved / "training_config.json").read_text())
    config["base_model_path"] = str(tmp_path / "gone")
    (moved / "training_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="tiny-llama") as raised:
        load_adapter_model(moved)
    assert str(moved) in str(raised.value) and str(tmp_path / "gone") in str(raised.value)


def test_save_adapter_writes_the_default_generation_config(adapter_dir):
    assert GenerationConfig.from_pretrained(adapter_dir).no_repeat_ngram_size == 3
    assert load_generation_settings(adapter_dir) == GenerationSettings()


def cli_answer(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    code = main(["--notes-dir", str(tmp_path / "notes"), "--data-dir", str(tmp_path / "data"), "generate", *args])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out, printed.err


def test_cli_generate_with_the_base_model_alone_uses_the_default_settings(
    tiny_model_dir, tiny_tokenizer, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("FINE_TUNE_DAG_BASE_MODEL", str(tiny_model_dir))
    out, err = cli_answer(["--adapter", "base", QUESTION], tmp_path, capsys)
    assert err.splitlines()[-1] == (
        "base model answers on openvino (max_new_tokens 160, temperature 0.7, top_p 0.9, no_repeat_ngram_size 3, seed 0):"
    )
    prompt = render_prompt_ids(tiny_tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION))
    settings = asdict(GenerationSettings())
    engine = open_engine(tiny_model_dir, {}, tiny_tokenizer)  # the engine the command answers on
    expected = generate_batch(engine, tiny_tokenizer, [prompt], **settings)[0]
    assert expected and out == expected + "\n"


def test_cli_generate_reads_the_adapters_saved_settings_and_the_options_override_them(adapter_dir, tmp_path, capsys):
    folder = shutil.copytree(adapter_dir, tmp_path / "v2")
    saved = GenerationSettings(max_new_tokens=24, temperature=0.0, no_repeat_ngram_size=3)
    save_generation_settings(folder, saved)
    out, err = cli_answer(["--adapter", str(folder), "--seed", "5", QUESTION], tmp_path, capsys)
    assert err.splitlines()[-1] == (
        "adapter v2 answers on openvino (max_new_tokens 24, temperature 0.0, top_p 0.9, no_repeat_ngram_size 3, seed 5):"
    )
    tokenizer = load_tokenizer(folder)
    engine = open_engine(adapter_base_dir(folder), {"adapter": folder}, tokenizer)  # the engine the command answers on
    model = partial(generate_batch, engine, tokenizer, adapter="adapter")
    prompt = render_prompt_ids(tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, QUESTION))
    assert out == model([prompt], **asdict(saved))[0] + "\n"
    assert out != model([prompt], max_new_tokens=24)[0] + "\n"  # the ban took part

    out, err = cli_answer(["--adapter", str(folder), "--no-repeat-ngram-size", "0", QUESTION], tmp_path, capsys)
    assert "no_repeat_ngram_size 0" in err
    assert out == model([prompt], max_new_tokens=24)[0] + "\n"
