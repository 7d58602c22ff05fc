"""Built-in dataset ``shipping-emails``: freight booking emails -> booking JSON.

Synthetic emails of the kind a logistics company receives ("please book 2 x
40HC with MSC from Shanghai to Rotterdam, ETD 14/03/2026 ..."), each paired
with the structured booking a booking system needs.  The task is small enough
for a ~135M-parameter chat model to learn from a few hundred examples, while
showing the surface variety of real mail: carrier spelling variants, ports as
UN/LOCODE, city name or both, many date formats, container types as codes,
trade synonyms (40HQ, 20DV) or words, counts as digits or words; prose, bullet
lists, labelled booking forms (POL/POD, shipper, consignee, incoterms, weight),
terse one-liners (sometimes typed all in lower case); and noise around the
booking: forwarded headers, reply threads with the request quoted below,
amendments that change the count or the date, signatures with other company
names, addresses, phone numbers and office-closure dates, and typos in filler
text.

Every target value is recoverable from the email text alone:

* a port written by name alone is one of the ``PORTS`` table; every port of
  ``CODED_PORTS`` is written with its UN/LOCODE (alone or next to its name),
  so the code of a port outside ``PORTS`` is always there to copy;
* the departure date always includes the year and is introduced by a cue
  ("ETD", "departing", "sailing", "ready to ship on", "departure"); numeric
  dates are day-first (dd/mm/yyyy or dd.mm.yyyy), never US mm/dd.  Any other
  date sits on a line a reader knows is not the departure: a "Sent:"/"Date:"
  header, an "On ... wrote:" line, an office-closure note, or an amendment's
  "(previously ...)";
* an amendment names the new value as the one that holds ("make it 3 x 40HC
  instead of 2", "change the ETD to ... (previously ...)"); the quoted request
  below it may still show the old count;
* company names in signatures, shipper and consignee lines never contain a
  carrier, port or commodity name;
* a missing date or commodity is either not mentioned or marked TBC -> null;
  commodities are lower case in the target however the email capitalises them;
* typos are only injected into filler sentences, never into values.

``catalog/data/handwritten_bookings.jsonl`` is a second, hand-written test set
(see ``HANDWRITTEN_BOOKINGS``): it is for evaluation only and must never be used
to train, nor to tune this generator against.

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
from pathlib import Path
from typing import Any, Optional

FIELDS: tuple[str, ...] = ("carrier", "origin", "destination", "departure_date",
                           "container_type", "container_count", "commodity")
REQUIRED_FIELDS: tuple[str, ...] = ("carrier", "origin", "destination",
                                    "container_type", "container_count")
OPTIONAL_FIELDS: tuple[str, ...] = ("departure_date", "commodity")

# Hand-written emails for evaluation only: never train on them, never tune the generator against them.
HANDWRITTEN_BOOKINGS: Path = Path(__file__).parent / "data" / "handwritten_bookings.jsonl"

# Ports that may be written by name alone (the model learns their codes; half the time they are
# written so, as people write ports) ...
PORTS: dict[str, str] = {
    "CNSHA": "Shanghai", "NLRTM": "Rotterdam", "DEHAM": "Hamburg",
    "SGSIN": "Singapore", "USLAX": "Los Angeles", "USNYC": "New York",
    "GBFXT": "Felixstowe", "BEANR": "Antwerp", "JPTYO": "Tokyo",
    "KRPUS": "Busan", "AEJEA": "Jebel Ali", "INNSA": "Nhava Sheva",
}
# ... and ports always written with their UN/LOCODE (the model learns to copy a code it has not seen).
CODED_PORTS: dict[str, str] = {
    "CNNGB": "Ningbo", "CNSZX": "Shenzhen", "HKHKG": "Hong Kong", "USSAV": "Savannah",
    "CNTAO": "Qingdao", "CNXMN": "Xiamen", "THLCH": "Laem Chabang", "MYPKG": "Port Klang",
    "IDJKT": "Jakarta", "LKCMB": "Colombo", "PKKHI": "Karachi", "SAJED": "Jeddah",
    "EGPSD": "Port Said", "TRMER": "Mersin", "ESVLC": "Valencia", "ESALG": "Algeciras",
    "FRLEH": "Le Havre", "GBSOU": "Southampton", "ITSPE": "La Spezia", "USHOU": "Houston",
    "USOAK": "Oakland", "USSEA": "Seattle", "CAVAN": "Vancouver", "MXZLO": "Manzanillo",
    "AUMEL": "Melbourne", "ZADUR": "Durban", "MAPTM": "Tanger Med", "PABLB": "Balboa",
}
ALL_PORTS: dict[str, str] = {**PORTS, **CODED_PORTS}
COUNTRIES: dict[str, str] = {
    "AE": "UAE", "AU": "Australia", "BE": "Belgium", "CA": "Canada", "CN": "China", "DE": "Germany",
    "EG": "Egypt", "ES": "Spain", "FR": "France", "GB": "UK", "HK": "Hong Kong", "ID": "Indonesia",
    "IN": "India", "IT": "Italy", "JP": "Japan", "KR": "South Korea", "LK": "Sri Lanka", "MA": "Morocco",
    "MX": "Mexico", "MY": "Malaysia", "NL": "Netherlands", "PA": "Panama", "PK": "Pakistan",
    "SA": "Saudi Arabia", "SG": "Singapore", "TH": "Thailand", "TR": "Turkey", "US": "USA", "ZA": "South Africa",
}

CARRIERS: tuple[str, ...] = ("Maersk", "MSC", "CMA CGM", "Hapag-Lloyd", "COSCO", "Evergreen",
                             "ONE", "HMM", "ZIM", "Yang Ming")
CONTAINER_TYPES: tuple[str, ...] = ("20GP", "40GP", "40HC", "20RF", "40RF")

# How each canonical carrier may be written in an email (first = canonical).
CARRIER_VARIANTS: dict[str, tuple[str, ...]] = {
    "Maersk": ("Maersk", "Maersk Line", "MAERSK"),
    "MSC": ("MSC", "Mediterranean Shipping Co"),
    "CMA CGM": ("CMA CGM", "CMA-CGM"),
    "Hapag-Lloyd": ("Hapag-Lloyd", "Hapag Lloyd"),
    "COSCO": ("COSCO", "Cosco Shipping"),
    "Evergreen": ("Evergreen", "Evergreen Line"),
    "ONE": ("ONE", "Ocean Network Express"),  # upper case: "one" is a count
    "HMM": ("HMM", "Hyundai Merchant Marine"),
    "ZIM": ("ZIM", "Zim"),
    "Yang Ming": ("Yang Ming", "Yang Ming Line"),
}
# Fixed phrasings per container code (first = the code itself), trade synonyms included.
CONTAINER_PHRASES: dict[str, tuple[str, ...]] = {
    "20GP": ("20GP", "20ft dry", "20' dry", "20ft standard", "twenty-foot dry", "20DV", "20' DC"),
    "40GP": ("40GP", "40ft dry", "40' dry", "40ft standard", "forty-foot dry", "40DV", "40' DC"),
    "40HC": ("40HC", "40ft high cube", "40' HC", "40 foot high cube", "forty-foot high cube", "40HQ",
             "40' HQ"),
    "20RF": ("20RF", "20ft reefer", "20' reefer", "20 foot reefer", "20' RF"),
    "40RF": ("40RF", "40ft reefer", "40' reefer", "40 foot reefer", "forty-foot reefer", "40' RF"),
}
DRY_COMMODITIES: tuple[str, ...] = (
    "furniture", "auto parts", "textiles", "electronics", "machinery", "toys",
    "ceramic tiles", "plastic resin", "paper rolls", "steel coils", "garments", "footwear",
    "kitchenware", "glassware", "wine", "olive oil", "canned tomatoes", "rice", "cotton yarn",
    "sporting goods", "hand tools", "mattresses", "carpets", "aluminium profiles", "copper wire",
    "marble blocks", "fertiliser", "cocoa beans", "spices", "bathroom fittings", "packaging materials")
REEFER_COMMODITIES: tuple[str, ...] = (
    "frozen fish", "frozen chicken", "chilled fruit", "frozen shrimp", "chilled meat", "frozen pork",
    "chilled lamb", "fresh bananas", "frozen vegetables", "ice cream", "fresh avocados", "frozen berries")
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
# No company name holds a carrier, port or commodity name: those words must stay unambiguous.
_COMPANIES = ("Brightline Trading Ltd", "Nordwind Imports GmbH", "Sunrise Home Goods",
              "Kestrel Components", "Alpine Retail Group", "Tidewater Supplies",
              "Blue Harbour Distribution", "Meridian Wholesale", "Oakvale Industries",
              "Pioneer Trade Partners", "Greenfield Agro Exports", "Silverline Logistics",
              "Redwood Manufacturing Co", "Atlas Freight Services", "Lotus Foods Pvt Ltd",
              "Cedar & Stone Interiors", "Polaris Instruments Inc", "Harvest Moon Produce")
_PHONES = ("+44 20 7946 {0}", "+49 40 3021 {0}", "+31 10 2845 {0}", "+65 6123 {0}",
           "+1 212 555 {0}", "+971 4 339 {0}", "+86 21 6288 {0}", "+91 22 4012 {0}")
# Street addresses in cities that are not ports of either table.
_ADDRESSES = ("Unit 4, Riverside Park, Leeds LS10 1PZ", "Koenigstrasse 12, 70173 Stuttgart",
              "221 W Monroe St, Chicago, IL 60606", "12 rue de la Republique, 69002 Lyon",
              "Via Roma 18, 20121 Milano", "Calle de Alcala 45, 28014 Madrid",
              "Lindenstrasse 3, 40233 Duesseldorf", "Plot 7, MIDC, Pune 411019")
_DISCLAIMERS = ("This email and any attachments are confidential and intended solely for the addressee.",
                "Please consider the environment before printing this email.",
                "All business is undertaken subject to our standard trading conditions.")

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
_PARTY_SENT = ("Shipper is {s}.", "The shipper will be {s}, consignee {c}.", "Consignee: {c}.")
_BULLET_INTROS = ("Please book the following:", "Booking request below, thanks.",
                  "Can you please arrange space as per below:", "New booking details:")
_LABELS = {"carrier": ("Carrier", "Line", "Shipping line", "Preferred carrier"),
           "origin": ("POL", "Origin", "Port of loading", "Load port"),
           "destination": ("POD", "Destination", "Port of discharge", "Discharge port"),
           "date": ("ETD", "Departure", "Sailing date", "Requested ETD"),
           "equipment": ("Equipment", "Containers", "Container", "Eqpt"),
           "commodity": ("Commodity", "Cargo", "Goods", "Description of goods")}
_FORM_TITLES = ("BOOKING REQUEST", "Booking form", "Booking details", "NEW BOOKING - please confirm", "")
_INCOTERMS = ("FOB", "CIF", "EXW", "CFR", "DAP")
_FWD_NOTES = ("FYI, see request below.", "Forwarding this one, can you handle?",
              "Please see below from the customer.", "Can someone pick this up?")
_REPLY_NOTES = ("Noted, we will book and revert with the booking number.", "Thanks, booking this now.",
                "Received, will confirm shortly.", "Please go ahead, approved on our side.")
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
    """Render a date in one of twelve unambiguous, year-bearing, day-first formats."""
    month, wday = _MONTHS[d.month - 1], _WEEKDAYS[d.weekday()]
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
        f"{d.day:02d}-{month[:3].upper()}-{d.year}",
        f"{d.day} {month[:3]} {d.year}",
        f"{wday[:3]} {d.day} {month[:3]} {d.year}",
        f"{d.day}{suffix} {month} {d.year}",
    ))


def _random_date(rng: random.Random) -> _dt.date:
    return _DATE_START + _dt.timedelta(days=rng.randrange(_DATE_DAYS))


def _format_port(rng: random.Random, code: str) -> str:
    name, country = ALL_PORTS[code], COUNTRIES[code[:2]]
    coded = (code, f"{name} ({code})", f"{code} - {name}", f"{code} ({name})", f"{name}, {country} ({code})")
    if code in CODED_PORTS:
        return rng.choice(coded)
    return rng.choice(coded + (name, name, name, name, f"{name}, {country}"))


def _format_equipment(rng: random.Random, ctype: str, n: int) -> str:
    t = rng.choice(CONTAINER_PHRASES[ctype])
    unit = "container" if n == 1 else "containers"
    forms = (f"{n} x {t}", f"{n}x {t}", f"{t} x{n}", f"{_NUM_WORDS[n]} {t} {unit}", f"{n} x {t} {unit}")
    if " " not in t and t[0].isdigit():  # codes are often run together: 2x40HC
        forms += (f"{n}x{t}",)
    return rng.choice(forms)


def _format_commodity(rng: random.Random, commodity: str, labelled: bool) -> str:
    """The commodity as written; in labelled fields it may be capitalised or carry an HS code."""
    if not labelled:
        return commodity
    text = commodity.capitalize() if rng.random() < 0.4 else commodity
    if rng.random() < 0.2:
        text += f" (HS {rng.randrange(1000, 9999)})"
    return text


def _pick_port(rng: random.Random) -> str:
    """A port: two in three from PORTS (name alone allowed), one in three from CODED_PORTS."""
    return rng.choice(sorted(PORTS) if rng.random() < 2 / 3 else sorted(CODED_PORTS))


def _sample_booking(rng: random.Random) -> dict[str, Any]:
    origin = _pick_port(rng)
    destination = origin
    while destination == origin:
        destination = _pick_port(rng)
    ctype = rng.choices(CONTAINER_TYPES, weights=(3, 3, 4, 1, 1))[0]
    date: Optional[str] = None
    if rng.random() < 0.78:
        date = _random_date(rng).isoformat()
    commodity: Optional[str] = None
    if rng.random() < 0.8:
        commodity = rng.choice(REEFER_COMMODITIES if ctype.endswith("RF") else DRY_COMMODITIES)
    return {"carrier": rng.choices(CARRIERS, weights=(3, 3, 3, 3, 3, 3, 1, 1, 1, 1))[0],
            "origin": origin, "destination": destination,
            "departure_date": date, "container_type": ctype,
            "container_count": rng.choices(range(1, 11), weights=(6, 6, 5, 4, 3, 2, 2, 1, 1, 1))[0],
            "commodity": commodity}


def _signature(rng: random.Random, first: str, last: str, company: str, departure: Optional[str]) -> list[str]:
    """Sign-off, name, and some of: company, address, phone, office-closure note, disclaimer."""
    lines = [rng.choice(_SIGNOFFS), first if rng.random() < 0.3 else f"{first} {last}"]
    if rng.random() < 0.7:
        lines.append(company)
    if rng.random() < 0.25:
        lines.append(rng.choice(_ADDRESSES))
    if rng.random() < 0.5:
        phone = rng.choice(_PHONES).format(f"{rng.randrange(10000):04d}")
        lines.append(f"{rng.choice(('Tel:', 'T:', 'Mob.', 'Direct:'))} {phone}")
    if rng.random() < 0.12:  # a date that is not the departure, on a line that says what it is
        closed = _random_date(rng)
        if closed.isoformat() != departure:
            lines.append(f"Please note our office is closed on {_format_date(rng, closed)}.")
    if rng.random() < 0.15:
        lines.append(rng.choice(_DISCLAIMERS))
    return lines


def _fields(rng: random.Random, b: dict[str, Any], labelled: bool) -> dict[str, Optional[str]]:
    """The booking's values as written in this email (carrier variant, port and date formats ...)."""
    date = _format_date(rng, _dt.date.fromisoformat(b["departure_date"])) if b["departure_date"] else None
    return {"carrier": rng.choice(CARRIER_VARIANTS[b["carrier"]]),
            "origin": _format_port(rng, b["origin"]), "destination": _format_port(rng, b["destination"]),
            "equipment": _format_equipment(rng, b["container_type"], b["container_count"]),
            "date": date,
            "commodity": _format_commodity(rng, b["commodity"], labelled) if b["commodity"] else None}


