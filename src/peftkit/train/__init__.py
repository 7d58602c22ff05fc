"""Training stage: causal-LM SFT (trl) and sequence classification (transformers Trainer)."""

from peftkit.train.run import TrainResult, train

__all__ = ["TrainResult", "train"]
