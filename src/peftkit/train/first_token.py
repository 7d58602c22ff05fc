"""Encoder classifiers: the last layer computes only the token the classification head reads.

    n = last_layer_first_token_in_place(model)   # 1 if the model is a BERT-style classifier, else 0
    trainer.train()                              # the loss and gradients of the full model, less work

A BERT-style sequence classifier (Bert/Roberta/XLM-R/Electra `...ForSequenceClassification`) reads
only the first token of the last layer's output (the pooler's or head's `hidden_states[:, 0]`).
While training, the last layer here computes its keys and values from every token, as it must,
but its query, attention output, feed-forward block and their dropouts for the first token only:
in minilm-l6 that is 83% of the last layer's matrix-product FLOPs, about 14% of the model's (by count). The loss
and every gradient are those of the full layer (tests/train/test_first_token.py); in eval mode
the layer runs unchanged, so `last_hidden_state` keeps every position outside training.
The same idea as the causal LM's labelled-positions loss (`train.loss`): compute what the loss needs.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

from peftkit.methods import base_model

# Classifiers whose head reads token 0 of an encoder built from BERT layers
# (attention.self.{query,key,value}, attention.output, intermediate, output).
FIRST_TOKEN_HEADS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                     "XLMRobertaForSequenceClassification", "ElectraForSequenceClassification")


# Keyword arguments a layer receives that do not change what it computes: the Trainer's
# `num_items_in_batch` reaches every layer through the model's **kwargs (transformers 5), and
# output flags the encoder, not the layer, acts on.
INERT_KWARGS = frozenset({"position_ids", "num_items_in_batch", "output_hidden_states", "return_dict"})


def first_token_forward(layer: nn.Module, full_forward, hidden_states: torch.Tensor,
                        attention_mask: torch.Tensor | None = None, *args, **kwargs):
    """The last BERT layer's forward: in training [B, 1, H] for the first token; otherwise `full_forward`."""
    extra = any(a is not None for a in args) or any(
        v is not None and v is not False for k, v in kwargs.items() if k not in INERT_KWARGS)
    if not layer.training or extra:  # eval, cross-attention, caches, attention weights: the layer as it is
        return full_forward(hidden_states, attention_mask, *args, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = layer.attention
    self_attention = attention.self
    batch = hidden_states.shape[0]
    first = hidden_states[:, :1]
    heads, size = self_attention.num_attention_heads, self_attention.attention_head_size
    query = self_attention.query(first).view(batch, 1, heads, size).transpose(1, 2)
    key = self_attention.key(hidden_states).view(batch, -1, heads, size).transpose(1, 2)
    value = self_attention.value(hidden_states).view(batch, -1, heads, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1, :]  # the first query's row
    # what BertSelfAttention itself looks up: the configured implementation, its module's eager one by default
    eager = getattr(sys.modules[type(self_attention).__module__], "eager_attention_forward", None)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(self_attention.config._attn_implementation, eager)
    if interface is None:
        return full_forward(hidden_states, attention_mask, *args, **kwargs)
    context, _ = interface(self_attention, query, key, value, attention_mask,
                           dropout=self_attention.dropout.p, scaling=self_attention.scaling)
    attended = attention.output(context.reshape(batch, 1, -1), first)
    return layer.feed_forward_chunk(attended)


def last_layer_first_token_in_place(model: nn.Module) -> int:
    """Give the last encoder layer of a BERT-style classifier `first_token_forward`; returns 1, or 0 if not one.

    The layer keeps its class, parameters and names (the adapter's keys do not change); only its
    instance's `forward` is replaced.
    """
    base = base_model(model)
    if type(base).__name__ not in FIRST_TOKEN_HEADS:
        return 0
    encoder = getattr(getattr(base, base.base_model_prefix, None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        return 0
    last = layers[-1]
    attention = getattr(last, "attention", None)
    self_attention = getattr(attention, "self", None)
    if (getattr(last, "is_decoder", False) or getattr(last, "first_token_only", False)
            or not all(hasattr(self_attention, name) for name in ("query", "key", "value", "num_attention_heads"))
            or not hasattr(attention, "output") or not hasattr(last, "feed_forward_chunk")):
        return 0
    last.forward = functools.partial(first_token_forward, last, last.forward)
    last.first_token_only = True
    return 1
