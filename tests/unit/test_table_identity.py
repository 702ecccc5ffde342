"""A table's identity with its connector's server name (``table_identity: server_db_table``).

Over real recorded output (the routed recordings under the dotted prefix ``prod.eu.dbz``)
and small hand-made records for what the recordings cannot show.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.cli import main
from cdc_cache.core.errors import ConfigError, DecodeError
from cdc_cache.core.events import ChangeEvent, Heartbeat, SchemaChange, SourceRecord, Tombstone
from cdc_cache.core.identity import (
    TableIdentity,
    qualified,
    server_of_topic,
    split,
    table_of_topic_named,
)
from cdc_cache.plan.route import Planned, Rejected, route
from cdc_cache.plan.rules_loader import parse_rules
from cdc_cache.source.envelope import decode, table_hint
from cdc_cache.tools.resnapshot import snapshot_signal
from tests.unit.test_envelope import SOURCES
from tests.unit.test_routed_topics import NAMED, SERVER, routed
from tests.unit.test_settings import load_settings

SERVERS = TableIdentity.SERVER_DB_TABLE
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@given(st.lists(NAME, min_size=1, max_size=3).map(".".join), NAME, NAME)
def test_a_server_qualified_name_splits_back_into_its_server_and_table(server, db, table):
    name = qualified(SERVERS, server, f"{db}.{table}")
    assert split(name) == (server, f"{db}.{table}")
    assert qualified(TableIdentity.DB_TABLE, server, f"{db}.{table}") == f"{db}.{table}"
    topic = f"{server}.{db}.{table}"
    assert server_of_topic(topic) == server
    assert table_of_topic_named(SERVERS, topic) == name
    assert table_of_topic_named(TableIdentity.DB_TABLE, topic) == f"{db}.{table}"


def test_a_server_is_required_to_qualify_a_table():
    with pytest.raises(ValueError, match=r"server of inventory\.stock is unknown"):
        qualified(SERVERS, None, "inventory.stock")
    assert split("inventory.stock") == (None, "inventory.stock")
    assert server_of_topic("inventory_stock") is None


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", NAMED)
def test_every_routed_change_is_named_with_its_server_whatever_the_topic(source, fmt):
    """source.name, a router's key field or the topic's prefix: all say ``prod.eu.dbz``."""
    tables = set()
    for recorded in routed(source, fmt):
        plain, named = decode(recorded.record), decode(recorded.record, identity=SERVERS)
        if isinstance(plain, ChangeEvent):
            assert isinstance(named, ChangeEvent)
            assert named == replace(plain, table=f"{SERVER}.{plain.table}")
            tables.add(named.table)
        elif isinstance(plain, Tombstone) and plain.table is not None:
            assert named == Tombstone(f"{SERVER}.{plain.table}")
        elif isinstance(plain, SchemaChange):
            assert isinstance(named, SchemaChange)
            assert named.table == (plain.table and f"{plain.server}.{plain.table}")
            assert set(named.columns) == {f"{plain.server}.{t}" for t in plain.columns}
        else:
            assert named == plain
    assert tables == {f"{SERVER}.inventory.stock", f"{SERVER}.inventory.products"}


def _first_change(fmt: str) -> SourceRecord:
    return next(
        r.record for r in routed("mariadb", fmt) if isinstance(decode(r.record), ChangeEvent)
    )


def test_the_source_block_names_the_server_before_the_topic():
    record = replace(_first_change("shared"), topic="other.inventory.stock")
    event = decode(record, identity=SERVERS)
    assert isinstance(event, ChangeEvent) and event.table.startswith(f"{SERVER}.inventory.")


def test_a_flattened_change_without_a_server_is_a_dead_letter_naming_the_fix():
    """Flattened without ``__name``, on a shared topic, no router key field: nothing says it."""
    record = replace(_first_change("shared-flat"), key=b'{"id": 1}')
    assert record.topic == "inventory.cdc"
    assert isinstance(decode(record), ChangeEvent)  # the default identity needs no server
    with pytest.raises(DecodeError, match=r"add 'name' to the ExtractNewRecordState add\.fields"):
        decode(record, identity=SERVERS)


def test_a_record_that_does_not_decode_is_labelled_with_its_topic_s_server():
    record = SourceRecord(f"{SERVER}.inventory.stock", 0, 7, b'{"id": 1}', b"not json")
    assert table_hint(record) == "inventory.stock"
    assert table_hint(record, SERVERS) == f"{SERVER}.inventory.stock"
    rejected = route(record, _rules(f"{SERVER}.inventory.stock", identity=SERVERS))
    assert isinstance(rejected, Rejected) and rejected.table == f"{SERVER}.inventory.stock"


def _rules(*tables: str, identity: TableIdentity = SERVERS, prefix: str = "{server}:"):
    lines = ["tables:"]
    for table in tables:
        server = split(table)[0] or ""
        key = prefix.format(server=server) + table.rsplit(".", 1)[1] + ":{id}"
        lines += [f"  {table}:", f'    keys: [{{key: "{key}"}}]']
    return parse_rules("\n".join(lines) + "\n", "r.yaml", identity)


def test_changes_route_to_the_rules_of_their_server_s_table():
    record = _first_change("shared")
    table = decode(record, identity=SERVERS)
    assert isinstance(table, ChangeEvent)
    planned = route(record, _rules(f"{SERVER}.inventory.stock", f"{SERVER}.inventory.products"))
    assert isinstance(planned, Planned) and planned.event.table == table.table and planned.ops
    other = route(record, _rules("shard2.inventory.stock", "shard2.inventory.products"))
    assert isinstance(other, Planned) and other.ops == ()  # another server's table: not covered


def test_a_rule_without_a_server_under_server_identity_names_its_line_and_the_fix():
    with pytest.raises(ConfigError) as err:
        _rules("shard1.inventory.stock", "inventory.products")
    assert (
        "r.yaml:4: tables.inventory.products: table_identity is server_db_table, so changes "
        "name this table '<server>.inventory.products'" in str(err.value)
    )


def test_a_rule_with_a_server_under_the_default_identity_names_its_line_and_the_fix():
    with pytest.raises(ConfigError) as err:
        _rules(
            "inventory.stock", "prod.eu.shard1.inventory.products", identity=TableIdentity.DB_TABLE
        )
    assert (
        "r.yaml:4: tables.prod.eu.shard1.inventory.products: names a server ('prod.eu.shard1'), "
        "but table_identity is db_table" in str(err.value)
    )


def test_two_servers_whose_keys_may_meet_are_refused():
    """One key written from two servers would be gated across incomparable positions."""
    with pytest.raises(ConfigError) as err:
        _rules("shard1.inventory.stock", "shard2.inventory.stock", prefix="")
    assert (
        "r.yaml:5: tables.shard2.inventory.stock: key 'stock:{id}' may name the same keys"
        in str(err.value)
    )
    with pytest.raises(ConfigError, match="may name the same keys"):  # a prefix of the other's
        parse_rules(
            "tables:\n  a.db.t:\n    keys: [{key: 's:{id}'}]\n  b.db.t:\n    keys: [{key: 's:b:{id}'}]\n",
            "r.yaml",
            SERVERS,
        )
    kept = _rules("shard1.inventory.stock", "shard2.inventory.stock")
    assert set(kept.tables) == {"shard1.inventory.stock", "shard2.inventory.stock"}


def test_one_server_s_rules_as_its_database_names_its_tables():
    rules = _rules("shard1.inventory.stock", "shard2.inventory.stock", "shard1.inventory.products")
    mine = rules.of_server("shard1")
    assert set(mine.tables) == {"inventory.stock", "inventory.products"}
    assert mine.tables["inventory.stock"].table == "inventory.stock"
    assert mine.tables["inventory.stock"].keys[0].template.source == "shard1:stock:{id}"
    assert mine.identity is TableIdentity.DB_TABLE
    with pytest.raises(ValueError, match=r"no table of server 'shard3'.*shard1, shard2"):
        rules.of_server("shard3")
    with pytest.raises(ValueError, match="table_identity: db_table"):
        _rules("inventory.stock", identity=TableIdentity.DB_TABLE).of_server("inventory")


def test_snapshot_of_a_server_s_table_says_which_name_the_database_knows():
    with pytest.raises(
        ConfigError, match=r"for server shard1's table give --table inventory\.stock"
    ):
        snapshot_signal(["shard1.inventory.stock"])


def test_table_identity_is_a_validated_setting(monkeypatch):
    assert (
        load_settings(rules=Path("r.yaml"), topics=("a",)).table_identity is TableIdentity.DB_TABLE
    )
    monkeypatch.setenv("CDC_CACHE_TABLE_IDENTITY", "server_db_table")
    assert load_settings(rules=Path("r.yaml"), topics=("a",)).table_identity is SERVERS
    monkeypatch.setenv("CDC_CACHE_TABLE_IDENTITY", "server")
    with pytest.raises(ConfigError, match="table_identity"):
        load_settings(rules=Path("r.yaml"), topics=("a",))


def test_heartbeats_keep_their_server():
    beat = SourceRecord(
        f"__debezium-heartbeat.{SERVER}", 0, 0, b'{"serverName": "x"}', b'{"ts_ms": 1}'
    )
    assert decode(beat, identity=SERVERS) == decode(beat)
    assert isinstance(decode(beat), Heartbeat)


SERVER_RULES = """tables:
  shard1.inventory.stock:
    keys: [{key: "s1:stock:{id}"}]
  shard2.inventory.stock:
    keys: [{key: "s2:stock:{id}"}]
"""


@pytest.mark.parametrize(
    ("server", "said"),
    [
        ([], "rules.yaml:2: tables.shard1.inventory.stock: names a server ('shard1')"),
        (["--server", "shard3"], "has no table of server 'shard3' (servers named: shard1, shard2"),
    ],
)
def test_verify_refuses_rules_it_cannot_map_to_the_database_before_connecting(
    tmp_path, server, said
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(SERVER_RULES)
    args = ["verify", "--db", "mysql://u:p@127.0.0.1:1/db", "--rules", str(rules)]
    result = CliRunner().invoke(main, [*args, "--redis-url", "redis://127.0.0.1:1/0", *server])
    assert result.exit_code == 2 and said in result.output, result.output
