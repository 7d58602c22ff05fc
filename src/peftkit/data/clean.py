"""Cleaning: text normalisation, exact and near-duplicate detection (MinHash LSH), leakage checks.

    text = normalise("Caf\u00e9\r\n  \x07ok  ")            # 'Café\n  ok' (control chars gone, emoji kept)
    dupes = find_duplicates(keys, DedupSpec())            # {row: (kept_row, "exact" | "near", similarity)}
    leaks = find_leaks(train_keys, heldout_keys, spec)    # {train_row: (heldout_row, kind, similarity)}

Near duplicates use datasketch: one MinHash per text over word shingles, hashed for all texts at
once with numpy (no per-shingle Python hashing), then MinHashLSH to find candidates and the
MinHash Jaccard estimate to confirm them against the threshold.
"""

from __future__ import annotations

import os

import re
import unicodedata
import zlib
from typing import Callable, Iterable

import numpy as np

from peftkit.recipe import DedupSpec

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")  # keeps \t \n \r (handled below)
_SPACES = re.compile(r"[^\S\n\t]")  # any Unicode space other than newline/tab
_TRAILING = re.compile(r"[ \t]+\n")
_WORD = re.compile(r"\w+")
# MinHashLSH weighs false positives against false negatives when it picks bands x rows. Every
# candidate is confirmed with the MinHash Jaccard estimate, so a false positive only costs one
# comparison: weigh misses far more (128 perms at threshold 0.8 -> 16 bands of 8 rows: a pair at
# J=0.85 collides in at least one band with p=0.994, against 0.82 with the default equal weights).
LSH_WEIGHTS = (0.05, 0.95)


