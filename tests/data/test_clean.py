"""Normalisation, exact and near duplicates, leakage, lengths (truncate/drop), mixing."""

import json
import random

import pytest

from peftkit.data import clean
from peftkit.data.prepare import prepare_data, read_split
from peftkit.errors import DataError
from peftkit.recipe import DataSpec, DedupSpec

WORDS = [f"w{i}" for i in range(3000)]


def doc(rng, n=60):
    return " ".join(rng.choices(WORDS, k=n))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_normalise_strips_controls_keeps_emoji_and_indentation():
    assert clean.normalise("  Caf\u0065\u0301\r\n\x00  code()\u00a0x \n") == "Café\n  code() x"
    assert clean.normalise("family 👨‍👩‍👧 \x1b[0m") == "family 👨‍👩‍👧 [0m"
    assert clean.dedup_key(["Hello   World", "ＡＢＣ"]) == "hello world abc"


def test_near_duplicates_found_and_distinct_texts_kept():
    rng = random.Random(0)
    base = [doc(rng) for _ in range(300)]
    near = []
    for i in range(0, 30):  # one word changed of 60: Jaccard of 3-word shingles ~0.9
        words = base[i].split()
        words[rng.randrange(60)] = "changed"
        near.append(" ".join(words))
    keys = [clean.dedup_key([t]) for t in base + near]
    found = clean.find_near(keys, DedupSpec())
    assert set(found) == set(range(300, 330))
    assert all(found[300 + i][0] == i and found[300 + i][1] >= 0.8 for i in range(30))
    assert clean.find_exact(keys + [keys[5]]) == {330: 5}


def test_an_instruction_every_row_shares_does_not_make_rows_near_duplicates(tmp_path):
    rng = random.Random(2)
    instruction = ("Resolve the time expression against now and answer JSON with the start date, the start time, "
                   "the end date and the end time, null where the text leaves it open.")
    rows = [{"instruction": instruction, "input": f"Now: 2018-03-0{i % 9 + 1} 12:43 Text: {doc(rng, 4)}",
             "output": json.dumps({"start": f"2018-03-{i:02d}"})} for i in range(40)]
    words = rows[3]["input"].split()
    rows.append({**rows[3], "input": " ".join(words[:-1] + ["changed"])})  # one word of its own text changed
    keys = [clean.dedup_key([r["instruction"], r["input"], r["output"]]) for r in rows]
    assert len(clean.find_near(keys, DedupSpec())) >= 20  # with the instruction compared, most rows collide
    stripped, shared = clean.without_shared_prefix(keys)
    assert shared > len(instruction) - 5 and stripped[0].startswith("2018-03-01 12:43 text:")
    spec = DataSpec(files={"train": write(tmp_path / "tr.jsonl", rows)}, task="extraction", split={"val": 0, "test": 0})
    prepared = prepare_data(spec, tmp_path / "out")
    assert prepared.manifest["cleaning"]["near_duplicates"] == 0 and prepared.counts["train"] == 41
    assert prepared.manifest["cleaning"]["shared_prefix_chars"] == shared
    assert clean.without_shared_prefix(["the cat sat", "the cat ran"]) == (["the cat sat", "the cat ran"], 0)


def test_dedup_and_leakage_through_prepare(tmp_path):
    rng = random.Random(1)
    train = [{"text": doc(rng), "label": "ab"[i % 2]} for i in range(40)]
    test = [{"text": doc(rng), "label": "ab"[i % 2]} for i in range(6)]
    train.append(dict(train[0]))                                       # exact duplicate within train
    train.append({"text": train[1]["text"].upper() + " \t ", "label": "b"})  # same after case and spaces
    words = train[2]["text"].split()
    words[10] = "zzz"
    train.append({"text": " ".join(words), "label": "b"})              # near duplicate, other label
    train.append({"text": test[0]["text"], "label": "a"})              # leaks into test (exact)
    words = test[1]["text"].split()
    words[30] = "yyy"
    train.append({"text": " ".join(words), "label": "b"})              # leaks into test (near)
    spec = DataSpec(files={"train": write(tmp_path / "tr.jsonl", train), "test": write(tmp_path / "te.jsonl", test)},
                    split={"val": 0, "test": 0})
    prepared = prepare_data(spec, tmp_path / "out")
    c = prepared.manifest["cleaning"]
    assert (c["exact_duplicates"], c["near_duplicates"], c["leakage"]) == (2, 1, {"val": 0, "test": 2})
    assert prepared.counts == {"train": 40, "val": 0, "test": 6}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rejects] == ["exact_duplicate", "exact_duplicate", "near_duplicate", "leakage", "leakage"]
    assert rejects[0]["reason"].endswith("tr.jsonl:1") and "labels differ: 'b' vs 'a'" in rejects[2]["reason"]
    assert "test row" in rejects[3]["reason"] and rejects[3]["reason"].startswith("exact")
    assert rejects[4]["reason"].startswith("near (estimated Jaccard")
    assert prepared.manifest["rejects"]["count"] == 5

    spec.dedup = DedupSpec(exact=False, near=False)
    prepared = prepare_data(spec, tmp_path / "out2")
    assert prepared.counts["train"] == 44 and prepared.manifest["cleaning"]["leakage"]["test"] == 1  # exact leak only


def test_lengths_truncate_counts_and_drop_rejects(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [{"input": "short " * n, "output": "ok"} for n in (3, 4, 200, 5, 300)]
    path = write(tmp_path / "x.jsonl", rows)
    spec = DataSpec(dataset=path, split={"val": 0, "test": 0}, max_length=64, dedup={"near": False})
    prepared = prepare_data(spec, tmp_path / "t", tokenizer=tok, model_source=str(tiny_llama_dir))
    lengths = prepared.manifest["lengths"]
    assert prepared.counts["train"] == 5 and lengths["over_max"] == 2 and lengths["truncated"] == 2
    assert lengths["splits"]["train"]["max"] > 300 and (tmp_path / "t" / "lengths.png").stat().st_size > 5000
    spec.truncation = "drop"
    prepared = prepare_data(spec, tmp_path / "d", tokenizer=tok, model_source=str(tiny_llama_dir))
    assert prepared.counts["train"] == 3 and prepared.manifest["lengths"]["dropped"] == 2
    rejects = [json.loads(x) for x in (tmp_path / "d" / "rejects.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rejects} == {"too_long"} and "> data.max_length 64" in rejects[0]["reason"]


def test_mix_replays_chatterbot_into_train_only(tmp_path):
    spec = DataSpec(dataset="shipping-emails", size=50, split={"val": 0.1, "test": 0.2},
                    mix={"dataset": "chatterbot", "fraction": 0.2})
    prepared = prepare_data(spec, tmp_path)
    train = read_split(tmp_path, "train")
    mixed = [r for r in train if "messages" in r]
    assert len(mixed) == prepared.manifest["mix"]["rows"] == round((len(train) - len(mixed)) * 0.2 / 0.8) > 0
    assert not any("messages" in r for r in read_split(tmp_path, "test"))
    with pytest.raises(DataError, match="data.mix: replay data is chat"):
        prepare_data(DataSpec(dataset="bbc-news", size=30, mix={"dataset": "chatterbot", "fraction": 0.1}), tmp_path / "x")
