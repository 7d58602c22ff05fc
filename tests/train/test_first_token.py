"""The last BERT layer on the first token only: the full model's loss and gradients, less work."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, BertModel, LlamaConfig, LlamaForCausalLM

from peftkit.train.attention import use_math_attention
from peftkit.train.first_token import last_layer_first_token_in_place


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation="sdpa")
    model = BertForSequenceClassification(config)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear"))


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (4, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 2:] = 0
    return ids, mask, torch.tensor([0, 2, 1, 1])


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "math", "eager"])
def test_training_loss_and_every_gradient_are_the_full_layers(attention):
    model = _classifier().train()
    # lora_B starts at zero; give it values so that every LoRA gradient is non-trivial
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    if attention == "math":
        use_math_attention(model)
    elif attention == "eager":
        model.get_base_model().set_attn_implementation("eager")
    batch = _batch()
    full_loss, full_grads = _loss_and_grads(model, *batch)
    keys = set(model.state_dict())
    assert last_layer_first_token_in_place(model) == 1
    assert set(model.state_dict()) == keys  # the adapter saves under the same names
    loss, grads = _loss_and_grads(model, *batch)
    torch.testing.assert_close(loss, full_loss)
    assert grads.keys() == full_grads.keys()
    last_query = [n for n in grads if "layer.2.attention.self.query.lora_B" in n]
    assert last_query and all(grads[n].abs().sum() > 0 for n in last_query)
    for name in full_grads:
        torch.testing.assert_close(grads[name], full_grads[name], msg=name)


def test_eval_runs_the_whole_last_layer():
    model = _classifier()
    last_layer_first_token_in_place(model)
    ids, mask, _ = _batch()
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert out.hidden_states[-1].shape == (4, 11, 64)


def test_only_bert_style_classifiers_and_only_once():
    model = _classifier()
    assert last_layer_first_token_in_place(model) == 1
    assert last_layer_first_token_in_place(model) == 0  # already done
    bare = BertModel(BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                num_attention_heads=4))
    assert last_layer_first_token_in_place(bare) == 0  # no classification head: every position is output
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4))
    assert last_layer_first_token_in_place(llama) == 0


def test_the_trainers_loss_kwargs_keep_the_first_token_path():
    """Trainer passes `num_items_in_batch` down to every layer; the last one must still compute one token."""
    model = _classifier().train()
    assert last_layer_first_token_in_place(model) == 1
    seen = []
    last = model.get_base_model().bert.encoder.layer[-1]
    last.intermediate.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    ids, mask, labels = _batch()
    model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(4))
    model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)  # attention weights: full layer
    assert seen == [(4, 1, 64), (4, 11, 64)]
