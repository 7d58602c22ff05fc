"""Tests for the hand-written booking emails shipped as a second test set of ``shipping-emails``.

The set is for evaluation only: these tests check that it ships, that every label is in booking_json's
format and can be read off its email, that it holds the kinds of mail the generator was weak on, and
that no email is a near copy of a generated one.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from peftkit.catalog import shipping_emails as se
from peftkit.catalog.shipping_emails import (
    ALL_PORTS, CARRIER_VARIANTS, CONTAINER_TYPES, FIELDS, HANDWRITTEN_BOOKINGS, PORTS, booking_json, generate,
)

NUM_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = HANDWRITTEN_BOOKINGS.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def _names(text: str, name: str) -> bool:
    """`name` is written in `text` (any case), or a one-word name with a typo (a reader still knows it)."""
    low = text.lower()
    if name.lower() in low:
        return True
    return " " not in name and bool(difflib.get_close_matches(name.lower(), re.findall(r"\w+", low), cutoff=0.85))


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_ships_with_the_package() -> None:
    root = Path(se.__file__).parents[3]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = HANDWRITTEN_BOOKINGS.relative_to(Path(se.__file__).parents[1]).as_posix()
    assert any(fnmatch(relative, pattern) for pattern in package_data["peftkit"]), (relative, package_data)
    assert HANDWRITTEN_BOOKINGS.is_file()


def test_rows_are_labelled_in_booking_json_format(rows: list[dict]) -> None:
    assert len(rows) >= 40
    assert len({r["input"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"input", "output"} and r["input"].strip() == r["input"] != ""
        b = json.loads(r["output"])
        assert tuple(b) == FIELDS and r["output"] == booking_json(b), r["output"]
        assert isinstance(b["carrier"], str) and b["carrier"]
        assert re.fullmatch(r"[A-Z]{5}", b["origin"]) and re.fullmatch(r"[A-Z]{5}", b["destination"])
        assert b["origin"] != b["destination"]
        assert b["container_type"] in CONTAINER_TYPES
        assert type(b["container_count"]) is int and 1 <= b["container_count"] <= 10
        if b["departure_date"] is not None:
            assert dt.date.fromisoformat(b["departure_date"]).year in (2026, 2027)
        if b["commodity"] is not None:
            assert b["commodity"] == b["commodity"].lower().strip() != ""


def test_every_label_can_be_read_off_its_email(rows: list[dict]) -> None:
    for r in rows:
        email, b = r["input"], json.loads(r["output"])
        low = email.lower()
        for key in ("origin", "destination"):  # the code is written, or the name of a port of PORTS
            code = b[key]
            assert code in email or (code in PORTS and PORTS[code].lower() in low), (key, email)
        variants = CARRIER_VARIANTS.get(b["carrier"], (b["carrier"],))
        assert any(_names(email, v) for v in variants) or _names(email, b["carrier"].split("-")[0]), email
        n = b["container_count"]
        assert re.search(rf"(?<![\d+]){n}(?![\d'])", email) or NUM_WORDS[n - 1] in low, email
        assert b["container_type"][:2] in email or ("twenty" if b["container_type"][:2] == "20" else "forty") in low
        if b["commodity"] is not None:
            assert b["commodity"] in low, email
        if b["departure_date"] is not None:
            assert b["departure_date"][:4] in email, email


def test_holds_the_mail_the_generator_missed(rows: list[dict]) -> None:
    emails = [r["input"] for r in rows]
    labels = [json.loads(r["output"]) for r in rows]
    outside = {b[k] for b in labels for k in ("origin", "destination")} - set(ALL_PORTS)
    assert len(outside) >= 10, outside  # ports outside the generator's tables, written as their code
    assert sum(b["carrier"] not in se.CARRIERS for b in labels) >= 1  # a carrier the generator never names
    assert sum(bool(re.search(r"\bPO[LD]\b", e)) for e in emails) >= 8  # labelled POL/POD forms
    assert sum(bool(re.search(r"^(?:>|From:|On .*wrote:|-+ ?(?:Original|Forwarded))", e, re.M)) for e in emails) >= 6
    assert sum(bool(re.search(r"instead of|previously|correction|amend|change|move|reduce", e, re.I)) for e in emails) >= 5
    assert sum(len(e.splitlines()) <= 2 for e in emails) >= 4  # terse one-liners
    phones = r"\+\d{1,3}[\d ()-]{6,}\d|\(?\b\d{3}\)?[ -]\d{3}-\d{4}\b"
    companies = r"\b(?:Ltd|GmbH|Inc|B\.?V|LLC|Co\.|S\.A|A/S|AB|JSC|Pvt|NV|BVBA|FZE|Corp)\b"
    assert sum(bool(re.search(phones, e)) for e in emails) >= 15  # signatures with phone numbers
    assert sum(bool(re.search(companies, e)) for e in emails) >= 20  # ... and company names
    assert sum(b["departure_date"] is None for b in labels) >= 3
    assert sum(b["commodity"] is None for b in labels) >= 1
    assert {b["container_type"] for b in labels} == set(CONTAINER_TYPES)


def test_no_email_is_a_near_copy_of_a_generated_one(rows: list[dict]) -> None:
    generated = [_shingles(ex["email"]) for ex in generate(2000, seed=0)]
    closest = max(_jaccard(_shingles(r["input"]), g) for r in rows for g in generated)
    assert closest < 0.5, closest
