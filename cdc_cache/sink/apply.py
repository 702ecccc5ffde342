"""Apply planned cache operations to Redis, each gated by the source position of its key.

Redis keeps, for every managed key, the version (position) of the last change applied to
it, in a version bucket of the key's slot (``keys.version_key``, ``cdc_cache.sink.versions``).
A Lua script (``lua/apply.lua``) writes an op only when its version is strictly newer, so
duplicates, replays and late arrivals converge to the newest row image, and a delete
leaves a version tombstone that a late older write cannot get past. An applied op also
voids the key's lease (``keys.lease_key``), which is how an application fill through
``cdc_cache.aside.cache_aside`` learns that the row it loaded may be stale.

When Redis refuses a call for memory (OOM), its ops are sent again as invalidations
(sets become deletes) through the same script flagged ``allow-oom``: deletes and their
tombstones land even then, and the :class:`MemoryObserver` hears of the refusal (the
worker falls back to ``ttl`` mode). ``invalidate_only`` does the same for every batch, for
eviction policies that could evict versions (see ``redis_memory``).

A batch costs one round trip: one EVALSHA on a single server; on Redis Cluster one EVALSHA
per hash slot (a key, its version key and its lease key share a slot), pipelined so that
each primary is written to once. Errors come out in two kinds:
:class:`~cdc_cache.core.errors.TransientError` when the same batch will succeed later
(unreachable server, timeout, failover, cluster resharding, out of memory), and
:class:`ApplyError` when it will not (a script error, a key of the wrong type, an op the
planner should never have produced). A third kind is neither: refused credentials, a
missing ACL permission or a server certificate that does not verify raise
:class:`~cdc_cache.core.errors.ConfigError`, since waiting cannot fix a setting.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr
from redis import Redis, RedisCluster
from redis import exceptions as rex
from redis.commands.core import Script

from cdc_cache.core.errors import CdcCacheError, ConfigError, RedisUnavailable, chain
from cdc_cache.core.keys import (
    CHANNELS_KEY,
    INTERNAL_PREFIXES,
    LEASE_PREFIX,
    all_version_buckets,
    key_slot,
    lease_key,
    leased_key,
    stream_key,
    version_field,
    version_key,
)
from cdc_cache.core.redact import redact_url
from cdc_cache.plan.cache_ops import (
    CacheOp,
    DeleteKey,
    InvalidatePrefix,
    KeyOp,
    Notify,
    SetRow,
    Truncated,
    ValueFormat,
    as_invalidation,
)
from cdc_cache.sink.sentinel import connect_sentinel, is_sentinel_url, parse_sentinel_url
from cdc_cache.sink.versions import encode_version

log = logging.getLogger("cdc_cache.redis_apply")

Client: TypeAlias = "Redis[bytes] | RedisCluster[bytes]"
Arg = str | bytes | int

CLUSTER_FLAG: Final = "cluster"
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})

# Exception types and error-reply prefixes that mean "the same call will work later".
_TRANSIENT_TYPES: Final = (
    rex.ConnectionError,  # also refused/reset, LOADING (not auth: see _misconfiguration)
    rex.TimeoutError,
    rex.ClusterError,  # CLUSTERDOWN, MASTERDOWN, redirection budget exhausted
    rex.AskError,  # MOVED and ASK left over after the client's own redirect handling
    rex.TryAgainError,
    rex.ReadOnlyError,  # wrote to a former primary during a failover
    rex.SlotNotCoveredError,
)
# The text of an OOM reply once redis-py has taken its "OOM" code off (OutOfMemoryError).
_OOM_TEXT: Final = "command not allowed when used memory"
# OOM (maxmemory reached, see is_oom) counts as transient: retry until memory is freed,
# never skip (the apply script has its own way through).
_TRANSIENT_REPLIES: Final = (
    "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "MOVED", "ASK", "READONLY",
    "OOM", "NOREPLICAS",
)  # fmt: skip
# A cluster still forming or resharding, or no seed node reachable yet: redis-py raises a
# bare RedisClusterException with these texts. Other cluster errors (e.g. cluster mode
# off on the node) are configuration mistakes and stay permanent.
_TRANSIENT_CLUSTER_TEXTS: Final = ("All slots are not covered", "Redis Cluster cannot be connected")


# A server certificate that fails verification is a setting to fix, like a wrong password.
_TLS_VERIFY_TEXTS: Final = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


@dataclass(frozen=True, slots=True)
class RedisAuth:
    """ACL user and password kept apart from the URL, so they never appear in logged URLs."""

    username: str | None = None
    password: SecretStr | None = None

    def kwargs(self) -> dict[str, str]:
        """redis-py connection arguments for the credentials that are set."""
        given = {
            "username": self.username,
            "password": self.password.get_secret_value() if self.password else None,
        }
        return {name: value for name, value in given.items() if value is not None}


class Outcome(StrEnum):
    """What happened to one key op: written, or skipped because its position was not newer.

    ``INVALIDATED``: the op's key was deleted instead of written, because a set found a
    value without a known version, or Redis was out of memory, or the eviction policy
    allows only invalidations. It changed the cache like an applied op.
    """

    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"
    INVALIDATED = "invalidated"


_OUTCOMES: Final = {
    1: Outcome.APPLIED,
    0: Outcome.STALE,
    2: Outcome.DUPLICATE,
    3: Outcome.INVALIDATED,
}


class MemoryObserver(Protocol):
    """Hears, per Redis node, whether it took a write-capable call or refused it for memory."""

    def refused(self, node: str, error: str) -> None:
        """``node`` refused a call for memory (OOM); its ops were applied as invalidations."""

    def accepted(self, node: str) -> None:
        """``node`` took a call that may write values."""


class _NoObserver:
    def refused(self, node: str, error: str) -> None:
        """Nobody listens."""

    def accepted(self, node: str) -> None:
        """Nobody listens."""


CLUSTER_NOTIFY_REFUSAL: Final = (
    "notification rules need a single Redis server: on Redis Cluster a channel's stream "
    "lives in another hash slot than the cache keys, so one script cannot write both "
    "atomically; remove the tables' 'notify:' sections or point redis_url at a server "
    "without ?cluster=true"
)


def check_notifications(client: Client) -> None:
    """Refuse notification rules on Redis Cluster at startup (see CLUSTER_NOTIFY_REFUSAL)."""
    if isinstance(client, RedisCluster):
        raise ConfigError(CLUSTER_NOTIFY_REFUSAL)


class ApplyError(CdcCacheError):
    """Redis refused a batch for a reason a retry will not fix.

    A script error, a key holding a type the op cannot overwrite (WRONGTYPE), or an op with
    a non-positive TTL. The batch's ops are version-gated, so the caller may split it to
    find the op at fault and dead-letter that op alone.
    """


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One outcome per SetRow/DeleteKey and one deleted-key count per InvalidatePrefix.

    Both are in input order.
    """

    outcomes: tuple[Outcome, ...]
    invalidated: tuple[int, ...]

    def count(self, outcome: Outcome) -> int:
        """How many key ops ended with ``outcome`` (for applied/stale/duplicate metrics)."""
        return self.outcomes.count(outcome)


