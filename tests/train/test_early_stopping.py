"""Early-stopping pieces that need no training run: recipe checks and the general-loss stop."""

import pytest
from transformers import TrainerControl, TrainerState

from peftkit.errors import RecipeError
from peftkit.recipe import TrainSpec
from peftkit.train.callbacks import GeneralLossCallback, early_stopping_args


def test_early_stopping_needs_validation_rounds():
    assert early_stopping_args(TrainSpec(early_stopping={"patience": None}), has_val=True) == {}  # off: nothing changes
    assert early_stopping_args(TrainSpec(), has_val=True) == {}  # auto, not yet resolved (train.schedule): off here
    with pytest.raises(RecipeError, match="train.eval_every > 0"):
        early_stopping_args(TrainSpec(early_stopping={"patience": 2}), has_val=True)
    with pytest.raises(RecipeError, match="validation split is empty"):
        early_stopping_args(TrainSpec(eval_every=5, early_stopping={"patience": 2}), has_val=False)
    args = early_stopping_args(TrainSpec(eval_every=5, early_stopping={"patience": 2}), has_val=True)
    assert args["load_best_model_at_end"] and args["save_steps"] == 5 and args["metric_for_best_model"] == "eval_loss"


def test_general_loss_callback_stops_only_past_the_threshold(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    callback = GeneralLossCallback(["Markets rallied after the vote.", "The film won three awards."], tokenizer, 0.10)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control, model=model)
    real = callback.baseline
    callback.on_evaluate(None, state, control, model=model, metrics={})  # same model: +0%
    assert not control.should_training_stop
    callback.baseline = real / 1.2  # as if the loss had risen by 20% since the start
    state.global_step = 7
    callback.on_evaluate(None, state, control, model=model, metrics={})
    assert control.should_training_stop and callback.stopped_at == 7
