"""Built-in dataset ``shipping-emails``: freight booking emails -> booking JSON.

Synthetic emails of the kind a logistics company receives ("please book 2 x
40HC with MSC from Shanghai to Rotterdam, ETD 14/03/2026 ..."), each paired
with the structured booking a booking system needs.  The task is small enough
for a ~135M-parameter chat model to learn from a few hundred examples, while
showing real surface variety: carrier spelling variants, ports as UN/LOCODE,
city name or both, many date formats, container types as codes or words,
counts as digits or words, greetings, signatures, forwarded header blocks,
bullet lists vs. prose vs. terse one-liners and occasional typos in filler text.

Every target value is recoverable from the email text alone:

* ports appear as their code and/or city name from the fixed ``PORTS`` table;
* the departure date always includes the year and is always introduced by a
  cue ("ETD", "departing", "sailing on", "ready to ship on", "departure");
  numeric dates are always day-first (dd/mm/yyyy or dd.mm.yyyy), never US
  mm/dd.  The only other date that can appear is the "Sent:"/"Date:" line of a
  forwarded header, which is always in 2025 (departures are 2026-2027);
* a missing date or commodity is either not mentioned or marked TBC -> null;
* typos are only injected into filler sentences, never into values.

Usage::

    from peftkit.catalog.shipping_emails import generate_splits, booking_json

    splits = generate_splits(seed=0)
    ex = splits["train"][0]
    prompt, target = ex["email"], booking_json(ex["booking"])

Everything is drawn from a single ``random.Random(seed)``: output is fully
deterministic and never depends on the global random state or today's date.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
from typing import Any, Optional

FIELDS: tuple[str, ...] = ("carrier", "origin", "destination", "departure_date",
                           "container_type", "container_count", "commodity")
REQUIRED_FIELDS: tuple[str, ...] = ("carrier", "origin", "destination",
                                    "container_type", "container_count")
OPTIONAL_FIELDS: tuple[str, ...] = ("departure_date", "commodity")

PORTS: dict[str, str] = {
    "CNSHA": "Shanghai", "NLRTM": "Rotterdam", "DEHAM": "Hamburg",
    "SGSIN": "Singapore", "USLAX": "Los Angeles", "USNYC": "New York",
    "GBFXT": "Felixstowe", "BEANR": "Antwerp", "JPTYO": "Tokyo",
    "KRPUS": "Busan", "AEJEA": "Jebel Ali", "INNSA": "Nhava Sheva",
}
CARRIERS: tuple[str, ...] = ("Maersk", "MSC", "CMA CGM", "Hapag-Lloyd", "COSCO", "Evergreen")
CONTAINER_TYPES: tuple[str, ...] = ("20GP", "40GP", "40HC", "20RF", "40RF")

# How each canonical carrier may be written in an email (first = canonical).
CARRIER_VARIANTS: dict[str, tuple[str, ...]] = {
    "Maersk": ("Maersk", "Maersk Line", "MAERSK"),
    "MSC": ("MSC", "Mediterranean Shipping Co"),
    "CMA CGM": ("CMA CGM", "CMA-CGM"),
    "Hapag-Lloyd": ("Hapag-Lloyd", "Hapag Lloyd"),
    "COSCO": ("COSCO", "Cosco Shipping"),
    "Evergreen": ("Evergreen", "Evergreen Line"),
}
# Fixed phrasings per container code (first = the code itself).
CONTAINER_PHRASES: dict[str, tuple[str, ...]] = {
    "20GP": ("20GP", "20ft dry", "20' dry", "20ft standard", "twenty-foot dry"),
    "40GP": ("40GP", "40ft dry", "40' dry", "40ft standard", "forty-foot dry"),
    "40HC": ("40HC", "40ft high cube", "40' HC", "40 foot high cube", "forty-foot high cube"),
    "20RF": ("20RF", "20ft reefer", "20' reefer", "20 foot reefer"),
    "40RF": ("40RF", "40ft reefer", "40' reefer", "40 foot reefer", "forty-foot reefer"),
}
DRY_COMMODITIES: tuple[str, ...] = (
    "furniture", "auto parts", "textiles", "electronics", "machinery", "toys",
    "ceramic tiles", "plastic resin", "paper rolls", "steel coils")
REEFER_COMMODITIES: tuple[str, ...] = (
    "frozen fish", "frozen chicken", "chilled fruit", "frozen shrimp", "chilled meat")
COMMODITIES: tuple[str, ...] = DRY_COMMODITIES + REEFER_COMMODITIES

_NUM_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE_START, _DATE_DAYS = _dt.date(2026, 1, 1), 730  # departures: 2026-01-01 .. 2027-12-31

_FIRST = ("Anna", "Tom", "Priya", "Lukas", "Mei", "Carlos", "Sofia", "James",
          "Yuki", "Omar", "Eva", "Daniel", "Fatima", "Henrik", "Grace", "Raj")
_LAST = ("Becker", "Chen", "Novak", "Patel", "Smith", "Tanaka", "Rossi",
         "Jensen", "Kowalski", "Silva", "Moreau", "Kim", "Haddad", "Olsen")
_COMPANIES = ("Brightline Trading Ltd", "Nordwind Imports GmbH", "Sunrise Home Goods",
              "Kestrel Components", "Alpine Retail Group", "Tidewater Supplies",
              "Blue Harbour Distribution", "Meridian Wholesale", "Oakvale Industries",
              "Pioneer Trade Partners")
_PHONES = ("+44 20 7946 {0}", "+49 40 3021 {0}", "+31 10 2845 {0}", "+65 6123 {0}",
           "+1 212 555 {0}", "+971 4 339 {0}")

_GREETINGS = ("Hi team,", "Dear Sir/Madam,", "Hello,", "Good morning,", "Hi {rcpt},",
              "Dear {rcpt},", "Hi all,", "")
_SIGNOFFS = ("Best regards,", "Kind regards,", "Thanks,", "Cheers,", "Regards,", "Many thanks,")
_FILLERS = ("Let me know if you need anything else.", "Please confirm rates and availability.",
            "Thanks in advance for your help.", "We have a tight deadline on this one.",
            "Would appreciate a quick turnaround.",
            "Please send the booking confirmation once available.",
            "Happy to discuss on a call if easier.", "Please advise the cut-off as well.")
_OPENERS = ("Hope you are well.", "I hope this email finds you well.",
            "Thanks for your help on the last shipment.", "We have a new order coming up.",
            "Our customer has confirmed the order, so we are ready to move ahead.",
            "Writing to request a booking for one of our clients.")
_MAIN = ("Please book {eq}{car} {route}.", "We need {eq}{car} {route}.",
         "Could you arrange {eq}{car} {route}?", "Kindly reserve space for {eq}{car} {route}.",
         "We would like to ship {eq}{car} {route}.")
_ROUTES = ("from {o} to {d}", "ex {o} to {d}", "with loading at {o} and discharge at {d}")
_CARRIER_SENT = ("We would prefer {c} on this one.", "Carrier: {c}.", "Please use {c}.",
                 "Shipping line should be {c}.", "Our client has asked for {c}.")
_DATE_SENT = ("ETD {d}.", "ETD: {d}.", "Cargo will be ready to ship on {d}.",
              "We are looking at the vessel departing {d}.", "Requested departure: {d}.",
              "Ideally sailing on {d}.")
_NO_DATE_SENT = ("ETD to be confirmed.", "Departure date is TBC, we will advise.")
_COMMODITY_SENT = ("Cargo is {c}.", "Commodity: {c}.", "The shipment is {c}.",
                   "Goods are {c}.", "Contents: {c}.")
_BULLET_INTROS = ("Please book the following:", "Booking request below, thanks.",
                  "Can you please arrange space as per below:", "New booking details:")
_LABELS = {"carrier": ("Carrier", "Line", "Shipping line"),
           "origin": ("POL", "Origin", "Port of loading"),
           "destination": ("POD", "Destination", "Port of discharge"),
           "date": ("ETD", "Departure", "Sailing date"),
           "equipment": ("Equipment", "Containers", "Container"),
           "commodity": ("Commodity", "Cargo", "Goods")}
_FWD_NOTES = ("FYI, see request below.", "Forwarding this one, can you handle?",
              "Please see below from the customer.", "Can someone pick this up?")
_SUBJECTS = ("Booking request", "New booking", "Space request", "RE: rates",
             "Booking PO-{ref}", "Urgent booking")


def _typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent inner letters of one longer word (filler text only)."""
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 5]
    if not idx:
        return text
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _filler(rng: random.Random, typo_p: float = 0.15) -> str:
    s = rng.choice(_FILLERS)
    return _typo(rng, s) if rng.random() < typo_p else s