def _prose(rng: random.Random, v: dict[str, Optional[str]], parties: tuple[str, str]) -> list[str]:
    inline = rng.random() < 0.4
    car = f" {rng.choice(('with', 'on'))} {v['carrier']}" if inline else ""
    route = rng.choice(_ROUTES).format(o=v["origin"], d=v["destination"])
    extra = [] if inline else [rng.choice(_CARRIER_SENT).format(c=v["carrier"])]
    if v["date"]:
        extra.append(rng.choice(_DATE_SENT).format(d=v["date"]))
    elif rng.random() < 0.5:
        extra.append(rng.choice(_NO_DATE_SENT))
    if v["commodity"]:
        extra.append(rng.choice(_COMMODITY_SENT).format(c=v["commodity"]))
    elif rng.random() < 0.3:
        extra.append("Commodity details to follow.")
    if rng.random() < 0.2:
        extra.append(rng.choice(_PARTY_SENT).format(s=parties[0], c=parties[1]))
    rng.shuffle(extra)
    sents = [rng.choice(_MAIN).format(eq=v["equipment"], car=car, route=route)] + extra
    sents += [_filler(rng) for _ in range(rng.choice((0, 1, 1, 2, 2)))]
    if rng.random() < 0.6:
        sents.insert(0, rng.choice(_OPENERS))
    return [" ".join(dict.fromkeys(sents))]


