"""Tests for the built-in ``shipping-emails`` dataset."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics

import pytest

from peftkit.catalog import shipping_emails as se
from peftkit.catalog.shipping_emails import (
    CARRIERS, CONTAINER_TYPES, FIELDS, OPTIONAL_FIELDS, PORTS, REQUIRED_FIELDS,
    booking_json, generate, generate_splits,
)

MONTHS = ("January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December")
_MON = "(?P<mon>" + "|".join(MONTHS) + ")"
_ABBR = "(?P<mon>" + "|".join(m[:3] for m in MONTHS) + ")"
_Y = r"(?P<y>202[67])"
# Departure-date formats (departures are 2026-2027; forwarded headers use 2025).
DATE_FORMATS: dict[str, re.Pattern[str]] = {
    "iso": re.compile(_Y + r"-(?P<m>\d\d)-(?P<d>\d\d)\b"),
    "slash": re.compile(r"\b(?P<d>\d\d)/(?P<m>\d\d)/" + _Y),
    "dot": re.compile(r"\b(?P<d>\d\d)\.(?P<m>\d\d)\." + _Y),
    "month_d_y": re.compile(r"\b" + _MON + r" (?P<d>\d{1,2}), " + _Y),
    "d_month_y": re.compile(r"\b(?P<d>\d{1,2}) " + _MON + " " + _Y),
    "ordinal": re.compile(r"\b(?P<d>\d{1,2})(?:st|nd|rd|th) of " + _MON + " " + _Y),
    "mon_d_y": re.compile(r"\b" + _ABBR + r" (?P<d>\d{1,2}) " + _Y),
    "d_mon_y": re.compile(r"\b(?P<d>\d\d)-" + _ABBR + "-" + _Y),
}
CUES = ("etd", "departing", "sailing", "ready to ship on", "departure")


def _dates_in(text: str) -> list[tuple[str, dt.date, int]]:
    """All 2026/27 dates in ``text`` as (format name, date, start offset)."""
    found = []
    for name, pat in DATE_FORMATS.items():
        for m in pat.finditer(text):
            g = m.groupdict()
            month = int(g["m"]) if "m" in g else [x[:3] for x in MONTHS].index(g["mon"][:3]) + 1
            found.append((name, dt.date(int(g["y"]), month, int(g["d"])), m.start()))
    return found


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", text, re.IGNORECASE) is not None


def _carriers_in(text: str) -> set[str]:
    return {c for c, variants in se.CARRIER_VARIANTS.items() if any(_has_word(text, v) for v in variants)}


def _ports_in(text: str) -> set[str]:
    return {code for code, name in PORTS.items() if code in text or name in text}


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return generate(500, seed=0)


def test_constants() -> None:
    assert set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) == set(FIELDS)
    assert not set(REQUIRED_FIELDS) & set(OPTIONAL_FIELDS)
    assert set(OPTIONAL_FIELDS) == {"departure_date", "commodity"}
    assert PORTS["CNSHA"] == "Shanghai" and PORTS["NLRTM"] == "Rotterdam" and PORTS["INNSA"] == "Nhava Sheva"
    assert all(re.fullmatch(r"[A-Z]{5}", c) for c in PORTS)
    assert set(CARRIERS) == set(se.CARRIER_VARIANTS)
    assert CONTAINER_TYPES == ("20GP", "40GP", "40HC", "20RF", "40RF")


def test_deterministic_and_seed_dependent() -> None:
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)
    assert [e["email"] for e in generate(50, 3)] != [e["email"] for e in generate(50, 4)]
    assert generate(0) == []
    with pytest.raises(ValueError):
        generate(-1)


def test_booking_schema(examples: list[dict]) -> None:
    assert len(examples) == 500
    for ex in examples:
        assert set(ex) == {"email", "booking"} and isinstance(ex["email"], str)
        b = ex["booking"]
        assert tuple(b) == FIELDS
        assert b["carrier"] in CARRIERS
        assert b["origin"] in PORTS and b["destination"] in PORTS
        assert b["origin"] != b["destination"]
        assert b["container_type"] in CONTAINER_TYPES
        assert type(b["container_count"]) is int and 1 <= b["container_count"] <= 10
        if b["departure_date"] is not None:
            d = dt.date.fromisoformat(b["departure_date"])
            assert d.isoformat() == b["departure_date"] and d.year in (2026, 2027)
        if b["commodity"] is not None:
            c = b["commodity"]
            assert c in se.COMMODITIES and c == c.lower()
            assert (c in se.REEFER_COMMODITIES) == b["container_type"].endswith("RF")
        for f in REQUIRED_FIELDS:
            assert b[f] is not None


def test_values_recoverable_and_unambiguous(examples: list[dict]) -> None:
    for ex in examples:
        email, b = ex["email"], ex["booking"]
        # ports: the code or city of each port appears, and no third port does
        for key in ("origin", "destination"):
            assert b[key] in email or PORTS[b[key]] in email, (key, email)
        assert _ports_in(email) == {b["origin"], b["destination"]}, email
        # carrier: exactly the right carrier is named (some known variant)
        assert _carriers_in(email) == {b["carrier"]}, email
        # departure date: exactly one 2026/27 date, equal to the target, with a cue
        hits = _dates_in(email)
        dates = {d for _, d, _ in hits}
        if b["departure_date"] is None:
            assert not dates, email
        else:
            assert str(dt.date.fromisoformat(b["departure_date"]).year) in email
            assert dates == {dt.date.fromisoformat(b["departure_date"])}, email
            for _, _, pos in hits:  # a cue word closely precedes the date
                assert any(c in email[max(0, pos - 30):pos].lower() for c in CUES), email
        # commodity: present verbatim iff not null, and no other commodity named
        named = {c for c in se.COMMODITIES if _has_word(email, c)}
        assert named == ({b["commodity"]} if b["commodity"] else set()), email
        # container: size, reefer-ness and high-cube-ness are visible
        ct, low = b["container_type"], email.lower()
        assert ct[:2] in email or ("twenty" if ct[:2] == "20" else "forty") in low
        assert bool("reefer" in low or re.search(r"\b[24]0RF\b", email)) == ct.endswith("RF")
        assert bool("high cube" in low or re.search(r"\b40HC\b|' HC\b", email)) == (ct == "40HC")
        # count: as a digit or a word
        n = b["container_count"]
        word = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")[n - 1]
        assert re.search(rf"(?<![\d+])x?{n}(?![\d/.:-])", email) or _has_word(email, word), email


def test_variety(examples: list[dict]) -> None:
    emails = [ex["email"] for ex in examples]
    formats = {name for e in emails for name, _, _ in _dates_in(e)}
    assert len(formats) >= 5, formats
    as_code = sum(ex["booking"]["origin"] in ex["email"] for ex in examples)
    as_name_only = sum(ex["booking"]["origin"] not in ex["email"] for ex in examples)
    assert as_code > 50 and as_name_only > 50
    for field in OPTIONAL_FIELDS:
        share = sum(ex["booking"][field] is None for ex in examples) / len(examples)
        assert 0.05 <= share <= 0.40, (field, share)
    assert sum("Forwarded message" in e for e in emails) >= 25
    assert sum(bool(re.search(r"^[-*\u2022] ", e, re.M)) for e in emails) >= 50  # bullet lists
    variants = {v for e in emails for vs in se.CARRIER_VARIANTS.values() for v in vs if v in e}
    assert len(variants) >= 10
    assert len({ex["booking"]["carrier"] for ex in examples}) == len(CARRIERS)
    assert {ex["booking"]["container_type"] for ex in examples} == set(CONTAINER_TYPES)
    assert len({ex["booking"]["container_count"] for ex in examples}) == 10
    assert len(set(emails)) == len(emails)


def test_forwarded_header_date_is_not_a_departure(examples: list[dict]) -> None:
    fwd = [ex for ex in examples if "Forwarded message" in ex["email"]]
    assert fwd
    for ex in fwd:
        line = next(ln for ln in ex["email"].splitlines() if ln.startswith(("Date:", "Sent:")))
        assert "2025" in line and not _dates_in(line)


def test_email_lengths(examples: list[dict]) -> None:
    counts = [len(ex["email"].split()) for ex in examples]
    assert 40 <= statistics.median(counts) <= 110
    assert max(counts) < 180


def test_splits() -> None:
    splits = generate_splits(seed=1, train=120, val=20, test=30)
    assert {k: len(v) for k, v in splits.items()} == {"train": 120, "val": 20, "test": 30}
    texts = {k: {ex["email"] for ex in v} for k, v in splits.items()}
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert splits == generate_splits(seed=1, train=120, val=20, test=30)
    assert splits != generate_splits(seed=2, train=120, val=20, test=30)
    default = generate_splits()
    assert [len(default[k]) for k in ("train", "val", "test")] == [400, 50, 100]


def test_booking_json_roundtrip(examples: list[dict]) -> None:
    for ex in examples[:100]:
        s = booking_json(ex["booking"])
        assert json.loads(s) == ex["booking"]
        assert list(json.loads(s)) == list(FIELDS)
    shuffled = dict(reversed(list(examples[0]["booking"].items())))
    assert booking_json(shuffled) == booking_json(examples[0]["booking"])
    assert booking_json(shuffled).startswith('{"carrier": ')
    assert "\n" not in booking_json(shuffled)
