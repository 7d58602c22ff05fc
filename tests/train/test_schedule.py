"""The auto schedule: learning rate by task and method, epochs by data size, early stopping with more than one pass;
a value the recipe gives is never changed."""

from peftkit.recipe import TrainSpec
from peftkit.train.schedule import MAX_EPOCHS, resolve_schedule

CLS = "sequence-classification"


def test_small_sets_get_more_passes():
    spec, notes = resolve_schedule(TrainSpec(), CLS, "lora", train_rows=540, has_val=True)
    assert spec.lr == 1e-3 and spec.epochs == 4.0  # ceil(2000 / 540)
    assert spec.early_stopping.patience is None  # a classifier runs its passes (see the module's docstring)
    assert any("4 epochs (auto: 540 training examples" in n for n in notes)
    assert any("no early stopping (auto: a classifier" in n for n in notes)
    tiny, _ = resolve_schedule(TrainSpec(), CLS, "lora", train_rows=20, has_val=True)
    assert tiny.epochs == MAX_EPOCHS
    large, notes = resolve_schedule(TrainSpec(), CLS, "lora", train_rows=50_000, has_val=True)
    assert large.epochs == 1.0 and large.early_stopping.patience is None


def test_a_causal_lm_with_several_passes_stops_early_on_validation_loss():
    spec, notes = resolve_schedule(TrainSpec(), "causal-lm", "lora", train_rows=250, has_val=True)
    assert spec.epochs == 4.0 and spec.lr == 2e-4  # ceil(1000 / 250)
    assert spec.early_stopping.patience == 2 and spec.eval_every == 16  # 32 steps per epoch of 8, two rounds
    assert any("early stopping on validation loss every 16 steps" in n for n in notes)


def test_decoder_rates_and_no_early_stopping_without_validation():
    spec, notes = resolve_schedule(TrainSpec(), "causal-lm", "prompt", train_rows=250, has_val=False)
    assert spec.lr == 1e-2 and spec.epochs == 4.0 and spec.early_stopping.patience is None
    assert any("no early stopping (auto: no validation split)" in n for n in notes)
    assert resolve_schedule(TrainSpec(), "causal-lm", "lora", 250, True)[0].lr == 2e-4


def test_given_values_are_kept():
    given = TrainSpec(lr=5e-4, epochs=2, eval_every=10, early_stopping={"patience": 3})
    spec, notes = resolve_schedule(given, CLS, "lora", train_rows=100, has_val=True)
    assert (spec.lr, spec.epochs, spec.eval_every, spec.early_stopping.patience) == (5e-4, 2.0, 10, 3) and notes == []
    # explicit epochs with early stopping left auto: off, as before auto existed
    spec, _ = resolve_schedule(TrainSpec(epochs=3), CLS, "lora", train_rows=100, has_val=True)
    assert spec.early_stopping.patience is None and spec.lr == 1e-3
    # max_steps decides the length
    spec, _ = resolve_schedule(TrainSpec(max_steps=5), CLS, "lora", train_rows=100, has_val=True)
    assert spec.early_stopping.patience is None


def test_a_minimal_causal_lm_recipe_trains_and_evaluates_with_the_general_suite(tiny_llama_dir, tmp_path):
    """lr and epochs left auto all the way through: training resolves them, and the evaluation's chat scoring
    (a trl trainer that trains nothing) does not need them."""
    import json

    from rich.console import Console

    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    rows = [{"instruction": "Give the city as JSON.", "input": f"I live in city number {i}.",
             "output": json.dumps({"city": f"c{i}"})} for i in range(30)]
    data = tmp_path / "cities.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "minimal", "model": {"name": str(tiny_llama_dir)},
              "data": {"files": {"train": str(data)}, "task": "extraction", "split": {"val": 0.1, "test": 0.2}},
              "train": {"max_steps": 2},
              "eval": {"max_new_tokens": 8, "general": {"bbc_news": 2, "chatterbot": 2}},
              "output": {"runs_dir": str(tmp_path / "runs"), "mlflow": False}}
    run = train(recipe, console=Console(quiet=True)).run_dir
    assert "schedule: lr 0.0002 (auto: lora on a causal-lm model)" in (run / "train.log").read_text()
    results = evaluate(run, console=Console(quiet=True), gate=False, report=False)
    assert "chatterbot" in results["forgetting"]["deltas"]