def _items(rng: random.Random, v: dict[str, Optional[str]]) -> list[tuple[str, str]]:
    """(field, value) pairs of a list or form, TBC for some missing dates, in a stable or shuffled order."""
    items = [("carrier", v["carrier"]), ("origin", v["origin"]), ("destination", v["destination"]),
             ("equipment", v["equipment"])]
    if v["date"]:
        items.append(("date", v["date"]))
    elif rng.random() < 0.5:
        items.append(("date", "TBC"))
    if v["commodity"]:
        items.append(("commodity", v["commodity"]))
    if rng.random() < 0.5:
        rng.shuffle(items)
    return items


def _bullets(rng: random.Random, v: dict[str, Optional[str]]) -> list[str]:
    numbered = rng.random() < 0.2
    bullet = rng.choice(("-", "*", "\u2022"))
    intro = rng.choice(_BULLET_INTROS)
    if rng.random() < 0.5:
        intro = f"{rng.choice(_OPENERS)} {intro}"
    out = [_typo(rng, intro) if rng.random() < 0.1 else intro, ""]
    for i, (k, value) in enumerate(_items(rng, v), 1):
        out.append(f"{f'{i})' if numbered else bullet} {rng.choice(_LABELS[k])}: {value}")
    if rng.random() < 0.6:
        out += ["", _filler(rng)]
    return out


