"""Causal-LM supervised fine-tuning with trl: chat template applied, loss on assistant tokens only.

Each record becomes a conversational prompt/completion pair (`data.records.to_prompt_completion`),
tokenised once with the model's chat template into `input_ids` and `labels` (-100 on the prompt)
and cached in RUN/data/tokens/ (`train.tokens`), so the loss covers the assistant's answer (and its
end-of-turn token) and nothing else.

The trainer is trl's SFTTrainer with the run's speed plan (`train.speed`): bf16 autocast through
the Trainer's own flag, trl's padding-free collator (each batch's examples in one row with
per-sequence position ids) or its bfd packing, and one seam of our own, `compute_loss`: logits only
at labelled positions, cross-entropy in chunks (`train.loss`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from peftkit.data.prepare import PreparedData, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import DataError
from peftkit.recipe import Recipe
from peftkit.train.common import trainer_kwargs
from peftkit.train.speed import SpeedPlan, keep_trainable_fp32, plan_speed


def _sft_trainer_class():
    from trl import SFTTrainer

    from peftkit.train.checkpoint import SafetensorsCheckpoints
    from peftkit.train.loss import labelled_positions_loss
    from peftkit.train.processes import average_gradients
    from peftkit.train.sampling import ShuffledLengthBatches

    class LabelledPositionsSFTTrainer(SafetensorsCheckpoints, ShuffledLengthBatches, SFTTrainer):
        """trl's SFTTrainer whose loss projects only labelled positions through the LM head, in chunks.

        trl's own loss (a fused head over every position, plus entropy and token-accuracy metrics)
        is used when logits are asked for (`return_outputs=True`).
        """

        loss_chunk: int = 128
        long_batch_tokens: int = 0  # batches above it run in row slices (train.long_batches); 0: never
        long_batches = None  # LongBatchCheckpointing for a single row above the budget
        split_batches = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
                # the decoder runs outside DistributedDataParallel's forward (labelled positions only), so DDP's
                # hooks never reduce the gradients: average them here, before clipping and the optimizer step
                average_gradients(self.model.parameters())
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training and self.long_batch_tokens and inputs["input_ids"].numel() > self.long_batch_tokens:
                return self._loss_in_pieces(model, inputs, num_items_in_batch)
            return self._labelled_loss(model, inputs, num_items_in_batch) * self._processes_sharing(num_items_in_batch)

        def _labelled_loss(self, model, inputs, num_items_in_batch):
            if self.long_batches is not None and model.training:
                self.long_batches.set_for(inputs["input_ids"])
            # The decoder is called directly (not model.forward, which accelerate wraps in autocast), so
            # autocast is entered here: bf16 matmuls on the bf16 path, adapters included.
            with self.accelerator.autocast():
                return labelled_positions_loss(self.accelerator.unwrap_model(model), inputs, num_items_in_batch,
                                               self.loss_chunk)

        def _processes_sharing(self, num_items_in_batch) -> int:
            """The factor the Trainer's own compute_loss applies: with several processes, num_items_in_batch counts
            the labelled tokens of all of them, and DDP averages their gradients, so each loss is multiplied by the
            number of processes to give the whole step's per-token mean gradient."""
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                return self.accelerator.num_processes
            return 1

        def _loss_in_pieces(self, model, inputs, num_items_in_batch):
            """The batch's loss from row slices of at most long_batch_tokens tokens: every slice but the last is
            backpropagated here, the last by the Trainer; each divides by the whole batch's labelled tokens, so
            the gradient is the whole batch's. Returns the whole batch's loss (its last slice's graph only)."""
            from peftkit.train.long_batches import labelled_tokens, split_batch

            pieces = split_batch(inputs, self.long_batch_tokens)
            count = labelled_tokens(inputs["labels"]).clamp(min=1) if num_items_in_batch is None else num_items_in_batch
            processes = self._processes_sharing(num_items_in_batch)
            done = 0.0
            for piece in pieces[:-1]:
                loss = self._labelled_loss(model, piece, count) * processes
                # the Trainer divides the loss it backpropagates by the accumulation steps unless the loss is
                # already normalised over the whole accumulated step (num_items_in_batch): the same here
                self.accelerator.backward(loss if self._loss_scaled_for_accumulation(num_items_in_batch)
                                          else loss / self.current_gradient_accumulation_steps)
                done = done + loss.detach()
            self.split_batches += 1
            return self._labelled_loss(model, pieces[-1], count) * processes + done

        def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
            """Trainer.training_step's own test, for the slices backpropagated before it runs."""
            if self.loss_is_scaled_for_ga is not None:
                return self.loss_is_scaled_for_ga
            return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    return LabelledPositionsSFTTrainer


