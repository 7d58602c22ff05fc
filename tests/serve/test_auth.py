"""Tenants and API keys: keygen -> keys file -> load_keys -> authenticate, per-tenant model grants,
the open ring, every keys-file error naming file/entry/field, constant-time matching, bearer parsing."""

import hashlib
import hmac
import os

import pytest

from peftkit.errors import KeysFileError, PeftkitError
from peftkit.serve.auth import (
    KeyRing,
    Principal,
    bearer_key,
    hash_key,
    keygen_command,
    load_keys,
    new_key,
)

HEADER = "# peftkit serve --keys keys.yaml\nkeys:\n"
HASH_A = hashlib.sha256(b"pk-a").hexdigest()
HASH_B = hashlib.sha256(b"pk-b").hexdigest()


def write_keys(tmp_path, text, name="keys.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def ring_and_keys(tmp_path):
    """A file with three keys made by new_key: acme (two adapters), globex ("*"), ops (admin only)."""
    acme_key, acme = new_key("acme", ["extract", "chat"])
    globex_key, globex = new_key("globex", ["*"])
    ops_key, ops = new_key("ops", admin=True)
    path = write_keys(tmp_path, HEADER + acme + globex + ops)
    return load_keys(path), {"acme": acme_key, "globex": globex_key, "ops": ops_key}


def test_round_trip_new_key_file_load_authenticate(ring_and_keys, tmp_path):
    ring, keys = ring_and_keys
    assert not ring.open
    assert ring.source == tmp_path / "keys.yaml"
    assert len(ring.entries) == 3
    assert ring.warnings == ()  # mode 0600, three keys
    assert ring.authenticate(keys["acme"]) == Principal("acme", frozenset({"extract", "chat"}), admin=False)
    assert ring.authenticate(keys["globex"]) == Principal("globex", None, admin=False)
    assert ring.authenticate(keys["ops"]) == Principal("ops", frozenset(), admin=True)


def test_the_file_holds_hashes_not_keys(ring_and_keys, tmp_path):
    _, keys = ring_and_keys
    text = (tmp_path / "keys.yaml").read_text()
    for key in keys.values():
        assert key.startswith("pk-") and len(key) > 40
        assert key not in text
        assert hash_key(key) in text


def test_wrong_or_missing_key_is_refused(ring_and_keys):
    ring, keys = ring_and_keys
    assert ring.authenticate("pk-not-a-key") is None
    assert ring.authenticate(keys["acme"][:-1]) is None
    assert ring.authenticate(keys["acme"] + "x") is None
    assert ring.authenticate(hash_key(keys["acme"])) is None  # the stored hash is not a key
    assert ring.authenticate("") is None
    assert ring.authenticate(None) is None


def test_a_tenant_may_not_use_another_tenants_adapter(tmp_path):
    a_key, a = new_key("acme", ["acme-extract", "smollm2-135m"])
    b_key, b = new_key("beta", ["beta-chat"])
    ring = load_keys(write_keys(tmp_path, HEADER + a + b))
    acme, beta = ring.authenticate(a_key), ring.authenticate(b_key)
    assert acme.may_use("acme-extract") and acme.may_use("smollm2-135m")
    assert not acme.may_use("beta-chat")
    assert beta.may_use("beta-chat")
    assert not beta.may_use("acme-extract") and not beta.may_use("smollm2-135m")


def test_star_grants_every_model_in_both_spellings(tmp_path):
    path = write_keys(tmp_path, HEADER + f'  - tenant: a\n    sha256: {HASH_A}\n    adapters: "*"\n'
                      f"  - tenant: b\n    sha256: {HASH_B}\n    adapters: ['*']\n")
    ring = load_keys(path)
    for key in ("pk-a", "pk-b"):
        principal = ring.authenticate(key)
        assert principal.adapters is None
        assert principal.may_use("anything") and principal.may_use("smollm2-135m")
        assert not principal.admin


def test_admin_without_adapters_manages_but_uses_no_model(ring_and_keys):
    ring, keys = ring_and_keys
    ops = ring.authenticate(keys["ops"])
    assert ops.admin
    assert not ops.may_use("extract")


def test_open_ring_without_keys_file():
    ring = load_keys(None)
    assert ring.open and ring.source is None and ring.entries == ()
    local = Principal("local", None, admin=True)
    assert ring.authenticate(None) == local
    assert ring.authenticate("anything") == local
    assert ring.authenticate(None).may_use("any-adapter")


def test_an_empty_keys_file_is_not_open_it_refuses_everyone(tmp_path):
    ring = load_keys(write_keys(tmp_path, HEADER))
    assert not ring.open
    assert ring.authenticate("anything") is None
    assert any("no keys" in w for w in ring.warnings)


def test_a_ring_with_entries_but_no_source_is_not_open(ring_and_keys):
    ring, keys = ring_and_keys
    in_memory = KeyRing(entries=ring.entries, source=None)
    assert not in_memory.open
    assert in_memory.authenticate("anything") is None
    assert in_memory.authenticate(keys["acme"]).tenant == "acme"


def entry(tenant="acme", sha=HASH_A, extra="    adapters: [extract]\n"):
    return f"  - tenant: {tenant}\n    sha256: {sha}\n" + extra


BAD_FILES = {
    # id: (file text, substrings the message must hold besides the file name)
    "keys-missing": ("tenants: []\n", ["`keys:`"]),
    "top-level-unknown": (HEADER + entry() + "extra: 1\n", ["unknown top-level", "extra"]),
    "keys-not-a-list": ("keys: {tenant: acme}\n", ["`keys` must be a list", "dict"]),
    "entry-not-mapping": (HEADER + entry() + "  - just-a-string\n", ["keys[1]", "expected a mapping", "str"]),
    "tenant-missing": (HEADER + f"  - sha256: {HASH_A}\n    adapters: [x]\n", ["keys[0].tenant", "missing"]),
    "tenant-empty": (HEADER + entry(tenant='""'), ["keys[0].tenant", "missing"]),
    "tenant-not-simple": (HEADER + entry() + entry(tenant='"acme corp"', sha=HASH_B),
                          ["keys[1].tenant", "'acme corp'", "simple name"]),
    "tenant-too-long": (HEADER + entry(tenant="a" * 65), ["keys[0].tenant", "up to 64"]),
    "sha256-missing": (HEADER + "  - tenant: acme\n    adapters: [x]\n", ["keys[0].sha256", "missing", "peftkit serve keygen"]),
    "sha256-uppercase": (HEADER + entry(sha=HASH_A.upper()), ["keys[0].sha256", "64 lowercase hex", "peftkit serve keygen"]),
    "sha256-short": (HEADER + entry(sha=HASH_A[:40]), ["keys[0].sha256", "64 lowercase hex"]),
    "sha256-is-the-key": (HEADER + entry(sha="pk-secret-key-pasted-here"),
                          ["keys[0].sha256", "looks like the key itself", "never the key", "peftkit serve keygen"]),
    "duplicate-hash": (HEADER + entry() + entry(tenant="other"), ["keys[1].sha256", "same hash as keys[0]"]),
    "adapters-missing": (HEADER + entry(extra=""), ["keys[0].adapters", "missing", '"*"']),
    "adapters-a-number": (HEADER + entry(extra="    adapters: 3\n"), ["keys[0].adapters", "list of model names", "int"]),
    "adapters-a-mapping": (HEADER + entry(extra="    adapters: {a: 1}\n"), ["keys[0].adapters", "list of model names", "dict"]),
    "adapters-a-string": (HEADER + entry(extra="    adapters: extract\n"), ["keys[0].adapters", "list of model names", "str"]),
    "adapter-name-bad": (HEADER + entry(extra='    adapters: [ok, "a b"]\n'), ["keys[0].adapters[1]", "'a b'"]),
    "adapter-star-mixed": (HEADER + entry(extra="    adapters: ['*', x]\n"), ["keys[0].adapters[0]", "stands alone"]),
    "unknown-fields": (HEADER + entry(extra="    adapters: [x]\n    note: hi\n    key: pk-abc\n"),
                       ["keys[0]", "unknown field(s) key, note", "never the key"]),
    "admin-not-bool": (HEADER + entry(extra='    admin: "yes"\n'), ["keys[0].admin", "true or false", "'yes'"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_keys_file_error_names_file_entry_and_field(tmp_path, name):
    text, expected = BAD_FILES[name]
    path = write_keys(tmp_path, text)
    with pytest.raises(KeysFileError) as exc:
        load_keys(path)
    message = str(exc.value)
    assert isinstance(exc.value, PeftkitError)
    assert message.startswith(f"{path}:")
    for part in expected:
        assert part in message, (part, message)


def test_sha256_errors_never_echo_the_value(tmp_path):
    for value in ("pk-secret-key-pasted-here", HASH_A.upper(), HASH_A[:40]):
        with pytest.raises(KeysFileError) as exc:
            load_keys(write_keys(tmp_path, HEADER + entry(sha=value)))
        assert value not in str(exc.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(KeysFileError, match="keys file not found") as exc:
        load_keys(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(exc.value)
    with pytest.raises(KeysFileError, match="not a file"):
        load_keys(tmp_path)


def test_yaml_error_gives_a_position_and_not_the_contents(tmp_path):
    planted = hashlib.sha256(b"planted").hexdigest()
    path = write_keys(tmp_path, HEADER + f"  - tenant: acme\n    sha256: {planted}\n    adapters: [x\n  - {planted}: [\n")
    with pytest.raises(KeysFileError) as exc:
        load_keys(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: not valid YAML at line ")
    assert planted not in message
    assert planted[:16] not in message


def test_bare_star_gets_a_hint_to_quote_it(tmp_path):
    path = write_keys(tmp_path, HEADER + f"  - tenant: acme\n    sha256: {HASH_A}\n    adapters: *\n")
    with pytest.raises(KeysFileError) as exc:
        load_keys(path)
    assert "line 5, column" in str(exc.value)
    assert 'write adapters: "*"' in str(exc.value)


def test_not_utf8_is_an_error_with_a_byte_position(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_bytes(b"keys:\n  - tenant: \xff\n")
    with pytest.raises(KeysFileError, match=r"not UTF-8 text \(byte 18\)"):
        load_keys(path)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_file_others_can_read_is_a_warning_not_an_error(tmp_path):
    path = write_keys(tmp_path, HEADER + entry())
    assert load_keys(path).warnings == ()
    path.chmod(0o644)
    ring = load_keys(path)
    assert ring.authenticate("pk-a").tenant == "acme"
    assert len(ring.warnings) == 1
    assert "0644" in ring.warnings[0] and f"chmod 600 {path}" in ring.warnings[0]


def test_authenticate_compares_with_every_entry_even_after_a_match(tmp_path, monkeypatch):
    hashes = [hashlib.sha256(f"pk-{i}".encode()).hexdigest() for i in range(4)]
    ring = load_keys(write_keys(tmp_path, HEADER + "".join(entry(f"t{i}", h) for i, h in enumerate(hashes))))
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert ring.authenticate("pk-0").tenant == "t0"  # the first entry matches
    assert len(calls) == 4
    assert sorted(b.decode() for _, b in calls) == sorted(hashes)  # each entry once, none twice
    calls.clear()
    assert ring.authenticate("pk-3").tenant == "t3"
    assert len(calls) == 4
    calls.clear()
    assert ring.authenticate("pk-none") is None
    assert len(calls) == 4


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer pk-abc", None, "pk-abc"),
        ("bearer pk-abc", None, "pk-abc"),
        ("BEARER   pk-abc  ", None, "pk-abc"),
        (None, None, None),
        ("", None, None),
        ("Bearer", None, None),
        ("Bearer ", None, None),
        ("Basic dXNlcjpwYXNz", None, None),
        ("Bearer pk-a pk-b", None, None),
        ("pk-abc", None, None),
        (None, "pk-xyz", "pk-xyz"),
        ("Basic dXNlcjpwYXNz", "pk-xyz", "pk-xyz"),
        ("Bearer pk-abc", "pk-xyz", "pk-abc"),
        (None, "  ", None),
    ],
)
def test_bearer_key(authorization, x_api_key, expected):
    assert bearer_key(authorization, x_api_key) == expected


def test_keygen_command_prints_the_key_once_and_an_entry_that_loads(tmp_path):
    text = keygen_command("acme", "extract, chat", admin=False)
    lines = text.splitlines()
    key = lines[0]
    assert key.startswith("pk-") and " " not in key
    assert "shown once: store it now" in text
    assert text.count(key) == 1
    entry_text = text[text.index("  - tenant:"):]
    assert hash_key(key) in entry_text
    ring = load_keys(write_keys(tmp_path, HEADER + entry_text))
    assert ring.authenticate(key) == Principal("acme", frozenset({"extract", "chat"}), admin=False)


def test_keygen_star_and_admin(tmp_path):
    star = keygen_command("globex", "*", admin=False)
    admin = keygen_command("ops", None, admin=True)
    assert 'adapters: "*"' in star
    assert "admin: true" in admin and "adapters" not in admin
    body = HEADER + star[star.index("  - tenant:"):] + admin[admin.index("  - tenant:"):]
    ring = load_keys(write_keys(tmp_path, body))
    assert ring.authenticate(star.splitlines()[0]) == Principal("globex", None, admin=False)
    assert ring.authenticate(admin.splitlines()[0]) == Principal("ops", frozenset(), admin=True)


def test_new_key_quotes_names_yaml_would_misread(tmp_path):
    key, text = new_key("007", ["true", "#x", "org/model:v1"])
    ring = load_keys(write_keys(tmp_path, HEADER + text))
    assert ring.authenticate(key) == Principal("007", frozenset({"true", "#x", "org/model:v1"}), admin=False)


def test_new_keys_differ():
    assert new_key("acme", ["x"])[0] != new_key("acme", ["x"])[0]


@pytest.mark.parametrize(
    ("tenant", "adapters", "admin", "expected"),
    [
        ("acme corp", ["x"], False, "tenant: 'acme corp'"),
        ("acme", None, False, "adapters: missing"),
        ("acme", ["a b"], False, "adapters[0]: 'a b'"),
    ],
)
def test_new_key_refuses_what_load_keys_would_refuse(tenant, adapters, admin, expected):
    with pytest.raises(KeysFileError) as exc:
        new_key(tenant, adapters, admin)
    assert "peftkit serve keygen" in str(exc.value)
    assert expected in str(exc.value)
