"""Signatures, offline, with a local EC P-256 key pair: adapter folders through OpenSSF model-signing,
audit checkpoints as ECDSA over canonical JSON.

    generate_keys(Path("keys"))                        # keys/private.pem (0600) + keys/public.pem
    sign_folder(version / "adapter", version / "adapter.sig", Path("keys/private.pem"))
    verify_folder(version / "adapter", version / "adapter.sig", Path("keys/public.pem"))   # TamperError names the file
    sig = sign_bytes(payload, private)                 # base64 DER ECDSA-SHA256
    verify_bytes(payload, sig, public)                 # True / False

The folder signature is model-signing's own bundle (private-key mode, no Sigstore, no network), so it
verifies with the upstream CLI too:

    model_signing verify key VERSION/adapter --signature VERSION/adapter.sig --public_key keys/public.pem

The signature file is kept beside the folder it signs, never inside it (it would change what is signed).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from peftkit.errors import RegistryError, TamperError
from peftkit.registry.digests import folder_digests, sha256_bytes

PRIVATE_KEY = "private.pem"
PUBLIC_KEY = "public.pem"


def generate_keys(out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write an EC P-256 key pair: OUT/private.pem (PKCS#8, readable by the owner only) and OUT/public.pem."""
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / PRIVATE_KEY, out_dir / PUBLIC_KEY
    if private_path.exists() and not overwrite:
        raise RegistryError(f"{private_path}: a key already exists; choose another --out (a replaced key "
                            "can no longer sign checkpoints that verify against the old public key)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def public_pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: str | Path):
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RegistryError(f"{path}: not an unencrypted PEM private key ({type(exc).__name__}); "
                            "make one with `peftkit keys generate`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RegistryError(f"{path}: expected an EC private key (P-256), got {type(key).__name__}")
    return key


def load_public(path: str | Path):
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise RegistryError(f"{path}: expected an EC public key (P-256), got {type(key).__name__}")
    return key


def key_id(public_key) -> str:
    """sha256 of the public key's PEM: which key signed (recorded beside every signature)."""
    return sha256_bytes(public_pem(public_key))


def sign_bytes(payload: bytes, private_key) -> str:
    return base64.b64encode(private_key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify_bytes(payload: bytes, signature: str, public_key) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_folder(folder: Path, signature: Path, private_key: Path) -> Path:
    """Sign every file of `folder` with model-signing (private-key mode); the bundle goes to `signature`."""
    from model_signing import hashing, signing

    load_private(private_key)  # our message for a wrong or missing key, before model-signing's
    signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        hashing.Config()).sign(folder, signature)
    return signature


def verify_folder(folder: Path, signature: Path, public_key: Path) -> None:
    """Raise TamperError naming the changed, missing or extra file (or a signature from another key)."""
    from model_signing import hashing, verifying

    if not signature.is_file():
        raise TamperError(f"{signature}: missing; the version was signed, so it cannot be verified without it")
    load_public(public_key)
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            hashing.Config()).verify(folder, signature)
    except ValueError:
        raise TamperError(f"{folder}: does not match its signature {signature.name}: "
                          f"{_signed_diff(folder, signature, public_key)}; restore the signed files") from None
    except Exception as exc:  # model-signing raises library-specific errors for a bad bundle or the wrong key
        raise TamperError(f"{folder}: signature {signature.name} does not verify with {public_key} "
                          f"({type(exc).__name__}: {exc}); was it signed with another key?") from None


def _signed_diff(folder: Path, signature: Path, public_key: Path) -> str:
    """Each changed, missing or extra file against the digests the (already authenticated) bundle signs.

    model-signing reports a mismatch as a list of reprs of its digest objects; the signed manifest is read
    here through its verifier so that the message gives file names and hex digests instead."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    manifest = sign_ec_key.Verifier(Path(public_key)).verify(sign_sigstore_pb.Signature.read(Path(signature)))
    signed = {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    actual = folder_digests(folder)
    parts = []
    for rel in sorted(signed.keys() | actual.keys()):
        if rel not in actual:
            parts.append(f"{rel} missing (signed {signed[rel]})")
        elif rel not in signed:
            parts.append(f"{rel} extra, not signed (sha256 {actual[rel]})")
        elif signed[rel] != actual[rel]:
            parts.append(f"{rel} changed (signed {signed[rel]}, found {actual[rel]})")
    return "; ".join(parts) or "the signed manifest does not match"
