"""Exact + near-duplicate removal on 100,000 generated records with 5% planted near duplicates.

    flock /tmp/peftkit-measure.lock python benchmarks/data_bench.py [--rows 100000] [--planted 0.05]

Records are ~60 words drawn from a Zipf-like vocabulary of 20,000 words (seeded). Planted
duplicates copy a distinct source record and change it the way real near duplicates differ:
1-2 word edits (substitute, delete, insert), changed case, extra spaces and punctuation; a
fifth of them change only case and spacing (exact duplicates once normalised). Each is put at a
random position, so sometimes the copy comes first.

The timed pass is exactly what `peftkit data prepare` runs (`clean.dedup_key`, `find_exact`,
`find_near` with the default DedupSpec: 3-word shingles, 128 permutations, threshold 0.7).
The baseline, timed in the same run, is an exact-only pass (keys + hashes). Prints wall time,
rows/s, the ratio to the baseline, and recall / precision against the planted pairs (a pair is
found when one of its two records is removed; a removed record that is in no planted pair is a
false positive). The true word-shingle Jaccard of the planted pairs is printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np

from peftkit.data import clean
from peftkit.recipe import DedupSpec


def generate(rows: int, planted: float, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Texts and the planted (source, copy) index pairs."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"{w}" for w in _words(20_000, rng)])
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    weights /= weights.sum()
    n_plant = int(rows * planted)
    n_base = rows - n_plant
    lengths = rng.integers(50, 71, size=n_base)
    flat = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=weights)]
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    base = [" ".join(flat[bounds[i] : bounds[i + 1]]).capitalize() + "." for i in range(n_base)]
    r = random.Random(seed)
    sources = r.sample(range(n_base), n_plant)
    copies = [_perturb(base[s], r, vocab, exact_only=k % 5 == 0) for k, s in enumerate(sources)]
    # shuffle everything, remembering where each source and copy lands
    items = [(t, ("base", i)) for i, t in enumerate(base)] + [(t, ("copy", k)) for k, t in enumerate(copies)]
    r.shuffle(items)
    pos_base, pos_copy = {}, {}
    for pos, (_, (kind, i)) in enumerate(items):
        (pos_base if kind == "base" else pos_copy)[i] = pos
    pairs = [(pos_base[s], pos_copy[k]) for k, s in enumerate(sources)]
    return [t for t, _ in items], pairs


def _words(n: int, rng) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out, seen = [], set()
    while len(out) < n:
        w = "".join(letters[rng.integers(0, 26, size=int(rng.integers(2, 10)))])
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _perturb(text: str, r: random.Random, vocab, exact_only: bool) -> str:
    words = text.rstrip(".").split()
    if not exact_only:
        for _ in range(r.choice((1, 2))):
            i = r.randrange(len(words))
            op = r.choice(("sub", "del", "ins"))
            if op == "sub":
                words[i] = str(vocab[r.randrange(len(vocab))])
            elif op == "del":
                del words[i]
            else:
                words.insert(i, str(vocab[r.randrange(len(vocab))]))
    out = "  ".join(words) if r.random() < 0.5 else " ".join(words)
    out = out.upper() if r.random() < 0.3 else out.lower()
    if exact_only:  # same text once case and spacing are normalised
        return out + ".\n"
    return out + r.choice((".", "!", " ...", ""))


def true_jaccard(a: str, b: str, k: int) -> float:
    sa, sb = (set(zip(*[t.split()[i:] for i in range(k)])) for t in (clean.dedup_key([a]), clean.dedup_key([b])))
    sa = {tuple(w.strip(".!") for w in s) for s in sa}
    sb = {tuple(w.strip(".!") for w in s) for s in sb}
    return len(sa & sb) / max(len(sa | sb), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--planted", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = DedupSpec()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"DedupSpec {spec.model_dump()}")

    t = time.perf_counter()
    texts, pairs = generate(args.rows, args.planted, args.seed)
    words = np.mean([len(x.split()) for x in texts[:5000]])
    print(f"generated {len(texts):,} records (~{words:.0f} words), {len(pairs):,} planted duplicates "
          f"in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()  # baseline: exact-only
    keys = [clean.dedup_key([x]) for x in texts]
    exact = clean.find_exact(keys)
    baseline = time.perf_counter() - t

    t = time.perf_counter()  # measured: what prepare runs
    keys = [clean.dedup_key([x]) for x in texts]
    exact = clean.find_exact(keys)
    t_near = time.perf_counter()
    near = clean.find_near(keys, spec, skip=set(exact))
    wall = time.perf_counter() - t
    near_seconds = time.perf_counter() - t_near

    removed = set(exact) | set(near)
    members = {i for p in pairs for i in p}
    found = sum(1 for a, b in pairs if a in removed or b in removed)
    recall = found / len(pairs)
    precision = len(removed & members) / max(len(removed), 1)
    exact_pairs = sum(1 for a, b in pairs if a in exact or b in exact)
    sims = np.array([true_jaccard(texts[a], texts[b], spec.shingle) for a, b in pairs])

    print(f"planted pairs: true {spec.shingle}-word-shingle Jaccard min {sims.min():.2f}, "
          f"p5 {np.percentile(sims, 5):.2f}, median {np.median(sims):.2f}; below threshold: {(sims < spec.threshold).sum()}")
    print(f"baseline exact-only pass: {baseline:.2f}s ({len(texts) / baseline:,.0f} rows/s), {len(exact):,} removed")
    print(f"exact + near pass:        {wall:.2f}s ({len(texts) / wall:,.0f} rows/s), of which near {near_seconds:.2f}s; "
          f"removed {len(exact):,} exact + {len(near):,} near = {len(removed):,}")
    print(f"ratio to exact-only baseline: {wall / baseline:.1f}x")
    print(f"recall {recall:.4f} ({found:,}/{len(pairs):,} planted pairs; {exact_pairs:,} of them by exact hash), "
          f"precision {precision:.4f} ({len(removed & members):,}/{len(removed):,} removed are planted)")
    ok = wall <= 60 and recall >= 0.95 and precision >= 0.95
    print(f"targets (<= 60 s, recall and precision >= 0.95): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
