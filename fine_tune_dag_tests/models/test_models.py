import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fine_tune_dag.core.models import loading as models
from fine_tune_dag.core.models.loading import select_device, select_dtype
from fine_tune_dag.core.models.resolution import (
    BUNDLED_MODEL,
    ModelResolutionError,
    bundled_gguf_file,
    model_cache_name,
    resolve_model,
)


def test_local_folder_resolves_in_place(tiny_model_dir, tmp_path):
    resolved = resolve_model(str(tiny_model_dir), tmp_path / "models")
    assert resolved.path == tiny_model_dir.resolve() and resolved.source == "local"
    assert not (tmp_path / "models").exists()  # nothing copied


def test_missing_or_invalid_local_paths_say_so(tmp_path):
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_model("./no/such/model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(ModelResolutionError, match="unknown bundled model"):
        resolve_model("bundled:gpt-9", tmp_path)


def test_hub_id_without_network_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="(?s)could not download 'some-org/some-model'.*no network access"):
        resolve_model("some-org/some-model", tmp_path)
    assert not any(tmp_path.iterdir())  # no half-written folder left behind


def test_bundled_model_file_is_found_without_importing_its_package():
    path = bundled_gguf_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert model_cache_name(BUNDLED_MODEL) == "SmolLM2-135M-Instruct"
    assert model_cache_name("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB--SmolLM2-360M"


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda: bool, mps: bool, expected: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device() == expected
    assert select_device("auto") == expected
    assert select_device("cpu") == "cpu"  # asked for by name: taken as asked, whatever is available


@pytest.mark.parametrize(("amx", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_is_bfloat16_only_with_amx(monkeypatch, amx: bool, expected: torch.dtype):
    monkeypatch.setattr(models, "cpu_has_bf16_matrix_units", lambda: amx)
    assert select_dtype("auto", "cpu") == expected
    assert select_dtype("float32", "cpu") == torch.float32


_LOADING_CHILD = """
import sys
import torch
from transformers import AutoModelForCausalLM
from fine_tune_dag.core.common.memory import peak_rss_mib, reset_peak_rss, resident_bytes
from fine_tune_dag.core.models import loading as models
models.CONVERTED_AT_ONCE_BYTES = 8 << 20
start = resident_bytes() / 2**20
reset_peak_rss()
if sys.argv[2] == "ours":
    models.load_causal_lm(sys.argv[1], "cpu", torch.bfloat16)
else:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
print(peak_rss_mib() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-block peaks are read on Linux")
def test_a_float32_checkpoint_loaded_as_bfloat16_holds_its_weights_once(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    float32_mib = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) / 2**20  # 155 MiB

    def peak_above_imports(loader: str) -> float:
        child = subprocess.run(
            [sys.executable, "-c", _LOADING_CHILD, str(tmp_path), loader], capture_output=True, text=True
        )
        assert child.returncode == 0, child.stderr
        return float(child.stdout.splitlines()[-1])

    assert peak_above_imports("transformers") > float32_mib  # the mapped float32 file and the bfloat16 copy
    # the bfloat16 weights (half the file) and a chunk or two in flight: 96–102 MiB measured
    assert peak_above_imports("ours") < 0.75 * float32_mib

    ours = models.load_causal_lm(tmp_path, "cpu", torch.bfloat16)
    theirs = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # still tied
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    assert all(mine[name].dtype == torch.bfloat16 and torch.equal(mine[name], reference[name]) for name in mine)