def normalise(text: str) -> str:
    """NFC, CRLF -> LF, control characters removed, Unicode spaces -> ' ', no trailing spaces, stripped.

    Emoji (and their zero-width joiners) are kept; indentation inside the text is kept.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    return _TRAILING.sub("\n", text).strip()


def dedup_key(texts: Iterable[str]) -> str:
    """What two rows must share to be exact duplicates: casefolded NFKC text, whitespace collapsed."""
    joined = "\n".join(texts)
    return " ".join(unicodedata.normalize("NFKC", joined).casefold().split())


SHARED_PREFIX_MIN = 20  # characters: a shorter common start is ordinary text, not a shared instruction


def without_shared_prefix(keys: list[str]) -> tuple[list[str], int]:
    """`keys` without the words every one of them starts with (one instruction or system prompt on every
    row), and that prefix's length in characters (0 when under SHARED_PREFIX_MIN).

    Near-duplicate detection compares word shingles; a 40-word instruction shared by rows whose own
    text is a few words makes every pair look ~80% alike, so the shared start is left out of the
    comparison (exact duplicates are unaffected: equal keys stay equal).
    """
    if len(keys) < 2:
        return keys, 0
    prefix = os.path.commonprefix(keys)
    cut = prefix.rfind(" ") + 1 if len(prefix) < min(len(k) for k in keys) else len(prefix)
    if cut < SHARED_PREFIX_MIN:
        return keys, 0
    return [k[cut:] for k in keys], cut


def find_exact(keys: list[str]) -> dict[int, int]:
    """{row: first earlier row with the same key}."""
    first: dict[str, int] = {}
    dupes = {}
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            dupes[i] = j
    return dupes


def shingle_hashes(keys: list[str], k: int) -> list[np.ndarray]:
    """uint32 hashes of the k-word shingles of each text, computed in bulk with numpy.

    Words are hashed once each (crc32, cached per distinct word); a shingle's hash mixes its k
    word hashes with fixed odd multipliers, vectorised over all texts at once.
    """
    cache: dict[str, int] = {}
    lengths = np.empty(len(keys), dtype=np.int64)
    ids: list[int] = []
    for i, key in enumerate(keys):
        words = _WORD.findall(key)
        lengths[i] = len(words)
        for w in words:
            h = cache.get(w)
            if h is None:
                h = cache[w] = zlib.crc32(w.encode())
            ids.append(h)
    words = np.asarray(ids, dtype=np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    n = len(words)
    mult = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1,
                     0xD3A2646C, 0xFD7046C5, 0xB55A4F09, 0x2545F491, 0x9E3779B9], dtype=np.uint64)
    mixed = np.zeros(max(n - k + 1, 0), dtype=np.uint64)
    for j in range(k):
        mixed ^= words[j : n - k + 1 + j] * mult[j]  # wraps mod 2^64 on purpose
    mixed = (mixed ^ (mixed >> np.uint64(29))) & np.uint64(0xFFFFFFFF)
    out = []
    for key, start, length in zip(keys, starts.tolist(), lengths.tolist()):
        if length >= k:
            out.append(mixed[start : start + length - k + 1])
        else:  # a text shorter than one shingle is one shingle
            out.append(np.array([zlib.crc32(key.encode())], dtype=np.uint64))
    return out


def minhashes(keys: list[str], spec: DedupSpec, progress: Callable[[int], None] | None = None,
              cache: dict | None = None) -> list:
    """One LeanMinHash per text (datasketch), from bulk-hashed shingles.

    `cache` ({key: sketch}, filled here) lets the leakage check reuse the sketches dedup made.
    """
    from datasketch import LeanMinHash, MinHash

    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    hashes = shingle_hashes(todo, spec.shingle)
    for i, (key, m) in enumerate(zip(todo, MinHash.generator(hashes, num_perm=spec.num_perm, seed=1, hashfunc=_identity))):
        cache[key] = LeanMinHash(m)
        if progress and i % 1000 == 999:
            progress(1000)
    if progress:
        progress(len(todo) % 1000)
    return [cache[k] for k in keys]


def _identity(value):
    return value  # shingles arrive already hashed


def find_near(keys: list[str], spec: DedupSpec, skip: set[int] | None = None,
              progress: Callable[[int], None] | None = None, cache: dict | None = None) -> dict[int, tuple[int, float]]:
    """{row: (earlier kept row, estimated Jaccard)} for rows at least `threshold` similar to a kept row.

    Rows in `skip` (e.g. exact duplicates already removed) are neither indexed nor reported.
    """
    from datasketch import MinHashLSH

    skip = skip or set()
    index = [i for i in range(len(keys)) if i not in skip]
    sketches = minhashes([keys[i] for i in index], spec, progress, cache)
    lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm, weights=LSH_WEIGHTS)
    dupes: dict[int, tuple[int, float]] = {}
    for pos, (i, m) in enumerate(zip(index, sketches)):
        best = _best_match(lsh, m, sketches, spec.threshold)
        if best is None:
            lsh.insert(pos, m, check_duplication=False)
        else:
            dupes[i] = (index[best[0]], best[1])
    return dupes


def find_leaks(train_keys: list[str], heldout_keys: list[str], spec: DedupSpec,
               cache: dict | None = None) -> dict[int, tuple[int, str, float]]:
    """{train row: (held-out row, "exact" | "near", similarity)} for train rows that repeat a val/test row."""
    exact = {}
    for j, key in enumerate(heldout_keys):
        exact.setdefault(key, j)
    leaks: dict[int, tuple[int, str, float]] = {i: (exact[k], "exact", 1.0) for i, k in enumerate(train_keys) if k in exact}
    if not spec.near or not heldout_keys:
        return leaks
    from datasketch import MinHashLSH

    held = minhashes(heldout_keys, spec, cache=cache)
    lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm, weights=LSH_WEIGHTS)
    for j, m in enumerate(held):
        lsh.insert(j, m, check_duplication=False)
    rest = [i for i in range(len(train_keys)) if i not in leaks]
    for i, m in zip(rest, minhashes([train_keys[i] for i in rest], spec, cache=cache)):
        best = _best_match(lsh, m, held, spec.threshold)
        if best is not None:
            leaks[i] = (best[0], "near", best[1])
    return leaks


def _best_match(lsh, m, sketches, threshold: float) -> tuple[int, float] | None:
    """The most similar indexed sketch at or above the threshold (LSH candidates, confirmed)."""
    best = None
    for cand in lsh.query(m):
        sim = m.jaccard(sketches[cand])
        if sim >= threshold and (best is None or sim > best[1]):
            best = (cand, sim)
    return best