def _form(rng: random.Random, b: dict[str, Any], v: dict[str, Optional[str]], parties: tuple[str, str]) -> list[str]:
    """A labelled booking form: aligned labels, POL/POD, and fields a booking does not need."""
    rows = [(rng.choice(_LABELS[k]), value) for k, value in _items(rng, v)]
    if rng.random() < 0.3:  # ports on one line
        rows = [r for r in rows if r[0] not in _LABELS["origin"] + _LABELS["destination"]]
        rows.insert(1, ("POL / POD", f"{v['origin']} / {v['destination']}"))
    extras = [("Shipper", parties[0]), ("Consignee", parties[1]),
              ("Incoterms", rng.choice(_INCOTERMS)),
              ("Gross weight", f"{rng.randrange(4, 27) * 1000:,} kg per container"),
              ("Customer ref", f"PO-{rng.randrange(10000, 99999)}")]
    if b["container_type"].endswith("RF"):
        extras.append(("Temperature", rng.choice(("-18C", "-20 C", "+2C", "+4 C"))))
    for extra in rng.sample(extras, rng.randrange(0, 4)):
        rows.insert(rng.randrange(len(rows) + 1), extra)
    width = max(len(label) for label, _ in rows) + 1
    sep = rng.choice((": ", " : ", "dots", "pad"))
    if sep == "dots":
        lines = [f"{label} {'.' * (width - len(label) + 2)} {value}" for label, value in rows]
    elif sep == "pad":
        lines = [f"{(label + ':').ljust(width + 2)}{value}" for label, value in rows]
    else:
        lines = [f"{label}{sep}{value}" for label, value in rows]
    title = rng.choice(_FORM_TITLES)
    return ([title, ""] if title else []) + lines


