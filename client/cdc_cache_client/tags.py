"""Cache tags (surrogate keys): what may name one, and how a tag's hash names its members.

A tag's hash (:meth:`~cdc_cache_client.keys.Names.tag_key`, written only by ``lua/tags.lua``)
holds its version and one field per member key; the worker and applications both write
members, so the field's format lives here.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from cdc_cache_client.keys import DEFAULT_NAMESPACE

TAG_MAX_CHARS: Final = 512


def check_tag(tag: str, *, what: str = "tag", namespace: str = DEFAULT_NAMESPACE) -> str:
    """``tag`` if it can name a cache tag, else ValueError saying what is wrong.

    A tag is 1 to 512 printable characters without whitespace, outside cdc-cache's own
    names (``<namespace>:``). Row values in rendered tags are escaped like key values.
    """
    if not isinstance(tag, str) or not tag:
        msg = f"{what} {tag!r} is not a non-empty string"
        raise ValueError(msg)
    if len(tag) > TAG_MAX_CHARS:
        msg = f"{what} is {len(tag)} characters long; at most {TAG_MAX_CHARS}"
        raise ValueError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in tag):
        msg = f"{what} {tag!r} holds whitespace or control characters; leave them out"
        raise ValueError(msg)
    own = f"{namespace}:"
    if tag.startswith(own):
        msg = f"{what} {tag!r} starts with {own!r}, cdc-cache's own names; choose another"
        raise ValueError(msg)
    return tag


def member(key: str, link: str) -> str:
    """A member's field in its tag's hash: the key, then the row that put it there."""
    return f"{key}\n{link}"


def member_key(field: bytes) -> tuple[str, str]:
    """The (key, link) a member field names (links hold no newline; keys may)."""
    key, _, link = field.decode().rpartition("\n")
    return key, link


@cache
def tags_script() -> str:
    """The source of ``lua/tags.lua``, the one script that writes a tag's hash."""
    path = resources.files("cdc_cache_client").joinpath("lua/tags.lua")
    return path.read_text(encoding="utf-8")
