"""What a change's ``source`` block says about the log it came from (lineage evidence).

Read by the envelope decoder for every change; judged by ``cdc_cache.lineage.model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from cdc_cache.core.events import Origin

# Debezium's source.snapshot values of an initial or blocking snapshot. Incremental
# snapshot chunks carry the streaming position and are ordinary changes here.
_SNAPSHOT_VALUES: Final = frozenset({True, "true", "first", "last", "first_in_data_collection",
                                     "last_in_data_collection"})  # fmt: skip
_MARIADB_GTID: Final = re.compile(r"(\d+)-(\d+)-(\d+)")


def origin_of(source: Mapping[str, Any]) -> Origin:
    """Read the lineage evidence from an envelope's ``source`` block (never raises).

    Evidence is optional: a malformed GTID or server id is ignored, not rejected, since
    the change itself is valid.
    """
    server_id = source.get("server_id")
    if isinstance(server_id, str) and server_id.isdecimal():  # isdigit() takes "²" too
        server_id = int(server_id)
    server = (
        f"server:{server_id}"
        if isinstance(server_id, int) and not isinstance(server_id, bool) and server_id > 0
        else None
    )
    gtid = None
    text = source.get("gtid")
    if isinstance(text, str) and text:
        if match := _MARIADB_GTID.fullmatch(text):
            gtid = (f"domain:{match.group(1)}", int(match.group(3)))
            server = server or f"server:{match.group(2)}"
        else:
            uuid, sep, sequence = text.rpartition(":")
            if sep and uuid and sequence.isdecimal():
                gtid = (uuid.lower(), int(sequence))
                server = server or f"uuid:{uuid.lower()}"
    return Origin(server, gtid, _is_snapshot(source.get("snapshot")))


def _is_snapshot(value: object) -> bool:
    return isinstance(value, (str, bool)) and value in _SNAPSHOT_VALUES
