import base64

import jwt
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.notify.patterns import matches
from cdc_cache.notify.tokens import MAX_PATTERNS, Grant, TokenError, issue, verify

SECRET = b"s3cret-of-at-least-32-bytes-for-hs256"
NOW = 1_700_000_000


def test_issued_token_verifies_to_its_grant() -> None:
    token = issue(SECRET, ["inventory:*", "orders:eu"], NOW + 60)
    assert verify(SECRET, token, NOW) == Grant(("inventory:*", "orders:eu"), NOW + 60)


def test_expired_token_is_refused() -> None:
    token = issue(SECRET, ["a:*"], NOW)
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, token, NOW)


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(TokenError, match="signature"):
        verify(SECRET, issue(b"other", ["a:*"], NOW + 60), NOW)


def test_widened_payload_with_the_old_signature_is_refused() -> None:
    token = issue(SECRET, ["inventory:north"], NOW + 60)
    header, _, signature = token.split(".")
    forged = _b64(orjson.dumps({"channels": ["*"], "exp": 9999999999}))
    with pytest.raises(TokenError, match="signature"):
        verify(SECRET, f"{header}.{forged}.{signature}", NOW)


def test_a_token_any_jwt_library_mints_is_accepted() -> None:
    minted = jwt.encode({"channels": ["orders:*"], "exp": NOW + 60}, SECRET, algorithm="HS256")
    assert verify(SECRET, minted, NOW) == Grant(("orders:*",), NOW + 60)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(
    "header",
    [{"alg": "none", "typ": "JWT"}, {"alg": "HS512", "typ": "JWT"}],
    ids=["unsigned", "another-algorithm"],
)
def test_only_hs256_is_accepted(header: dict[str, str]) -> None:
    claims = _b64(orjson.dumps({"channels": ["*"], "exp": NOW + 60}))
    head = _b64(orjson.dumps(header))
    signed = jwt.encode({"channels": ["*"], "exp": NOW + 60}, SECRET, algorithm="HS512")
    for token in (f"{head}.{claims}.", signed):
        with pytest.raises(TokenError, match=r"malformed: .*alg"):
            verify(SECRET, token, NOW)


@pytest.mark.parametrize(
    ("claims", "complaint"),
    [
        ({"exp": NOW + 60}, "channels"),
        ({"channels": ["a:*"]}, "exp"),
        ({"channels": "a:*", "exp": NOW + 60}, "must be a list"),
    ],
)
def test_a_signed_token_without_its_claims_is_refused(claims: dict, complaint: str) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match=complaint):
        verify(SECRET, token, NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "!!.??", "x" * 10])
def test_garbage_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token, NOW)


def test_patterns_match_whole_channel_names() -> None:
    assert matches("inventory:*", "inventory:north")
    assert matches("*:north", "inventory:north")
    assert not matches("inventory:*", "inventory")
    assert not matches("inventory:n", "inventory:north")
    assert matches("a.b", "a.b") and not matches("a.b", "axb")  # no regex leaks


def test_subscription_patterns_must_stay_inside_the_grant() -> None:
    grant = Grant(("inventory:*", "orders:eu"), NOW + 60)
    assert grant.allows_pattern("inventory:*")
    assert grant.allows_pattern("inventory:no*")
    assert grant.allows_pattern("orders:eu")
    assert not grant.allows_pattern("*")
    assert not grant.allows_pattern("inv*")
    assert not grant.allows_pattern("orders:*")
    assert grant.allows_channel("inventory:south") and not grant.allows_channel("orders:us")


names = st.text(alphabet="ab:*", max_size=6)


@given(granted=names.filter(bool), requested=names.filter(bool), channel=st.text("ab:", max_size=6))
def test_an_allowed_pattern_never_matches_a_channel_outside_the_grant(
    granted: str, requested: str, channel: str
) -> None:
    grant = Grant((granted,), NOW + 60)
    if grant.allows_pattern(requested) and matches(requested, channel):
        assert grant.allows_channel(channel)


def test_a_token_grants_a_bounded_number_of_bounded_patterns() -> None:
    with pytest.raises(TokenError, match=f"at most {MAX_PATTERNS}"):
        issue(SECRET, [f"c:{i}" for i in range(MAX_PATTERNS + 1)], NOW + 60)
    with pytest.raises(TokenError, match="at most 16 are allowed"):
        issue(SECRET, ["inventory:" + "*x" * 17], NOW + 60)
    signed = jwt.encode({"channels": ["a" * 300], "exp": NOW + 60}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="malformed: channel pattern"):
        verify(SECRET, signed, NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
