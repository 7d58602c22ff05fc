"""Tests for the built-in ``shipping-emails`` dataset."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics

import pytest

from peftkit.catalog import shipping_emails as se
from peftkit.catalog.shipping_emails import (
    ALL_PORTS, CARRIERS, CODED_PORTS, CONTAINER_TYPES, FIELDS, OPTIONAL_FIELDS, PORTS, REQUIRED_FIELDS,
    booking_json, generate, generate_splits,
)

MONTHS = ("January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December")
_MON = "(?P<mon>" + "|".join(MONTHS) + ")"
_ABBR = "(?P<mon>" + "|".join(m[:3] for m in MONTHS) + ")"
_Y = r"(?P<y>202[67])"
# Date formats of 2026/27 (departures are 2026-2027); case-insensitive: terse emails may be all lower case.
DATE_FORMATS: dict[str, re.Pattern[str]] = {
    "iso": re.compile(_Y + r"-(?P<m>\d\d)-(?P<d>\d\d)\b"),
    "slash": re.compile(r"\b(?P<d>\d\d)/(?P<m>\d\d)/" + _Y),
    "dot": re.compile(r"\b(?P<d>\d\d)\.(?P<m>\d\d)\." + _Y),
    "month_d_y": re.compile(r"\b" + _MON + r" (?P<d>\d{1,2}), " + _Y, re.I),
    "d_month_y": re.compile(r"\b(?P<d>\d{1,2}) " + _MON + " " + _Y, re.I),
    "ordinal": re.compile(r"\b(?P<d>\d{1,2})(?:st|nd|rd|th) of " + _MON + " " + _Y, re.I),
    "ordinal_month_y": re.compile(r"\b(?P<d>\d{1,2})(?:st|nd|rd|th) " + _MON + " " + _Y, re.I),
    "mon_d_y": re.compile(r"\b" + _ABBR + r" (?P<d>\d{1,2}) " + _Y, re.I),
    "d_mon_y": re.compile(r"\b(?P<d>\d\d)-" + _ABBR + "-" + _Y, re.I),
    "d_mon_y_space": re.compile(r"\b(?P<d>\d{1,2}) " + _ABBR + " " + _Y, re.I),
}
CUES = ("etd", "departing", "sailing", "ready to ship on", "departure")


def _dates_in(text: str) -> list[tuple[str, dt.date, int]]:
    """All 2026/27 dates in ``text`` as (format name, date, start offset)."""
    found = []
    for name, pat in DATE_FORMATS.items():
        for m in pat.finditer(text):
            g = m.groupdict()
            month = int(g["m"]) if "m" in g else [x[:3] for x in MONTHS].index(g["mon"][:3].title()) + 1
            found.append((name, dt.date(int(g["y"]), month, int(g["d"])), m.start()))
    return found


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", text, re.IGNORECASE) is not None


def _carriers_in(text: str) -> set[str]:
    """Carriers named in `text`; "ONE" only in upper case ("one" is a count)."""
    return {c for c, variants in se.CARRIER_VARIANTS.items()
            if any(re.search(r"(?<![\w-])ONE(?![\w-])", text) if v == "ONE" else _has_word(text, v) for v in variants)}


def _ports_in(text: str) -> set[str]:
    low = text.lower()
    return {code for code, name in ALL_PORTS.items() if code.lower() in low or name.lower() in low}


def _not_departure(email: str, pos: int) -> bool:
    """A date at `pos` that the email marks as something else: a header, an "On ... wrote:" line, an
    office-closure note, or an amendment's "(previously ...)"."""
    start = email.rfind("\n", 0, pos) + 1
    end = email.find("\n", pos)
    line = email[start:end if end >= 0 else len(email)]
    return (line.startswith(("Sent:", "Date:")) or (line.startswith("On ") and line.endswith("wrote:"))
            or "closed on" in line or "previously" in email[max(0, pos - 15):pos])


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return generate(500, seed=0)