def _format_date(rng: random.Random, d: _dt.date) -> str:
    """Render a date in one of eight unambiguous, year-bearing, day-first formats."""
    month = _MONTHS[d.month - 1]
    suffix = "th" if 11 <= d.day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d.day % 10, "th")
    return rng.choice((
        d.isoformat(),
        f"{d.day:02d}/{d.month:02d}/{d.year}",
        f"{d.day:02d}.{d.month:02d}.{d.year}",
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{d.day}{suffix} of {month} {d.year}",
        f"{month[:3]} {d.day} {d.year}",
        f"{d.day:02d}-{month[:3]}-{d.year}",
    ))


def _format_port(rng: random.Random, code: str) -> str:
    name = PORTS[code]
    return rng.choice((code, name, name, f"{name} ({code})", f"{code} - {name}"))


def _format_equipment(rng: random.Random, ctype: str, n: int) -> str:
    t = rng.choice(CONTAINER_PHRASES[ctype])
    unit = "container" if n == 1 else "containers"
    return rng.choice((f"{n} x {t}", f"{n}x {t}", f"{t} x{n}",
                       f"{_NUM_WORDS[n]} {t} {unit}", f"{n} x {t} {unit}"))


def _sample_booking(rng: random.Random) -> dict[str, Any]:
    origin, destination = rng.sample(sorted(PORTS), 2)
    ctype = rng.choices(CONTAINER_TYPES, weights=(3, 3, 4, 1, 1))[0]
    date: Optional[str] = None
    if rng.random() < 0.78:
        date = (_DATE_START + _dt.timedelta(days=rng.randrange(_DATE_DAYS))).isoformat()
    commodity: Optional[str] = None
    if rng.random() < 0.8:
        commodity = rng.choice(REEFER_COMMODITIES if ctype.endswith("RF") else DRY_COMMODITIES)
    return {"carrier": rng.choice(CARRIERS), "origin": origin, "destination": destination,
            "departure_date": date, "container_type": ctype,
            "container_count": rng.choices(range(1, 11), weights=(6, 6, 5, 4, 3, 2, 2, 1, 1, 1))[0],
            "commodity": commodity}


