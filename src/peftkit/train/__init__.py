"""Training stage: causal-LM SFT (trl) and sequence classification (transformers Trainer)."""

from peftkit.train.run import TrainResult, train

__all__ = ["TrainResult", "train"]

from peftkit._stages import make_callable  # noqa: E402

make_callable(__name__, "peftkit.train.run", "train")  # peftkit.train(recipe) calls train()
