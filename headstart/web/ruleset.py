"""The signed ruleset a page evaluates locally when Headstart is slow or unreachable.

``GET /v1/ruleset`` (frontend key) answers with the catalog's flags (default, segment rules,
rollouts), tutorial variants with their segment targeting and the welcome messages by segment,
as a JSON string and its ECDSA P-256 / SHA-256 signature (raw ``r || s``, base64url, what
WebCrypto's ``verify`` takes). ``GET /v1/ruleset/key`` gives the public key as a JWK: a page
pins it (or ships it), so a ruleset cached or served by anyone else is checked before use. The
key is derived from the instance's secret (HKDF), so every replica signs with the same key and
it changes only with the secret.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> key = signing_key(b"secret-for-the-example-0123456789")
>>> signed = sign_ruleset(build_ruleset(load_catalog(DEFAULT_CATALOG)), key)
>>> verify_ruleset(signed, key.public_key())["flags"][0]["id"]
'new_onboarding'
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.catalog import Catalog

#: P-256's group order: a derived scalar must be in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The instance's ruleset signing key, derived from its secret."""
    material = HKDF(
        algorithm=hashes.SHA256(), length=48, salt=None, info=b"headstart ruleset signing"
    ).derive(secret)
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "alg": "ES256",
        "use": "sig",
    }


def build_ruleset(catalog: Catalog) -> dict[str, Any]:
    """What a page needs to decide flags, tutorial variants and the welcome message itself
    from a user's segments (which it keeps from its last decision)."""
    body: dict[str, Any] = {
        "flags": [
            {
                "id": flag.id,
                "default": flag.default,
                "rules": [
                    {"segments": rule.segments, "rollout": rule.rollout, "value": rule.value}
                    for rule in flag.rules
                ],
            }
            for flag in catalog.flags
        ],
        "tutorials": [
            {
                "id": t.id,
                "step": t.step,
                "feature": t.feature,
                "variants": [{"id": v.id, "segments": v.segments} for v in t.variants],
            }
            for t in catalog.tutorials
        ],
        "welcome": catalog.messages.welcome,
        "welcome_by_segment": [
            {"segments": m.segments, "welcome": m.welcome} for m in catalog.messages.by_segment
        ],
        "default_locale": catalog.default_locale,
        "product": catalog.product,
    }
    body["version"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return body


def sign_ruleset(ruleset: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    payload = json.dumps(ruleset, separators=(",", ":"), sort_keys=True)
    r, s = decode_dss_signature(key.sign(payload.encode(), ec.ECDSA(hashes.SHA256())))
    return {"ruleset": payload, "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


def verify_ruleset(signed: dict[str, str], key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The ruleset, if its signature is the key's; :class:`ValueError` if not."""
    raw = _unb64url(signed["signature"])
    signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(signature, signed["ruleset"].encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("the ruleset's signature does not match the key") from None
    ruleset: dict[str, Any] = json.loads(signed["ruleset"])
    return ruleset