def _signature(rng: random.Random, first: str, last: str, company: str) -> list[str]:
    lines = [rng.choice(_SIGNOFFS), first if rng.random() < 0.3 else f"{first} {last}"]
    if rng.random() < 0.7:
        lines.append(company)
    if rng.random() < 0.5:
        phone = rng.choice(_PHONES).format(f"{rng.randrange(10000):04d}")
        lines.append(f"{rng.choice(('Tel:', 'T:', 'Mob.'))} {phone}")
    return lines


def _render_email(rng: random.Random, b: dict[str, Any]) -> str:
    """Write one email whose content determines booking ``b`` exactly."""
    first, last, company = rng.choice(_FIRST), rng.choice(_LAST), rng.choice(_COMPANIES)
    carrier = rng.choice(CARRIER_VARIANTS[b["carrier"]])
    o, d = _format_port(rng, b["origin"]), _format_port(rng, b["destination"])
    eq = _format_equipment(rng, b["container_type"], b["container_count"])
    date_s = _format_date(rng, _dt.date.fromisoformat(b["departure_date"])) if b["departure_date"] else None
    com = b["commodity"]
    style = rng.choices(("prose", "bullets", "terse"), weights=(5, 3, 1))[0]

    if style == "terse":
        parts = [f"{eq} {o} to {d}", carrier]
        if date_s:
            parts.append(f"ETD {date_s}")
        if com:
            parts.append(com)
        head = [f"Need {', '.join(parts)}.", f"{rng.choice(('Thanks', 'Thx', 'Cheers'))}, {first}"]
        lines = head if rng.random() < 0.5 else head[:1] + _signature(rng, first, last, company)[1:]
        body = "\n".join(lines)
    else:
        greeting = rng.choice(_GREETINGS).format(rcpt=rng.choice(_FIRST))
        out: list[str] = [greeting, ""] if greeting else []
        if style == "prose":
            inline = rng.random() < 0.4
            car = f" {rng.choice(('with', 'on'))} {carrier}" if inline else ""
            route = rng.choice(_ROUTES).format(o=o, d=d)
            extra = [] if inline else [rng.choice(_CARRIER_SENT).format(c=carrier)]
            if date_s:
                extra.append(rng.choice(_DATE_SENT).format(d=date_s))
            elif rng.random() < 0.5:
                extra.append(rng.choice(_NO_DATE_SENT))
            if com:
                extra.append(rng.choice(_COMMODITY_SENT).format(c=com))
            elif rng.random() < 0.3:
                extra.append("Commodity details to follow.")
            rng.shuffle(extra)
            sents = [rng.choice(_MAIN).format(eq=eq, car=car, route=route)] + extra
            sents += [_filler(rng) for _ in range(rng.choice((0, 1, 1, 2, 2)))]
            if rng.random() < 0.6:
                sents.insert(0, rng.choice(_OPENERS))
            out.append(" ".join(dict.fromkeys(sents)))
        else:
            bullet = rng.choice(("-", "*", "\u2022"))
            items = [("carrier", carrier), ("origin", o), ("destination", d), ("equipment", eq)]
            if date_s:
                items.append(("date", date_s))
            elif rng.random() < 0.5:
                items.append(("date", "TBC"))
            if com:
                items.append(("commodity", com))
            if rng.random() < 0.5:
                rng.shuffle(items)
            intro = rng.choice(_BULLET_INTROS)
            if rng.random() < 0.5:
                intro = f"{rng.choice(_OPENERS)} {intro}"
            out += [_typo(rng, intro) if rng.random() < 0.1 else intro, ""]
            out += [f"{bullet} {rng.choice(_LABELS[k])}: {v}" for k, v in items]
            if rng.random() < 0.6:
                out += ["", _filler(rng)]
        out += [""] + _signature(rng, first, last, company)
        body = "\n".join(out)

    if rng.random() < 0.18:  # forwarded header; its date is always 2025
        sent = _dt.date(2025, 6, 1) + _dt.timedelta(days=rng.randrange(214))
        hh, mm = rng.randint(7, 18), rng.randrange(60)
        label = rng.choice(("Date:", "Sent:"))
        wday, month = _WEEKDAYS[sent.weekday()], _MONTHS[sent.month - 1]
        when = (f"{wday[:3]}, {sent.day} {month[:3]} {sent.year} {hh:02d}:{mm:02d}" if label == "Date:"
                else f"{wday}, {month} {sent.day}, {sent.year} {hh % 12 or 12}:{mm:02d} "
                     f"{'AM' if hh < 12 else 'PM'}")
        domain = company.split()[0].lower() + "-" + company.split()[1].lower() + ".com"
        subject = rng.choice(_SUBJECTS).format(ref=rng.randrange(10000, 99999))
        header = [rng.choice(_FWD_NOTES), "", "---------- Forwarded message ---------",
                  f"From: {first} {last} <{first.lower()}.{last.lower()}@{domain}>",
                  f"{label} {when}", f"Subject: {subject}", ""]
        body = "\n".join(header) + "\n" + body
    return body


def _generate_unique(rng: random.Random, n: int) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    while len(out) < n:
        booking = _sample_booking(rng)
        email = _render_email(rng, booking)
        if email not in seen:
            seen.add(email)
            out.append({"email": email, "booking": booking})
    return out


def generate(n: int, seed: int = 0) -> list[dict]:
    """Return ``n`` examples ``{"email": str, "booking": {field: value-or-None}}``.

    Email texts are unique within the result; output depends only on ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _generate_unique(random.Random(seed), n)


def generate_splits(seed: int = 0, train: int = 400, val: int = 50,
                    test: int = 100) -> dict[str, list[dict]]:
    """Deterministic ``{"train", "val", "test"}`` splits with no email text shared."""
    if min(train, val, test) < 0:
        raise ValueError("split sizes must be >= 0")
    pool = generate(train + val + test, seed)
    return {"train": pool[:train], "val": pool[train:train + val],
            "test": pool[train + val:]}


def booking_json(booking: dict) -> str:
    """Canonical compact JSON of a booking (keys in ``FIELDS`` order) - the training target."""
    return json.dumps({k: booking.get(k) for k in FIELDS}, ensure_ascii=False)