@dataclass(frozen=True, slots=True)
class _Call:
    """One EVALSHA: flattened (key, version bucket, lease key) triples, ARGV, and which ops."""

    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    ops: tuple[int, ...]


class _Refused:
    """A call Redis refused for memory (OOM), with the error's text."""

    def __init__(self, error: str) -> None:
        self.error = error


def connect(url: str, auth: RedisAuth | None = None, **kwargs: Any) -> Client:
    """Build a client from a URL; ``?cluster=true`` makes it a Redis Cluster client.

    ``redis://HOST:PORT/0`` is one server; ``redis://HOST:PORT/0?cluster=true`` names any
    seed node of a cluster (``rediss://`` for TLS works for both, with redis-py's TLS query
    options such as ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``). Replies stay bytes.
    ``auth`` overrides credentials in the URL. Other query parameters and ``kwargs`` go to
    redis-py unchanged. ``redis+sentinel://`` URLs name a Sentinel-monitored primary
    (see :mod:`cdc_cache.sink.sentinel`).
    """
    problem = redis_url_problem(url)
    if problem is not None:
        msg = f"redis_url: {problem}"
        raise ConfigError(msg)
    if is_sentinel_url(url):
        kwargs["decode_responses"] = False
        kwargs |= (auth or RedisAuth()).kwargs()
        return connect_sentinel(url, **kwargs)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value.lower() for name, value in query if name == CLUSTER_FLAG]
    rest = urlencode([(name, value) for name, value in query if name != CLUSTER_FLAG])
    plain = urlunsplit(parts._replace(query=rest))
    kwargs["decode_responses"] = False
    kwargs |= (auth or RedisAuth()).kwargs()
    with _translated(f"connecting to {parts.hostname}:{parts.port}"):
        if flags and flags[-1] in _TRUE:
            return RedisCluster.from_url(plain, **kwargs)
        return Redis.from_url(plain, **kwargs)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL (scheme, cluster flag), or None.

    Checked with the settings, so a URL redis-py would refuse stops startup at once.
    """
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ConfigError as exc:
            return str(exc)
        return None
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        return f"{redact_url(url)} is not a URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        return (
            f"{redact_url(url)} has the scheme {parts.scheme or '(none)'!r}; use "
            "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS), unix:///path/redis.sock or "
            "redis+sentinel://HOST:PORT/SERVICE/DB (Sentinel)"
        )
    flags = [value.lower() for name, value in query if name == CLUSTER_FLAG]
    if any(flag not in _TRUE | _FALSE for flag in flags):
        return f"{redact_url(url)}: cluster= must be true or false"
    return None


def ping(client: Client, where: str) -> Client:
    """``client`` once it answered PING: the connection, TLS and credentials all work.

    ``where`` names the server in errors (a redacted URL).
    """
    with _translated(f"PING at {where}"):
        client.ping()
    return client


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) says a retry will succeed."""
    if misconfiguration(exc) is not None:
        return False
    return any(
        isinstance(seen, _TRANSIENT_TYPES)
        or (isinstance(seen, rex.ResponseError) and str(seen).startswith(_TRANSIENT_REPLIES))
        or is_oom(seen)
        or (
            isinstance(seen, rex.RedisClusterException)
            and any(text in str(seen) for text in _TRANSIENT_CLUSTER_TEXTS)
        )
        for seen in chain(exc)
    )


