"""The forgetting suite's pieces: deltas, the gate on constructed cases, perplexity, user files."""

import json

import pytest
import torch

from peftkit.errors import DataError, ForgettingGateError
from peftkit.evaluate.forgetting import (check_gate, forgetting_deltas, general_suite, raise_if_failed,
                                         read_general_file, text_perplexity)
from peftkit.recipe import GeneralSuiteSpec, MaxForgettingSpec

BASE = {"bbc-news": {"loss": 2.0, "perplexity": 10.0}, "chatterbot": {"loss": 1.0, "token_accuracy": 0.50}}
TUNED = {"bbc-news": {"loss": 2.1, "perplexity": 11.5}, "chatterbot": {"loss": 1.02, "token_accuracy": 0.47}}
KINDS = {"bbc-news": "text", "chatterbot": "chat"}


def test_deltas_relative_for_perplexity_absolute_for_accuracy():
    d = forgetting_deltas(BASE, TUNED)
    assert d["bbc-news"]["perplexity"]["delta"] == pytest.approx(0.15)
    assert d["chatterbot"]["loss"]["delta"] == pytest.approx(0.02)
    assert d["chatterbot"]["token_accuracy"]["delta"] == pytest.approx(-0.03)


def test_gate_passes_within_thresholds_and_fails_naming_the_threshold():
    d = forgetting_deltas(BASE, TUNED)
    passing = check_gate(d, KINDS, MaxForgettingSpec(general_ppl_increase=0.20, chat_loss_increase=0.05,
                                                     chat_accuracy_drop=0.05))
    assert len(passing) == 3 and all(c.passed for c in passing)
    raise_if_failed(passing)  # nothing raised

    failing = check_gate(d, KINDS, MaxForgettingSpec(general_ppl_increase=0.10, chat_accuracy_drop=0.02))
    assert [c.passed for c in failing] == [False, False]
    with pytest.raises(ForgettingGateError) as info:
        raise_if_failed(failing)
    message = str(info.value)
    assert message.startswith("forgetting gate failed: eval.max_forgetting.general_ppl_increase: bbc-news perplexity")
    assert "+15.0%" in message and "chat_accuracy_drop" in message
    assert check_gate(d, KINDS, MaxForgettingSpec()) == []  # no thresholds: no gate


def test_text_perplexity_matches_the_models_own_loss_and_ignores_padding(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = ["The central bank raised interest rates on Tuesday.", "Shares fell."]
    alone = []
    for t in texts:
        ids = tokenizer(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone.append((model(input_ids=ids, labels=ids).loss.item(), ids.shape[1] - 1))
    expected = sum(l * n for l, n in alone) / sum(n for _, n in alone)  # token-weighted mean
    batched = text_perplexity(model, tokenizer, texts, max_length=64, batch_size=2)
    assert batched["tokens"] == sum(n for _, n in alone)
    assert batched["loss"] == pytest.approx(expected, rel=1e-4)
    assert batched["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-4)


def test_general_suite_leaves_out_the_runs_own_chats():
    from peftkit.catalog.datasets import get_dataset

    chats = get_dataset("chatterbot").load()
    sample = general_suite(GeneralSuiteSpec(bbc_news=3, chatterbot=20), run_rows=[])
    assert [s.name for s in sample] == ["bbc-news", "chatterbot"] and len(sample[0].records) == 3
    trained_on = [c for c in chats if c in sample[1].records]
    trained_on = trained_on[:5]  # a run that trained on 5 of the 20 general chats
    again = general_suite(GeneralSuiteSpec(bbc_news=0, chatterbot=20), run_rows=trained_on)
    firsts = {c["messages"][0]["content"].lower() for c in trained_on}
    assert len(again[0].records) == 20
    assert not any(r["messages"][0]["content"].lower() in firsts for r in again[0].records)
    # only what the run saw is replaced: the rest of the sample is the same as for a run that saw nothing
    unseen = [r for r in sample[1].records if r["messages"][0]["content"].lower() not in firsts]
    assert unseen and all(r in again[0].records for r in unseen)


def test_user_general_file_kinds_and_errors(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"article {i}"}) for i in range(5)) + "\n")
    s = read_general_file(good, limit=3)
    assert (s.name, s.kind, len(s.records)) == ("file:mine.jsonl", "text", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected \{\"text\""):
        read_general_file(bad, limit=10)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(DataError, match="mixes text and chat"):
        read_general_file(mixed, limit=10)


def test_a_threshold_without_a_set_and_metrics_the_task_cannot_have_are_errors():
    from peftkit.errors import RecipeError
    from peftkit.evaluate.forgetting import require_sets_for_thresholds
    from peftkit.evaluate.run import task_metrics

    chat_only = general_suite(GeneralSuiteSpec(bbc_news=0, chatterbot=2), run_rows=[])
    require_sets_for_thresholds(chat_only, GeneralSuiteSpec(), MaxForgettingSpec(chat_loss_increase=0.1))
    with pytest.raises(RecipeError, match=r"eval.max_forgetting.general_ppl_increase: no general text set"):
        require_sets_for_thresholds(chat_only, GeneralSuiteSpec(), MaxForgettingSpec(general_ppl_increase=0.1))
    assert task_metrics(None, "chat") == ["perplexity", "generation"]
    assert task_metrics(["generation", "extraction"], "extraction") == ["generation", "extraction"]
    with pytest.raises(RecipeError, match=r"eval.metrics: \['extraction'\] cannot score a chat task"):
        task_metrics(["extraction"], "chat")


def test_lm_eval_tasks_without_lm_eval_installed_is_a_clear_error():
    import importlib.util

    from peftkit.errors import RecipeError
    from peftkit.evaluate.forgetting import lm_eval_scores

    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval-harness is installed here")
    with pytest.raises(RecipeError, match=r"eval.general.lm_eval_tasks: lm-eval-harness is not installed"):
        lm_eval_scores(None, None, GeneralSuiteSpec(lm_eval_tasks=["hellaswag"]), batch_size=4)
