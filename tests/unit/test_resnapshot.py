"""``cdc-cache snapshot``: the signal row Debezium's source channel expects, and bad input
stopped before any database is touched."""

import orjson
import pytest
from click.testing import CliRunner

from cdc_cache.cli import main
from cdc_cache.core.errors import ConfigError
from cdc_cache.core.events import ChangeEvent, Op, SourceRecord
from cdc_cache.core.positions import SourcePosition
from cdc_cache.lineage.model import Change, Limits, PartitionState, Verdict, advance, begin, judge
from cdc_cache.source.envelope import decode
from cdc_cache.tools.devstack.debezium import ConnectorSettings
from cdc_cache.tools.resnapshot import snapshot_signal


def test_the_signal_asks_for_an_incremental_snapshot_of_each_table_once():
    signal = snapshot_signal(["inv.stock", "inv.products", "inv.stock"], "resnap-1")
    assert (signal.id, signal.type) == ("resnap-1", "execute-snapshot")
    assert orjson.loads(signal.data) == {
        "data-collections": ["inv.stock", "inv.products"],
        "type": "incremental",
    }


def test_each_signal_gets_its_own_id():
    assert snapshot_signal(["inv.stock"]).id != snapshot_signal(["inv.stock"]).id


@pytest.mark.parametrize("table", ["stock", "inv.stock; DROP TABLE x", "a.b.c", ""])
def test_a_table_not_named_db_dot_table_is_refused(table):
    with pytest.raises(ConfigError, match=r"<database>\.<table>"):
        snapshot_signal([table])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--signal-table", "inv.signal", "--table", "stock"], "--table 'stock'"),
        (["--signal-table", "signal", "--table", "inv.stock"], "--signal-table 'signal'"),
        (["--signal-table", "a.b`c", "--table", "inv.stock"], "--signal-table"),
    ],
)
def test_bad_names_exit_2_before_connecting(args, said):
    # the database URL points nowhere: a name is refused before any connection is tried
    result = CliRunner().invoke(main, ["snapshot", "--db", "mysql://u:p@127.0.0.1:1/x", *args])
    assert result.exit_code == 2, result.output
    assert said in result.output


def test_an_unreachable_database_exits_2_naming_it():
    result = CliRunner().invoke(
        main,
        ["snapshot", "--db", "mysql://u:secret@127.0.0.1:1/inv", "--signal-table",
         "inv.debezium_signal", "--table", "inv.stock"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "cannot connect to mysql://127.0.0.1:1/inv" in result.output
    assert "secret" not in result.output


def test_the_local_connector_is_given_its_signal_table(tmp_path):
    settings = ConnectorSettings(
        source="mariadb", host="h", port=1, user="u", password="p", topic_prefix="t",
        state_dir=tmp_path, signal_table="inv.debezium_signal",
    )  # fmt: skip
    assert settings.properties()["signal.data.collection"] == "inv.debezium_signal"
    without = ConnectorSettings(
        source="mariadb", host="h", port=1, user="u", password="p", topic_prefix="t",
        state_dir=tmp_path,
    )  # fmt: skip
    assert "signal.data.collection" not in without.properties()


def _chunk_row(row_id: int, pos: int, snapshot: str = "incremental") -> SourceRecord:
    """An incremental snapshot row as the MySQL connector writes it on MariaDB (recorded
    shape): the chunk's rows share the binlog position of the mark that closed the chunk."""
    source = {
        "version": "3.1.2.Final", "connector": "mysql", "name": "p1", "ts_ms": 1796015941000,
        "snapshot": snapshot, "db": "inv", "table": "stock", "server_id": 1, "gtid": None,
        "file": "mysql-bin.000001", "pos": pos, "row": 1, "thread": None, "query": None,
    }  # fmt: skip
    value = {"before": None, "after": {"id": row_id, "qty": 5}, "source": source, "op": "r",
             "ts_ms": 1796015941319, "transaction": None}  # fmt: skip
    return SourceRecord(
        "p1.inv.stock", 0, row_id, orjson.dumps({"id": row_id}), orjson.dumps(value)
    )


def test_an_incremental_snapshot_row_is_a_read_at_its_chunk_s_position_in_its_lineage():
    decoded = decode(_chunk_row(7, 6316))
    assert isinstance(decoded, ChangeEvent)
    assert decoded.op is Op.READ
    assert decoded.position == SourcePosition(0, 1, 6316, 1)
    assert not decoded.origin.snapshot, "no lineage switch, no settling in ttl mode"
    # After streamed changes on the partition, two rows of one chunk (equal positions,
    # different keys) and a later change: all in order, in the same epoch.
    state = PartitionState.start("p1", 0)
    items = [
        Change(0, SourcePosition(0, 1, 5000, 0), decoded.origin),
        Change(1, decoded.position, decoded.origin),
        Change(2, decode(_chunk_row(8, 6316)).position, decoded.origin),  # type: ignore[union-attr]
        Change(3, SourcePosition(0, 1, 7000, 0), decoded.origin),
    ]
    for item in items:
        state = begin(state, item.offset)
        judgement = judge(state, item, Limits(rewind_files=1, rewind_wal_bytes=1000))
        assert (judgement.verdict, judgement.epoch) == (Verdict.IN_ORDER, 0)
        state = advance(state, item, judgement, judgement.epoch)