def misconfiguration(exc: BaseException) -> str | None:
    """What to fix when ``exc`` (or its cause) is a setting problem a retry cannot cure.

    The text names the settings and carries the server's reply, which never contains the
    password; None for every other error.
    """
    for seen in chain(exc):
        if isinstance(seen, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError):
            return (
                f"{seen}; set redis_username and redis_password (or redis_password_file, "
                "or user:password in redis_url) to an ACL user of this server"
            )
        if isinstance(seen, rex.NoPermissionError):
            return (
                f"{seen}; the ACL user (redis_username) needs the commands and keys cdc-cache "
                "uses (see docs/security.md)"
            )
        if any(text in str(seen) for text in _TLS_VERIFY_TEXTS):
            return (
                f"{seen}; the server's TLS certificate does not verify: set ssl_ca_certs in "
                "redis_url (rediss://HOST:PORT/0?ssl_ca_certs=/path/ca.pem)"
            )
    return None


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn redis-py errors into TransientError or ApplyError, chained to the original."""
    try:
        yield
    except (rex.RedisError, rex.RedisClusterException) as exc:
        problem = misconfiguration(exc)
        if problem is not None:
            msg = f"Redis refused {what}: {problem}"
            raise ConfigError(msg) from None
        if is_transient(exc):
            msg = f"Redis unavailable while {what}: {exc}"
            raise RedisUnavailable(msg) from exc
        msg = f"Redis refused {what}: {exc}"
        raise ApplyError(msg) from exc


# The same translation, for Redis calls made outside this module (replicas, failovers).
translated_errors = _translated


# Redis 7 script flags: with none declared, Redis refuses the call up front while it is
# out of memory; allow-oom lets a call that only deletes run then (EVALSHA is judged by the
# flags of the script it names).
_SHEBANG: Final = "#!lua\n"
_SHEBANG_ALLOW_OOM: Final = "#!lua flags=allow-oom\n"


@cache
def _script(*, allow_oom: bool = False) -> tuple[str, str]:
    """The apply script's source and SHA1 (what EVALSHA names it by), with its flags."""
    body = resources.files("cdc_cache").joinpath("sink/lua/apply.lua").read_text(encoding="utf-8")
    source = (_SHEBANG_ALLOW_OOM if allow_oom else _SHEBANG) + body
    return source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