def _plain_sft_trainer_class():
    from trl import SFTTrainer

    from peftkit.train.checkpoint import SafetensorsCheckpoints
    from peftkit.train.sampling import ShuffledLengthBatches

    class PeftkitSFTTrainer(SafetensorsCheckpoints, ShuffledLengthBatches, SFTTrainer):
        """trl's SFTTrainer with length-grouped batches in random order (peftkit.train.sampling) and
        safetensors checkpoints (peftkit.train.checkpoint)."""

    return PeftkitSFTTrainer


def sft_datasets(tokenizer, recipe: Recipe, prepared: PreparedData, console: Console | None = None) -> dict:
    """Token datasets (input_ids, labels) of the train and val splits, from RUN/data/tokens/ or built there once."""
    from peftkit.train.tokens import cache_key, cached_tokens, sft_token_dataset

    out = {}
    for split in ("train", "val"):
        rows = read_split(prepared.data_dir, split)
        if not rows:
            out[split] = None
            continue
        pairs = [to_prompt_completion(r, prepared.task, prepared.instruction) for r in rows]
        key = cache_key(prepared.data_dir / f"{split}.jsonl", tokenizer, max_length=recipe.data.max_length, kind="sft")
        ds = cached_tokens(
            prepared.data_dir / "tokens" / split, key, lambda: sft_token_dataset(pairs, tokenizer, recipe.data.max_length)
        )
        if len(ds) < len(pairs) and console is not None:
            console.print(
                f"[yellow]data: {len(pairs) - len(ds)} {split} example(s) have no answer token left within "
                f"data.max_length={recipe.data.max_length}; they carry no loss and are not trained on[/yellow]"
            )
        out[split] = ds
    return out


def build_sft_trainer(
    model,
    tokenizer,
    recipe: Recipe,
    prepared: PreparedData,
    run_dir: Path,
    callbacks: list,
    plan: SpeedPlan | None = None,
    console: Console | None = None,
):
    from trl import SFTConfig

    if prepared.task == "preference":
        raise DataError("data.task: preference pairs are prepared and stored for DPO, which `peftkit train` "
                        "does not run yet; use `peftkit data prepare` to check and split them")
    plan = plan or plan_speed(recipe.train, "causal-lm", getattr(model, "config", None), recipe.data.max_length,
                               method=recipe.method.kind)
    data = sft_datasets(tokenizer, recipe, prepared, console)
    train_ds, val_ds = data["train"], data["val"]
    kwargs = trainer_kwargs(recipe.train, run_dir, has_val=val_ds is not None)
    kwargs.update(plan.trainer_overrides())
    if plan.packing == "padding_free":
        # Length grouping only reduces padding, and padding-free rows have none: keep the order random.
        kwargs["train_sampling_strategy"] = "random"
    if plan.packing != "off":
        # Rows without padding have no attention mask; the Trainer's "non_padding" count would then drop
        # every token equal to the pad token (SmolLM2 pads with <|im_end|>, which ends every turn).
        kwargs["include_num_input_tokens_seen"] = "all"
    args = SFTConfig(
        **kwargs,
        # The ids are already truncated to data.max_length; bfd packing fills rows of max_length.
        max_length=recipe.data.max_length if plan.packing != "padding_free" else None,
        padding_free=plan.packing == "padding_free",
        packing=plan.packing == "bfd",
        completion_only_loss=True,
        prediction_loss_only=True,  # eval needs the loss only, not full logits
    )
    trainer_cls = _sft_trainer_class() if plan.labelled_positions_loss else _plain_sft_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.loss_chunk = plan.loss_chunk
    if plan.split_long_batches:  # the plan sets it only where the labelled-positions trainer runs
        from peftkit.train.long_batches import LongBatchCheckpointing, long_batch_tokens

        budget = long_batch_tokens([len(ids) for ids in train_ds["input_ids"]], recipe.train.batch_size)
        trainer.long_batch_tokens = budget
        if budget < recipe.data.max_length:  # a single row can be above the budget: checkpoint it
            trainer.long_batches = LongBatchCheckpointing.attach(model, budget)
        if console is not None:
            console.print(f"memory: batches of more than {budget} tokens (batch_size x the 75th-percentile "
                          f"length) run in row slices of at most {budget} tokens, one backward pass each")
    # trl casts a 4-bit model's LoRA weights to bf16 in __init__; the plan keeps trainable weights (and so
    # the optimizer states, created at train()) in fp32.
    keep_trainable_fp32(model)
    return trainer
