"""Free-text scrubbing: no spelling of a sensitive value survives in a reason or a stack."""

from __future__ import annotations

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st

from cdc_cache.core.events import SourceRecord
from cdc_cache.core.keys import escape_value
from cdc_cache.core.scrub import REDACTED, scrub, spellings
from tests.hostile import nested

scalars = (
    st.text(min_size=1, max_size=120)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)  # what JSON carries


def record_with(value: object) -> SourceRecord:
    doc = {"after": {"id": 1, "email": value, "note": "plain"}, "op": "c"}
    return SourceRecord("s.app.users", 0, 1, b'{"id": 1}', orjson.dumps(doc))


@given(scalars, st.sampled_from([str, repr, escape_value, lambda v: orjson.dumps(v).decode()]))
def test_no_spelling_of_a_sensitive_value_survives(value, spell):
    # A value the mask itself spells ("*", "red") cannot be told apart from the mask.
    assume(not any(form in REDACTED for form in (str(value), repr(value), escape_value(value))))
    forms = spellings(frozenset({"email"}), None, record_with(value))
    text = f"key 'user:{spell(value)}:x' refused; row {{'email': {value!r}}}"
    clean = scrub(text, forms)
    assert REDACTED in clean
    pieces = clean.split(REDACTED)  # a value may be spelled inside the marker itself
    for form in (str(value), repr(value), escape_value(value)):
        assert not any(form in piece for piece in pieces)


def test_values_of_other_columns_and_of_no_column_are_kept():
    forms = spellings(frozenset({"email"}), None, record_with("ann@example.com"))
    assert scrub("plain ann@example.com", forms) == f"plain {REDACTED}"
    assert spellings(frozenset(), None, record_with("ann@example.com")) == ()


def test_a_sensitive_value_nested_deeper_than_python_recurses_is_still_found():
    raw = b'{"after": {"email": ' + nested(1000, b'"ann@example.com"') + b"}}"
    forms = spellings(frozenset({"email"}), None, SourceRecord("t.a.b", 0, 1, None, raw))
    assert "ann@example.com" in forms