@cache
def lua_script(name: str) -> tuple[str, str]:
    """The source and SHA1 of one of the sink's other Lua scripts (``lua/<name>.lua``)."""
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


def accepts_writes(node: Redis[bytes]) -> bool:
    """Whether ``node`` runs a call that may write values, or refuses it for memory.

    An empty call of the apply script: it writes nothing, but Redis judges it by the
    script's flags, so it is refused exactly while the node is out of memory.
    """
    source, sha = _script()
    try:
        try:
            node.execute_command("EVALSHA", sha, 0)
        except rex.NoScriptError:
            node.execute_command("SCRIPT LOAD", source)
            node.execute_command("EVALSHA", sha, 0)
    except rex.ResponseError as exc:
        if is_oom(exc):
            return False
        raise
    return True


def is_oom(reply: object) -> bool:
    """True when Redis refused a command because ``maxmemory`` is reached.

    redis-py takes the ``OOM`` code off the reply, and puts the command in front of it when
    a pipeline raises it.
    """
    text = str(reply)
    return isinstance(reply, rex.ResponseError) and (text.startswith("OOM") or _OOM_TEXT in text)


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so ``text`` matches only itself."""
    return "".join(f"\\{ch}" if ch in "\\*?[]" else ch for ch in text)


def version_of(op: KeyOp) -> str:
    """The version stored for ``op``: its position, then a rank (delete < set).

    A change of primary key reaches Debezium's topic as a delete of the old row and a
    create of the new one at the same position. When both map to one cache key, the
    create must win, so at an equal position a set ranks above a delete. The only other
    pair is a change that failed, whose keys were deleted at its position
    (``cdc_cache.plan.invalidations``), replayed once its cause is fixed: its set must win too.
    """
    return encode_version(op.position, delete=isinstance(op, DeleteKey))


def _keys(op: KeyOp | Notify) -> tuple[str, ...]:
    """The script's KEYS for one op."""
    if isinstance(op, Notify):
        return (stream_key(op.channel), CHANNELS_KEY)
    return (op.key, version_key(op.key), lease_key(op.key))


def _encode(op: KeyOp | Notify) -> tuple[Arg, ...]:
    """The script's ARGV for one op: kind, field, version, its lifetime, kind's own args."""
    if isinstance(op, Notify):
        return ("N", op.channel, op.maxlen, op.payload)
    field, version = version_field(op.key), version_of(op)
    if op.tombstone_ttl_ms <= 0:
        msg = f"{type(op).__name__} for {op.key!r} has tombstone_ttl_ms={op.tombstone_ttl_ms}"
        raise ApplyError(msg + "; TTLs must be positive milliseconds")
    if isinstance(op, DeleteKey):
        return ("D", field, version, op.tombstone_ttl_ms)
    if op.ttl_ms <= 0:
        msg = f"SetRow for {op.key!r} has ttl_ms={op.ttl_ms}; TTLs must be positive milliseconds"
        raise ApplyError(msg)
    lifetime = max(op.ttl_ms, op.tombstone_ttl_ms)
    if op.format is ValueFormat.JSON and isinstance(op.value, bytes):
        return ("J", field, version, lifetime, op.value, op.ttl_ms)
    if op.format is ValueFormat.HASH and isinstance(op.value, tuple):
        fields = [item for pair in op.value for item in pair]
        return ("H", field, version, lifetime, op.ttl_ms, len(op.value), *fields)
    msg = (
        f"SetRow for {op.key!r}: format {op.format} needs "
        f"{'bytes' if op.format is ValueFormat.JSON else 'field pairs'}, "
        f"got {type(op.value).__name__}"
    )
    raise ApplyError(msg)


