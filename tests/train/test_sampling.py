"""Length-grouped batches in random order (peftkit.train.sampling)."""

import statistics

import torch

from peftkit.train.sampling import LengthBatchSampler


def _batches(lengths, batch_size, seed=0, mult=50):
    sampler = LengthBatchSampler(lengths, batch_size, mult, generator=torch.Generator().manual_seed(seed))
    flat = list(sampler)
    return [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)], sampler


def test_every_example_once_and_only_the_last_batch_short():
    lengths = [(i * 37) % 101 + 1 for i in range(203)]
    batches, sampler = _batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(203)) and len(sampler) == 203
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 203 % 8


def test_batches_are_of_similar_length_and_the_longest_comes_first():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 256, (800,), generator=gen).tolist()
    batches, _ = _batches(lengths, 8)
    spread = statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 20  # random batches of 8 over 1..255 spread by ~190
    assert max(lengths[i] for i in batches[0]) == max(lengths)


def test_batch_order_is_not_longest_to_shortest():
    # transformers' group_by_length runs each mega-batch from its longest batch down to its shortest;
    # here the order of batches (after the first) must be unrelated to their length.
    lengths = list(range(1, 801))
    batches, _ = _batches(lengths, 8)
    longest = [max(lengths[i] for i in b) for b in batches[1:]]
    rank = torch.tensor(longest, dtype=torch.float).argsort().argsort().float()
    position = torch.arange(len(longest), dtype=torch.float)
    correlation = torch.corrcoef(torch.stack([rank, position]))[0, 1].item()
    assert abs(correlation) < 0.3, correlation
    descending = sum(a > b for a, b in zip(longest, longest[1:]))
    assert 0.3 < descending / (len(longest) - 1) < 0.7


def test_seeded_order_repeats_and_differs_between_seeds():
    lengths = list(range(100))
    assert _batches(lengths, 4, seed=3)[0] == _batches(lengths, 4, seed=3)[0]
    assert _batches(lengths, 4, seed=3)[0] != _batches(lengths, 4, seed=4)[0]


def test_sft_and_classification_runs_train_in_this_order(monkeypatch, tiny_llama_dir, tiny_bert_dir, runs_dir):
    from peftkit.train import train

    used = []
    original = LengthBatchSampler.batches

    def spy(self):
        out = original(self)
        used.append([len(b) for b in out])
        return out

    monkeypatch.setattr(LengthBatchSampler, "batches", spy)
    common = ["train.max_steps=2", "train.batch_size=4", f"output.runs_dir={runs_dir}", "output.mlflow=false"]
    train("chatterbot-sft", overrides=[f"model.name={tiny_llama_dir}", "data.size=40", "output.run_id=s", *common])
    train("bbc-news-lora", overrides=[f"model.name={tiny_bert_dir}", "data.size=40", "output.run_id=c", *common])
    assert len(used) == 2 and all(sizes[0] == 4 for sizes in used)
