"""``verify`` of index keys, its pure part: the members rows imply, judged, reported."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc_cache.tools.index_judge import StoredIndex, expected_indexes, judge_index
from cdc_cache.tools.verify_judge import Finding, derive
from cdc_cache.tools.verify_report import Report, TableReport
from tests.unit.test_index_keys import QUIET, TABLE, row

PRODUCTS = QUIET.tables[TABLE]


def _rows_members(*rows: dict[str, object]) -> dict[str, dict[str, str | None]]:
    members = [m for r in rows for m in derive(PRODUCTS, r, ["id"]).members]
    return {key: index.members for key, index in expected_indexes(members).items()}


def test_rows_imply_their_member_in_each_index_with_its_score():
    implied = _rows_members(row(1, 5, 12.5), row(2, 5, 3), row(3, 6, 1, group=8))
    assert implied == {
        "category:5:by_price": {"1": "12.5", "2": "3"},
        "category:6:by_price": {"3": "1"},
        "group:9:members": {"1": None, "2": None},
        "group:8:members": {"3": None},
    }


def test_an_index_holding_what_its_rows_imply_is_clean():
    expected = {"1": "12.5", "2": "3"}
    stored = StoredIndex({"1": 12.5, "2": 3.0})
    assert judge_index(expected, stored, complete=True) == []
    assert judge_index({"1": None}, StoredIndex({"1": None}), complete=True) == []


def test_a_member_absent_or_scored_otherwise_is_stale():
    issues = judge_index({"1": "12.5", "2": "3"}, StoredIndex({"2": 4.0}), complete=False)
    assert [(i.finding, i.member) for i in issues] == [
        (Finding.STALE, "1"),
        (Finding.STALE, "2"),
    ]
    assert "absent" in issues[0].detail and "scored 4.0, row gives 3" in issues[1].detail


def test_a_stray_member_is_unexpected_only_when_every_row_was_read():
    stored = StoredIndex({"1": 1.0, "99": 2.0})
    assert judge_index({"1": "1"}, stored, complete=False) == []
    (issue,) = judge_index({"1": "1"}, stored, complete=True)
    assert (issue.finding, issue.member) == (Finding.UNEXPECTED, "99")
    # An index key no row renders: every member in it is a stray.
    assert [i.member for i in judge_index({}, stored, complete=True)] == ["1", "99"]


def test_an_absent_index_is_missing_once_and_says_whether_a_snapshot_must_rebuild_it():
    (expired,) = judge_index({"1": "1", "2": "2"}, StoredIndex({}), complete=True)
    assert (expired.finding, expired.member) == (Finding.MISSING, None)
    assert "2 members expected" in expired.detail and "snapshot" not in expired.detail
    (held,) = judge_index({"1": "1"}, StoredIndex({}, left_holding=True), complete=True)
    assert "absent until `cdc-cache snapshot` rebuilds it" in held.detail
    assert judge_index({}, StoredIndex({}), complete=True) == []


def test_an_index_key_of_another_type_is_stale_whole():
    (issue,) = judge_index({"1": "1"}, StoredIndex({}, wrong_type=True), complete=True)
    assert (issue.finding, issue.member) == (Finding.STALE, None)


MEMBERS = st.dictionaries(
    st.sampled_from("abcdef"), st.integers(-3, 3).map(lambda n: repr(float(n))), max_size=6
)


@given(expected=MEMBERS, stored=MEMBERS, complete=st.booleans())
def test_findings_name_exactly_the_members_that_differ(expected, stored, complete):
    held = StoredIndex({m: float(s) for m, s in stored.items()})
    issues = judge_index(expected, held, complete=complete)
    if not stored:
        assert [(i.finding, i.member) for i in issues] == (
            [(Finding.MISSING, None)] if expected else []
        )
        return
    wrong = {m for m, s in expected.items() if stored.get(m) != s}
    strays = set(stored) - set(expected) if complete else set()
    assert {i.member for i in issues if i.finding is Finding.STALE} == wrong
    assert {i.member for i in issues if i.finding is Finding.UNEXPECTED} == strays
    assert len(issues) == len(wrong) + len(strays)  # one finding per member at most


def test_index_findings_fail_the_check_like_keys_and_show_in_both_reports():
    table = TableReport("shop.products", set_keys=0, indexes=2, members=10)
    table.add_index(Finding.MISSING, "category:7:by_price: absent, 3 members expected")
    report = Report([table])
    assert report.exit_code == 0 and not report.clean
    table.add_index(Finding.UNEXPECTED, "category:5:by_price: member 99: no row implies it")
    assert report.exit_code == 1
    text = report.format()
    assert "index keys: 2 indexes, 10 members judged: stale 0  unexpected 1  missing 1" in text
    assert "index unexpected: category:5:by_price: member 99" in text
    assert "--repair leaves" not in text
    table.repaired = table.findings.copy()  # --repair ran: index findings are left
    assert "--repair leaves index keys as they are" in report.format()
    data = report.as_json()
    assert data["index_findings"] == {"stale": 0, "unexpected": 1, "missing": 1}
    assert data["members"] == 10 and data["exit_code"] == 1
    assert data["tables"][0]["index_examples"]["missing"] == [
        "category:7:by_price: absent, 3 members expected"
    ]


def test_a_row_the_rules_cannot_render_yields_nothing_and_says_why():
    unpriced = {**row(4, 5), "price": None}
    derived = derive(PRODUCTS, unpriced, ["id"])
    assert (derived.sets, derived.deletes, derived.members) == ((), (), ())
    assert derived.unrenderable is not None and "'price'" in derived.unrenderable
    assert derive(PRODUCTS, row(4, 5), ["id"]).unrenderable is None


def test_unrenderable_rows_show_in_both_reports_without_failing_the_check():
    table = TableReport("shop.products")
    table.add_unrenderable("{'id': 4}: index scores by column 'price': None is not a number")
    report = Report([table])
    assert report.exit_code == 0 and not report.clean
    assert "1 rows the rules cannot render" in report.format()
    assert "unrenderable: {'id': 4}" in report.format()
    assert report.as_json()["unrenderable"] == 1
    assert report.as_json()["tables"][0]["unrenderable_examples"] == table.unrenderable_examples


def test_a_read_of_some_members_tells_an_index_without_them_from_an_absent_one():
    """The inspector's and trace's reads: the members asked about, and whether the key exists."""
    (stale,) = judge_index({"1": "1"}, StoredIndex({}, exists=True), complete=True)
    assert (stale.finding, stale.member) == (Finding.STALE, "1")
    (missing,) = judge_index({"1": "1"}, StoredIndex({}, exists=False), complete=True)
    assert (missing.finding, missing.member) == (Finding.MISSING, None)
    assert judge_index({}, StoredIndex({}, exists=True), complete=True) == []
    assert StoredIndex({"1": 1.0}, exists=False).absent is False  # a member read is there