def test_constants() -> None:
    assert set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) == set(FIELDS)
    assert not set(REQUIRED_FIELDS) & set(OPTIONAL_FIELDS)
    assert set(OPTIONAL_FIELDS) == {"departure_date", "commodity"}
    assert PORTS["CNSHA"] == "Shanghai" and PORTS["NLRTM"] == "Rotterdam" and PORTS["INNSA"] == "Nhava Sheva"
    assert len(PORTS) >= 12 and len(CODED_PORTS) >= 20 and not set(PORTS) & set(CODED_PORTS)
    assert all(re.fullmatch(r"[A-Z]{5}", c) and c[:2] in se.COUNTRIES for c in ALL_PORTS)
    names = [n.lower() for n in ALL_PORTS.values()]  # no port name inside another: each is unambiguous
    assert not [(a, b) for a in names for b in names if a != b and a in b]
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
        assert b["origin"] in ALL_PORTS and b["destination"] in ALL_PORTS
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
        # ports: the code appears (or, for a PORTS port, the city), and no third port does
        low = email.lower()
        for key in ("origin", "destination"):
            code = b[key]
            assert code.lower() in low or (code in PORTS and PORTS[code].lower() in low), (key, email)
        assert _ports_in(email) == {b["origin"], b["destination"]}, email
        # carrier: exactly the right carrier is named (some known variant)
        assert _carriers_in(email) == {b["carrier"]}, email
        # departure date: every 2026/27 date not marked as something else is the target, after a cue
        departure = dt.date.fromisoformat(b["departure_date"]) if b["departure_date"] else None
        hits = [(d, pos) for _, d, pos in _dates_in(email)]
        named = [(d, pos) for d, pos in hits if not _not_departure(email, pos)]
        assert all(d != departure for d, pos in hits if _not_departure(email, pos)), email
        if departure is None:
            assert not named, email
        else:
            assert str(departure.year) in email
            assert named and {d for d, _ in named} == {departure}, email
            for _, pos in named:  # a cue word closely precedes the date
                assert any(c in email[max(0, pos - 30):pos].lower() for c in CUES), email
        # commodity: present verbatim iff not null, and no other commodity named
        named = {c for c in se.COMMODITIES if _has_word(email, c)}
        assert named == ({b["commodity"]} if b["commodity"] else set()), email
        # container: size, reefer-ness and high-cube-ness are visible
        ct = b["container_type"]
        assert ct[:2] in email or ("twenty" if ct[:2] == "20" else "forty") in low
        assert bool("reefer" in low or re.search(r"(?<!\d)[24]0(?:' )?RF\b", email, re.I)) == ct.endswith("RF")
        assert bool("high cube" in low or re.search(r"(?<!\d)40(?:' )?H[CQ]\b", email, re.I)) == (ct == "40HC")
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
    # the wider variety: forms, threads, amendments, codes outside PORTS, trade synonyms, noise
    assert sum("POL / POD" in e for e in emails) >= 10
    assert sum(bool(re.search(r"^On .*wrote:$", e, re.M)) for e in emails) >= 50
    assert sum(ex["booking"]["origin"] in CODED_PORTS for ex in examples) >= 100
    assert sum(bool(re.search(r"\b(?:20DV|40DV|40HQ)\b|' (?:DC|HQ|RF)\b", e)) for e in emails) >= 30
    assert sum(bool(re.search(r"^(?:need|pls book|book) ", e)) for e in emails) >= 5  # all lower case
    assert sum("closed on" in e for e in emails) >= 10
    assert sum(bool(re.search(r"Shipper|Consignee", e)) for e in emails) >= 30
    assert sum(any(c.capitalize() in e for c in se.COMMODITIES) for e in emails) >= 20


def _header_date(line: str) -> dt.date:
    """The date of a forwarded header's "Date:" or "Sent:" line."""
    label, when = line.split(" ", 1)
    fmt = "%a, %d %b %Y %H:%M" if label == "Date:" else "%A, %B %d, %Y %I:%M %p"
    return dt.datetime.strptime(when, fmt).date()


def test_forwarded_header_date_is_not_a_departure(examples: list[dict]) -> None:
    fwd = [ex for ex in examples if "Forwarded message" in ex["email"]]
    assert fwd
    for ex in fwd:  # sent 1-60 days before the departure (in 2025 when there is none)
        line = next(ln for ln in ex["email"].splitlines() if ln.startswith(("Date:", "Sent:")))
        sent, departure = _header_date(line), ex["booking"]["departure_date"]
        if departure is None:
            assert sent.year == 2025, line
        else:
            assert 1 <= (dt.date.fromisoformat(departure) - sent).days <= 60, (line, departure)
    assert sum(_header_date(next(ln for ln in ex["email"].splitlines() if ln.startswith(("Date:", "Sent:")))).year
               >= 2026 for ex in fwd) >= 10  # header dates near the departure, in the same years


def _count_of(equipment: str) -> int:
    """The container count of an equipment phrase: "3 x 40HC", "40' HQ x3", "three 40GP containers"."""
    m = re.match(r"(\d+) ?x", equipment) or re.search(r"x(\d+)$", equipment)
    return int(m.group(1)) if m else se._NUM_WORDS.index(equipment.split()[0])


def test_amendments_name_the_value_that_holds(examples: list[dict]) -> None:
    counts = [ex for ex in examples if ex["email"].startswith(("Sorry, small change", "Amendment: the customer"))]
    dates = [ex for ex in examples if ex["email"].startswith("Amendment to booking")]
    assert len(counts) >= 15 and len(dates) >= 5
    for ex in counts:  # new count in the note; the quoted request below still shows the old one
        note, quoted = ex["email"].split("\n", 1)
        new, old = re.match(r".*(?:make it|now needs) (.+?)(?: instead of | \(not )(.+?)[.)]", note).groups()
        assert _count_of(new) == ex["booking"]["container_count"] != _count_of(old), note
        assert "\n> " in quoted
    for ex in dates:  # new date after "ETD to", the old one after "previously"
        note = ex["email"].split("\n", 1)[0]
        found = [d for _, d in sorted({pos: d for _, d, pos in _dates_in(note)}.items())]  # "May": two formats
        assert found[0] == dt.date.fromisoformat(ex["booking"]["departure_date"]), note
        assert "previously" in note and all(d != found[0] for d in found[1:])


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
