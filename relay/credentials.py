"""
Secrets people and tools present, and the forms relay stores them in.

- Passwords: scrypt, encoded as C{$scrypt$ln=15,r=8,p=1$<salt>$<hash>}
  (unpadded base64), so the cost can grow later without invalidating
  stored hashes.  Hashes are made on the cloud and travel to the edges, which
  verify logins locally; plaintext never leaves the process that read it.
- API keys: C{relay_<key id>_<secret>}.  The key id is public (it names the
  key in listings and revocations); the secret has 256 bits of entropy, so a
  plain SHA-256 of it is a sufficient stored form and cheap to check on
  every request.
- Session tokens: random, stored only as their SHA-256.

Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: A password shorter than this is refused.
MIN_PASSWORD_LENGTH = 10


@dataclass(frozen=True)
class ScryptCost:
    """
    scrypt's parameters: N = 2**log_n, block size r, parallelism p.  The
    default takes about 32 MiB and some tens of milliseconds.
    """

    log_n: int = 15
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        return 2 * 128 * self.r * (1 << self.log_n) * self.p + (1 << 20)


DEFAULT_COST = ScryptCost()


class WeakPassword(ValueError):
    """
    A password relay refuses to set; the message says why.
    """


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def check_password_strength(password: str) -> None:
    """
    @raise WeakPassword: too short, or only whitespace.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if not password.strip():
        raise WeakPassword("a password cannot be only spaces")


def hash_password(password: str, cost: ScryptCost = DEFAULT_COST) -> str:
    """
    The stored form of a password, with a fresh random salt.
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << cost.log_n, r=cost.r, p=cost.p,
        maxmem=cost.maxmem, dklen=32,
    )
    return f"$scrypt$ln={cost.log_n},r={cost.r},p={cost.p}${_b64(salt)}${_b64(digest)}"


_ENCODED = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


def verify_password(password: str, encoded: str) -> bool:
    """
    Whether C{password} matches the stored form.  A malformed stored form
    matches nothing.
    """
    match = _ENCODED.fullmatch(encoded)
    if match is None:
        return False
    cost = ScryptCost(int(match[1]), int(match[2]), int(match[3]))
    if not 1 <= cost.log_n <= 20:
        return False
    expected = _unb64(match[5])
    digest = hashlib.scrypt(
        password.encode(), salt=_unb64(match[4]), n=1 << cost.log_n, r=cost.r, p=cost.p,
        maxmem=cost.maxmem, dklen=len(expected),
    )
    return hmac.compare_digest(digest, expected)


#: Checked against when a login names no known user, so that the answer
#: takes as long as for a known one.
def dummy_hash(cost: ScryptCost = DEFAULT_COST) -> str:
    return hash_password(secrets.token_urlsafe(16), cost)


@dataclass(frozen=True)
class NewApiKey:
    """
    A freshly made API key: C{token} is shown once and never stored.
    """

    key_id: str
    token: str
    key_hash: str


_TOKEN = re.compile(r"relay_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(key_id, f"relay_{key_id}_{secret}", _sha256(secret))


def parse_api_key(token: str) -> tuple[str, str] | None:
    """
    The key id and secret of a well-formed token, else C{None}.
    """
    match = _TOKEN.fullmatch(token)
    return None if match is None else (match[1], match[2])


def verify_api_key(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(_sha256(secret), key_hash)


def _sha256(text: str) -> str:
    return "sha256$" + hashlib.sha256(text.encode()).hexdigest()


def new_session_token() -> tuple[str, str]:
    """
    A session token for the cookie, and the form stored in the database.
    """
    token = secrets.token_urlsafe(32)
    return token, session_token_hash(token)


def session_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def password_hash_digest(password_hash: str) -> str:
    """
    What names a password hash without holding it: a session records the
    digest of the hash it was opened with (a new password ends it), and a
    password change says which hash it replaces (the cloud refuses it if
    the hash changed meanwhile).  Edge and cloud must agree on it.
    """
    return hashlib.sha256(password_hash.encode()).hexdigest()


def generate_password() -> str:
    """
    A one-time password for a new account: 20 characters, about 119 bits.
    """
    return secrets.token_urlsafe(15)
