"""The sink's Lua scripts (``lua/``), named by their SHA1 as EVALSHA calls them.

The apply script comes in two flavours: plain, which Redis refuses up front while it is
out of memory, and flagged ``allow-oom``, for calls that only delete. The worker's own
records (the mode, lag reports, the version store's layout) are written through a script
flagged ``allow-oom`` too: they say that Redis is full, so they must land while it is. So
are the notification channels' registry and (``lua/relay.lua``) the relay of a Cluster's
outboxes: an invalidation's notification lands while Redis is full, as on one server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

from redis import Redis
from redis import exceptions as rex
from redis.commands.core import Script

from cdc_cache.sink.connection import Client, is_oom

# Redis 7 script flags: with none declared, Redis refuses the call up front while it is
# out of memory; allow-oom lets a call that only deletes run then (EVALSHA is judged by the
# flags of the script it names).
_SHEBANG: Final = "#!lua\n"
_SHEBANG_ALLOW_OOM: Final = "#!lua flags=allow-oom\n"


@cache
def apply_script(*, allow_oom: bool = False) -> tuple[str, str]:
    """The apply script's source and SHA1 (what EVALSHA names it by), with its flags."""
    body = resources.files("cdc_cache").joinpath("sink/lua/apply.lua").read_text(encoding="utf-8")
    source = (_SHEBANG_ALLOW_OOM if allow_oom else _SHEBANG) + body
    return source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


@cache
def lua_script(name: str) -> tuple[str, str]:
    """The source and SHA1 of one of the sink's other scripts (``lua/<name>.lua``)."""
    path = f"sink/lua/{name}.lua"
    source = resources.files("cdc_cache").joinpath(path).read_text(encoding="utf-8")
    return source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# The worker's own records (mode, lag reports, the version store's layout) must be written
# especially while Redis is out of memory: they are how it says so. They are a few bytes.
_RECORD: Final = """#!lua flags=allow-oom
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0
"""


def write_record(client: Client, key: str, fields: Mapping[Any, Any], ttl_ms: int = 0) -> None:
    """HSET ``fields`` (and PEXPIRE ``ttl_ms`` if positive), even while Redis is out of memory."""
    args = [ttl_ms, *(item for pair in fields.items() for item in pair)]
    Script(client, _RECORD)(keys=[key], args=args)


# The notification channels' registry: one member per channel, written on one server by the
# apply script (flagged allow-oom for invalidations), so on a Cluster too while Redis is full.
_MEMBERS: Final = """#!lua flags=allow-oom
local added = 0
for i = 1, #ARGV, 500 do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return added
"""


def add_members(client: Client, key: str, members: Sequence[Any]) -> int:
    """SADD ``members`` to the set ``key``, even while Redis is out of memory; how many new."""
    return int(Script(client, _MEMBERS)(keys=[key], args=list(members)))


def accepts_writes(node: Redis[bytes]) -> bool:
    """Whether ``node`` runs a call that may write values, or refuses it for memory."""
    return oom_refusal(node) is None


def oom_refusal(node: Redis[bytes]) -> str | None:
    """Why ``node`` refuses a call that may write values (its OOM error); None: it takes one.

    An empty call of the apply script: it writes nothing, but Redis judges it by the
    script's flags, so it is refused exactly while the node is out of memory.
    """
    source, sha = apply_script()
    try:
        try:
            node.execute_command("EVALSHA", sha, 0)
        except rex.NoScriptError:
            node.execute_command("SCRIPT LOAD", source)
            node.execute_command("EVALSHA", sha, 0)
    except rex.ResponseError as exc:
        if is_oom(exc):
            return str(exc)
        raise
    return None
