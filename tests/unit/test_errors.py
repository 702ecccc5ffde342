from __future__ import annotations

from cdc_cache.core.errors import ConfigError, chain


def _raised_from(outer: Exception, inner: BaseException, *, explicit: bool) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            if explicit:
                raise outer from exc
            raise outer  # noqa: B904 - the implicit context is what is tested
    except Exception as caught:
        return caught


def test_chain_follows_explicit_causes_then_implicit_contexts() -> None:
    root = ConfigError("refused")
    middle = _raised_from(OSError("connect"), root, explicit=True)
    top = _raised_from(RuntimeError("engine"), middle, explicit=False)
    assert list(chain(top)) == [top, middle, root]


def test_chain_of_an_error_raised_from_nothing_is_the_error_alone() -> None:
    alone = ValueError("x")
    assert list(chain(alone)) == [alone]


def test_chain_ends_on_a_cycle_instead_of_looping() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert list(chain(first)) == [first, second]