class RedisApplier:
    """Applies batches of cache ops to one Redis deployment (single server or cluster).

    ``max_ops_per_call`` and ``max_args_per_call`` bound one script call: a script blocks
    the server while it runs, so a huge batch is split into several calls (sent in the same
    pipeline, in order). ``scan_count`` is the SCAN COUNT hint of a prefix invalidation,
    which also bounds how many keys one of its calls deletes.

    ``invalidate_only`` is asked once per batch: while it is true every set is applied as
    a delete (an eviction policy that may evict versions, see ``redis_memory``).
    ``memory`` hears which nodes refuse calls for memory and which take them.
    """

    def __init__(
        self,
        client: Client,
        *,
        max_ops_per_call: int = 1000,
        max_args_per_call: int = 50_000,
        scan_count: int = 500,
        invalidate_only: Callable[[], bool] = lambda: False,
        memory: MemoryObserver | None = None,
    ) -> None:
        if min(max_ops_per_call, max_args_per_call, scan_count) <= 0:
            msg = "max_ops_per_call, max_args_per_call and scan_count must be positive"
            raise ConfigError(msg)
        self._client = client
        self._max_ops = max_ops_per_call
        self._max_args = max_args_per_call
        self._scan_count = scan_count
        self._invalidate_only = invalidate_only
        self._memory = memory or _NoObserver()

    def apply(self, ops: Sequence[CacheOp]) -> ApplyResult:
        """Apply ``ops`` in order; raises TransientError (retry the batch) or ApplyError.

        Key ops between two prefix invalidations go out together; an InvalidatePrefix runs
        after the key ops before it and before those after it.
        """
        outcomes: list[Outcome] = []
        invalidated: list[int] = []
        pending: list[KeyOp | Notify] = []
        with _translated(f"applying a batch of {len(ops)} ops"):
            for op in ops:
                if isinstance(op, InvalidatePrefix):
                    outcomes += self._apply_key_ops(pending)
                    pending = []
                    invalidated.append(self._invalidate(op))
                else:
                    pending.append(op)
            outcomes += self._apply_key_ops(pending)
        return ApplyResult(tuple(outcomes), tuple(invalidated))

    def discard(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` and their leases with no version gate; how many keys existed.

        Only for keys whose gate cannot run (a version key of another type refuses every
        op on its key): deleting is always safe, and no change can write such a key again
        until its version key is repaired, so nothing older can come back either.
        """
        with _translated(f"deleting {len(keys)} keys without their versions"):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)  # one key per DEL: a Cluster pipeline takes no more
                pipe.delete(lease_key(key))
            replies = pipe.execute()
        return sum(int(found) for found in replies[::2])

    def _apply_key_ops(self, ops: Sequence[KeyOp | Notify]) -> list[Outcome]:
        """Apply key ops, one call per slot and chunk; refused calls again as invalidations."""
        if not ops:
            return []
        cluster = isinstance(self._client, RedisCluster)
        groups: dict[int, list[int]] = defaultdict(list)
        for index, op in enumerate(ops):
            if cluster and isinstance(op, Notify):
                raise ApplyError(CLUSTER_NOTIFY_REFUSAL)
            groups[key_slot(op.key) if cluster and not isinstance(op, Notify) else 0].append(index)
        sent: list[KeyOp | Notify] = (
            [as_invalidation(op) for op in ops] if self._invalidate_only() else list(ops)
        )
        calls = [call for indices in groups.values() for call in self._chunk(sent, indices)]
        codes: list[int | None] = [None] * len(ops)
        refused: list[_Call] = []
        for call, reply in zip(calls, self._run(calls), strict=True):
            node = self._node(call)
            if isinstance(reply, _Refused):
                self._memory.refused(node, reply.error)
                refused.append(call)
                continue
            self._memory.accepted(node)
            for index, code in zip(call.ops, reply, strict=True):
                codes[index] = int(code)
        if refused:
            for index in (index for call in refused for index in call.ops):
                sent[index] = as_invalidation(sent[index])
            retry = [again for call in refused for again in self._chunk(sent, call.ops)]
            for call, reply in zip(retry, self._run(retry, allow_oom=True), strict=True):
                if isinstance(reply, _Refused):  # pragma: no cover - allow-oom is never refused
                    raise RedisUnavailable(reply.error)
                for index, code in zip(call.ops, reply, strict=True):
                    codes[index] = int(code)
        return [_outcome(op, again, code) for op, again, code in zip(ops, sent, codes, strict=True)]

    def _chunk(self, ops: Sequence[KeyOp | Notify], indices: Sequence[int]) -> Iterator[_Call]:
        """Split one slot's ops into script calls within the limits, keeping their order.

        A notification stays in the call of the key op it follows (its host).
        """
        keys: list[str] = []
        args: list[Arg] = []
        members: list[int] = []
        table = ""  # the table whose TRUNCATE gates the call's key ops from here on
        for index in indices:
            op = ops[index]
            encoded = _encode(op)
            if (
                members
                and not isinstance(op, Notify)
                and (len(members) >= self._max_ops or len(args) + len(encoded) > self._max_args)
            ):
                yield _Call(tuple(keys), tuple(args), tuple(members))
                keys, args, members, table = [], [], [], ""
            if not isinstance(op, Notify) and op.table != table:
                table = op.table
                args += ("T", table)
            keys += _keys(op)
            args += encoded
            members.append(index)
        if members:
            yield _Call(tuple(keys), tuple(args), tuple(members))

    def _run(
        self, calls: Sequence[_Call], *, allow_oom: bool = False
    ) -> list[list[int] | _Refused]:
        """Send every call in one pipeline; load the script and resend if a node lacks it.

        A call refused for memory comes back as :class:`_Refused`.
        """
        source, sha = _script(allow_oom=allow_oom)
        replies: list[list[int] | _Refused | None] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                call = calls[i]
                pipe.execute_command(
                    "EVALSHA", sha, len(call.keys), *call.keys, *call.args, **self._route(call)
                )
            missing = []
            for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, rex.NoScriptError):
                    missing.append(i)
                elif is_oom(reply):
                    replies[i] = _Refused(str(reply))
                elif isinstance(reply, Exception):
                    if is_transient(reply) or misconfiguration(reply) is not None:
                        raise reply
                    msg = f"apply script failed on the call for {calls[i].keys[0]!r}: {reply}"
                    raise ApplyError(msg) from reply
                else:
                    replies[i] = reply
            if not missing:
                return [reply for reply in replies if reply is not None]
            if attempt == 0:
                self._client.execute_command("SCRIPT LOAD", source)  # every primary
            todo = missing
        msg = "apply script vanished right after SCRIPT LOAD (failover or SCRIPT FLUSH?)"
        raise RedisUnavailable(msg)

    def _node(self, call: _Call) -> str:
        """The name (host:port) of the node a call goes to."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(call.keys[0])
            return str(node.name) if node is not None else "?"
        return node_name(self._client)

    def _route(self, call: _Call) -> dict[str, Any]:
        """Name a cluster call's node up front, from the client's slot map.

        Left to itself, the cluster pipeline asks a server for the keys of every EVALSHA
        (COMMAND GETKEYS), one round trip each. A stale route is answered with MOVED,
        which the pipeline follows.
        """
        if isinstance(self._client, RedisCluster):
            return {"target_nodes": self._client.get_node_from_key(call.keys[0])}
        return {}

    def _invalidate(self, op: InvalidatePrefix) -> int:
        """SCAN every primary for keys under the prefix and delete them version-gated.

        Keys with a lease and no value yet (an application fill in progress) are found
        through their lease keys, so that the fill is voided too.
        """
        if not op.prefix or op.prefix.startswith(INTERNAL_PREFIXES):
            msg = (
                f"InvalidatePrefix for table {op.table} has prefix {op.prefix!r}: it must be "
                f"non-empty and outside {' and '.join(map(repr, INTERNAL_PREFIXES))}; "
                "fix the table's key templates"
            )
            raise ApplyError(msg)
        if op.truncated is not None:
            self._record_truncate(op, op.truncated)
        under = glob_escape(op.prefix) + "*"
        patterns = (under, glob_escape(LEASE_PREFIX) + "{*}:" + under)
        scanned = deleted = 0
        for node, pattern in itertools.product(self._primaries(), patterns):
            for found in self._scan(node, pattern):
                names = [_cache_key(_key_text(raw), op.prefix) for raw in found]
                batch = [
                    DeleteKey(name, op.position, op.tombstone_ttl_ms)
                    for name in names
                    if name is not None
                ]
                scanned += len(batch)
                deleted += self._apply_key_ops(batch).count(Outcome.APPLIED)
        log.info(
            "invalidated prefix %r of table %s at %s: %d keys deleted of %d found",
            op.prefix, op.table, op.position, deleted, scanned,
        )  # fmt: skip
        return deleted

    def _record_truncate(self, op: InvalidatePrefix, truncated: Truncated) -> None:
        """Raise the table's truncate position in every version bucket, before its keys go.

        From then on the apply script judges every change of the table at or below it
        stale, whether its key was cached or not. On one server a single call covers every
        bucket and announces the TRUNCATE on the table's channels, once: a replayed
        TRUNCATE raises nothing and announces nothing. On a Cluster each slot's bucket gets
        its own call (notifications are refused there, see ``check_notifications``).
        """
        source, _ = lua_script("truncate")
        head = (op.table, encode_version(op.position, delete=True), op.tombstone_ttl_ms)
        cluster = isinstance(self._client, RedisCluster)
        raised = 0
        for node, buckets in buckets_by_node(self._client):
            script = node.register_script(source)
            if cluster:
                pipe = node.pipeline(transaction=False)
                for bucket in buckets:
                    script(keys=[bucket], args=[*head, 1, 1, b""], client=pipe)
                raised += sum(int(n) for n in pipe.execute())
                continue
            channels = self._channels(truncated.channels)
            keys = [*buckets, *(k for c in channels for k in (stream_key(c), CHANNELS_KEY))]
            args = [*head, len(buckets), truncated.maxlen or 1, truncated.payload, *channels]
            raised += int(script(keys=keys, args=args))
        log.info(
            "recorded the TRUNCATE of table %s at %s in %d version buckets",
            op.table, op.position, raised,
        )  # fmt: skip

    def _channels(self, pattern: str | None) -> list[str]:
        """The channels ever notified whose names ``pattern`` matches."""
        if pattern is None:
            return []
        matcher = re.compile(pattern)
        names = (_key_text(raw) for raw in self._client.smembers(CHANNELS_KEY))
        return sorted(name for name in names if matcher.fullmatch(name))

    def _scan(self, node: Redis[bytes], pattern: str) -> Iterator[list[bytes]]:
        """One node's keys matching ``pattern``, a SCAN page at a time."""
        cursor = 0
        while True:
            cursor, found = node.scan(cursor=cursor, match=pattern, count=self._scan_count)
            yield found
            if cursor == 0:
                return

    def _primaries(self) -> list[Redis[bytes]]:
        return primaries(self._client)


def _outcome(op: KeyOp | Notify, sent: KeyOp | Notify, code: int | None) -> Outcome:
    """A set sent as a delete that applied was invalidated, not written."""
    if code is None:  # pragma: no cover - every op of a call gets a code
        msg = f"the apply script returned no outcome for {op!r}"
        raise ApplyError(msg)
    outcome = _OUTCOMES[code]
    if isinstance(op, Notify):  # its host's code: sent when the host changed the cache
        return Outcome.APPLIED if outcome is Outcome.INVALIDATED else outcome
    if outcome is Outcome.APPLIED and isinstance(op, SetRow) and isinstance(sent, DeleteKey):
        return Outcome.INVALIDATED
    return outcome


def node_name(node: Redis[bytes]) -> str:
    """``host:port`` (or the socket path) of a single Redis server's client."""
    kwargs = node.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def primaries(client: Client) -> list[Redis[bytes]]:
    """One client per primary: the server itself, or each cluster primary (for SCAN)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(n) for n in client.get_primaries()]
    return [client]


def buckets_by_node(client: Client) -> list[tuple[Redis[bytes], list[str]]]:
    """Every version bucket name, grouped by the primary that serves it."""
    names = list(all_version_buckets())
    if not isinstance(client, RedisCluster):
        return [(client, names)]
    grouped: dict[str, list[str]] = defaultdict(list)
    nodes = {}
    for name in names:
        node = client.get_node_from_key(name)
        if node is not None:
            grouped[node.name].append(name)
            nodes[node.name] = node
    return [(client.get_redis_connection(nodes[n]), grouped[n]) for n in sorted(grouped)]


def _cache_key(name: str, prefix: str) -> str | None:
    """The cache key a SCAN hit stands for (itself, or the key a lease is held on), if any."""
    if name.startswith(INTERNAL_PREFIXES):
        name = leased_key(name) or ""
    return name if name.startswith(prefix) else None


def _key_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"key {raw!r} under an invalidated prefix is not UTF-8; delete it by hand"
        raise ApplyError(msg) from exc