def _terse(rng: random.Random, v: dict[str, Optional[str]], first: str) -> str:
    parts = [f"{v['equipment']} {v['origin']} {rng.choice(('to', '-', '->'))} {v['destination']}", v["carrier"]]
    if v["date"]:
        parts.append(f"ETD {v['date']}")
    if v["commodity"]:
        parts.append(v["commodity"])
    line = f"{rng.choice(('Need', 'Pls book', 'Book'))} {', '.join(parts)}."
    if rng.random() < 0.25 and v["carrier"] != "ONE":  # typed in a hurry, all lower case ("one" is a count)
        line = line.lower()
    return line + "\n" + f"{rng.choice(('Thanks', 'Thx', 'Cheers'))}, {first}"


def _render_booking(rng: random.Random, b: dict[str, Any], who: tuple[str, str, str]) -> str:
    """The request itself: prose, bullets, a form or a terse line, with greeting and signature."""
    first, last, company = who
    style = rng.choices(("prose", "bullets", "form", "terse"), weights=(4, 3, 3, 1))[0]
    v = _fields(rng, b, labelled=style in ("bullets", "form"))
    parties = tuple(rng.sample([c for c in _COMPANIES if c != company], 2))
    if style == "terse":
        return _terse(rng, v, first)
    greeting = rng.choice(_GREETINGS).format(rcpt=rng.choice(_FIRST))
    out: list[str] = [greeting, ""] if greeting else []
    if style == "prose":
        out += _prose(rng, v, parties)
    elif style == "bullets":
        out += _bullets(rng, v)
    else:
        out += _form(rng, b, v, parties)
    return "\n".join(out + [""] + _signature(rng, first, last, company, b["departure_date"]))


