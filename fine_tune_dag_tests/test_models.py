import pytest
import torch

from fine_tune_dag.core.modeling import models
from fine_tune_dag.core.modeling.models import (
    BUNDLED_MODEL,
    ModelResolutionError,
    bundled_gguf_file,
    model_cache_name,
    resolve_model,
    select_device,
    select_dtype,
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
