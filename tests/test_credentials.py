"""
Password and API key hashing.
"""

from __future__ import annotations

import pytest

from relay.credentials import (
    ScryptCost,
    WeakPassword,
    check_password_strength,
    generate_password,
    hash_password,
    new_api_key,
    new_session_token,
    parse_api_key,
    session_token_hash,
    verify_api_key,
    verify_password,
)

CHEAP = ScryptCost(log_n=4, r=1, p=1)


def test_password_round_trip() -> None:
    stored = hash_password("correct horse", CHEAP)
    assert stored.startswith("$scrypt$ln=4,r=1,p=1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert hash_password("correct horse", CHEAP) != stored, "salted"


def test_default_cost_is_real() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$")
    assert verify_password("correct horse", stored)


@pytest.mark.parametrize("stored", ["", "plain", "$scrypt$ln=40,r=8,p=1$AAAA$AAAA", "$2b$12$abcdefghijk"])
def test_malformed_hashes_match_nothing(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_strength() -> None:
    with pytest.raises(WeakPassword, match="at least 10"):
        check_password_strength("short")
    with pytest.raises(WeakPassword, match="only spaces"):
        check_password_strength(" " * 12)
    check_password_strength(generate_password())
    assert len({generate_password() for _ in range(100)}) == 100


def test_api_keys() -> None:
    key = new_api_key()
    key_id, secret = parse_api_key(key.token)  # type: ignore[misc]
    assert key_id == key.key_id
    assert verify_api_key(secret, key.key_hash)
    assert not verify_api_key(secret[:-1] + ("A" if secret[-1] != "A" else "B"), key.key_hash)
    assert secret not in key.key_hash
    for bad in ("", "relay_x_y", key.token + "x", key.token.replace("relay_", "relax_")):
        assert parse_api_key(bad) is None


def test_session_tokens() -> None:
    token, stored = new_session_token()
    assert stored == session_token_hash(token) and token not in stored