def _sent_before(rng: random.Random, departure: Optional[str]) -> _dt.date:
    """When an earlier message was sent: 1-60 days before the departure (or in 2025 without one)."""
    if departure is None:
        return _dt.date(2025, 6, 1) + _dt.timedelta(days=rng.randrange(214))
    return _dt.date.fromisoformat(departure) - _dt.timedelta(days=rng.randint(1, 60))


def _forwarded(rng: random.Random, body: str, who: tuple[str, str, str], departure: Optional[str]) -> str:
    first, last, company = who
    sent = _sent_before(rng, departure)
    hh, mm = rng.randint(7, 18), rng.randrange(60)
    label = rng.choice(("Date:", "Sent:"))
    wday, month = _WEEKDAYS[sent.weekday()], _MONTHS[sent.month - 1]
    when = (f"{wday[:3]}, {sent.day} {month[:3]} {sent.year} {hh:02d}:{mm:02d}" if label == "Date:"
            else f"{wday}, {month} {sent.day}, {sent.year} {hh % 12 or 12}:{mm:02d} {'AM' if hh < 12 else 'PM'}")
    domain = "-".join(company.lower().replace("&", "and").split()[:2]) + ".com"
    subject = rng.choice(_SUBJECTS).format(ref=rng.randrange(10000, 99999))
    header = [rng.choice(_FWD_NOTES), "", "---------- Forwarded message ---------",
              f"From: {first} {last} <{first.lower()}.{last.lower()}@{domain}>",
              f"{label} {when}", f"Subject: {subject}", ""]
    return "\n".join(header) + "\n" + body


def _reply(rng: random.Random, body: str, who: tuple[str, str, str], departure: Optional[str], note: str) -> str:
    """`note` on top of the request, quoted as mail clients quote it."""
    first, last, _ = who
    sent = _sent_before(rng, departure)
    when = f"{_WEEKDAYS[sent.weekday()][:3]}, {sent.day} {_MONTHS[sent.month - 1][:3]} {sent.year}"
    quoted = "\n".join(f"> {line}".rstrip() for line in body.splitlines())
    return f"{note}\n\nOn {when}, {first} {last} wrote:\n{quoted}"


def _amended_count(rng: random.Random, b: dict[str, Any], who: tuple[str, str, str]) -> str:
    """A correction on top of the request as first sent, with another count: the new count holds."""
    old = rng.choice([n for n in range(1, 11) if n != b["container_count"]])
    body = _render_booking(rng, {**b, "container_count": old}, who)
    new = _format_equipment(rng, b["container_type"], b["container_count"])
    note = rng.choice(("Sorry, small change: please make it {new} instead of {old}. Rest as below.",
                       "Amendment: the customer now needs {new} (not {old}), everything else unchanged."))
    return _reply(rng, body, who, b["departure_date"],
                  note.format(new=new, old=_format_equipment(rng, b["container_type"], old)))


def _amended_date(rng: random.Random, b: dict[str, Any], who: tuple[str, str, str]) -> str:
    """The request with its final date, below an amendment line that also names the old one."""
    new_date = _dt.date.fromisoformat(b["departure_date"])
    old = new_date + _dt.timedelta(days=rng.choice((-14, -7, 7, 14)))
    note = (f"Amendment to booking {rng.randrange(10000, 99999)}: please change the ETD to "
            f"{_format_date(rng, new_date)} (previously {_format_date(rng, old)}).")
    return note + "\n\n" + _render_booking(rng, b, who)


def _render_email(rng: random.Random, b: dict[str, Any]) -> str:
    """Write one email whose content determines booking ``b`` exactly."""
    who = (rng.choice(_FIRST), rng.choice(_LAST), rng.choice(_COMPANIES))
    wrap = rng.choices(("none", "forwarded", "reply", "amended"), weights=(66, 14, 10, 10))[0]
    if wrap == "amended":
        if b["departure_date"] and rng.random() < 0.4:
            return _amended_date(rng, b, who)
        return _amended_count(rng, b, who)
    body = _render_booking(rng, b, who)
    if wrap == "forwarded":
        return _forwarded(rng, body, who, b["departure_date"])
    if wrap == "reply":
        return _reply(rng, body, who, b["departure_date"], rng.choice(_REPLY_NOTES))
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
