import pytest

from peftkit.catalog import BUILTIN_DATASETS, BUILTIN_MODELS, get_dataset, resolve_model
from peftkit.errors import CatalogError


def test_builtin_names():
    assert set(BUILTIN_MODELS) == {"smollm2-135m", "minilm-l6"}
    assert set(BUILTIN_DATASETS) == {"bbc-news", "chatterbot", "shipping-emails"}


def test_unknown_model_is_one_clear_error():
    with pytest.raises(CatalogError, match="unknown model 'gpt-17'.*smollm2-135m"):
        resolve_model("gpt-17")


def test_local_folder_without_config(tmp_path):
    with pytest.raises(CatalogError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_passes_through_and_offline_hub_is_one_line(monkeypatch):
    from peftkit.loading import load_tokenizer
    from peftkit.recipe import ModelSpec

    assert resolve_model("someorg/some-model") == "someorg/some-model"
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub library reads the variable once at import: set its constant too, or the test waits on the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CatalogError) as info:
        load_tokenizer(ModelSpec(name="someorg/some-model"))
    assert "Hugging Face Hub" in str(info.value)
    assert "\n" not in str(info.value)


def test_minilm_resolves_to_packaged_folder():
    from pathlib import Path

    folder = Path(resolve_model("minilm-l6"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_smollm2_cache_is_safetensors_and_reused():
    from pathlib import Path

    first = Path(resolve_model("smollm2-135m"))
    assert (first / "model.safetensors").is_file() and (first / "chat_template.jinja").exists()
    mtime = (first / "model.safetensors").stat().st_mtime
    assert Path(resolve_model("smollm2-135m")) == first
    assert (first / "model.safetensors").stat().st_mtime == mtime  # not converted again


def test_bbc_news_records():
    records = get_dataset("bbc-news").load()
    assert len(records) == 2225
    assert {r["label"] for r in records} == {"business", "entertainment", "politics", "sports", "tech"}
    assert any("£" in r["text"] for r in records)  # the Windows-1252 files decode correctly


def test_chatterbot_conversations_end_with_assistant():
    records = get_dataset("chatterbot").load()
    assert len(records) > 1900
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-1] == "assistant" and roles[0] == "user"
        assert all(m["content"] for m in r["messages"])


def test_subsample_is_seeded():
    a = get_dataset("chatterbot").load(size=50, seed=1)
    b = get_dataset("chatterbot").load(size=50, seed=1)
    c = get_dataset("chatterbot").load(size=50, seed=2)
    assert a == b and a != c and len(a) == 50


def test_unknown_dataset():
    with pytest.raises(CatalogError, match="unknown dataset 'imdb'"):
        get_dataset("imdb")
