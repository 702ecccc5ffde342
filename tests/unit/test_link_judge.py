"""What verify says of dependent keys: links the rows imply, judged against the index."""

from __future__ import annotations

import pytest

from cdc_cache.core.positions import SourcePosition
from cdc_cache.sink.versions import encode_version
from cdc_cache.tools.link_judge import (
    Link,
    LinkFinding,
    LinkState,
    expected_links,
    judge_link,
)
from cdc_cache.tools.verify_report import Report, TableReport
from tests.unit.test_dependencies import RULES

PRODUCTS = RULES.tables["catalog.products"]
JOIN = RULES.tables["catalog.product_tags"]
LINK = Link("catalog.brands:7", "product:1:page", "catalog.products:1")


def at(n: int) -> SourcePosition:
    return SourcePosition(0, 1, n, 0)


def present(n: int) -> str:
    return "+" + at(n).encode()


def deleted(n: int) -> str:
    return encode_version(at(n), delete=True)


def test_a_product_row_links_its_page_to_its_brand() -> None:
    row = {"id": 1, "brand_id": 7, "name": "shoe"}
    assert expected_links(RULES, PRODUCTS, row, ("id",)) == [LINK]


def test_a_product_without_a_brand_links_nothing() -> None:
    row = {"id": 1, "brand_id": None, "name": "shoe"}
    assert expected_links(RULES, PRODUCTS, row, ("id",)) == []


def test_a_join_row_links_the_page_to_the_tag_it_names() -> None:
    row = {"product_id": 1, "tag_id": 3}
    assert expected_links(RULES, JOIN, row, ("product_id", "tag_id")) == [
        Link("catalog.tags:3", "product:1:page", "catalog.product_tags:1:3")
    ]


@pytest.mark.parametrize(
    ("state", "finding"),
    [
        pytest.param(LinkState(None, None, True, deleted(5)), LinkFinding.UNLINKED, id="no member"),
        pytest.param(
            LinkState("-" + at(4).encode() + "00000001", None, False, None),
            LinkFinding.UNLINKED,
            id="member taken out",
        ),
        pytest.param(LinkState(present(4), at(9).encode(), False, None), None, id="not cached"),
        pytest.param(
            LinkState(present(4), at(9).encode(), True, None),
            LinkFinding.UNJUDGED,
            id="cached without a version",
        ),
        pytest.param(
            LinkState(present(4), at(9).encode(), True, deleted(9)),
            None,
            id="deleted at the parent's change, filled since",
        ),
        pytest.param(
            LinkState(present(4), at(9).encode(), True, deleted(12)),
            None,
            id="deleted by a newer change",
        ),
        pytest.param(
            LinkState(present(4), at(9).encode(), True, deleted(8)),
            LinkFinding.ESCAPED,
            id="cached past the parent's change",
        ),
        pytest.param(
            LinkState(present(6), None, True, deleted(5)),
            LinkFinding.ESCAPED,
            id="cached past the change that linked it",
        ),
        pytest.param(
            LinkState(present(6), None, True, deleted(6)), None, id="deleted by its link's change"
        ),
    ],
)
def test_judge_link(state: LinkState, finding: LinkFinding | None) -> None:
    assert judge_link(state) is finding


def test_an_unlinked_or_escaped_key_fails_verify_and_an_unjudged_one_does_not() -> None:
    table = TableReport("catalog.products", links=3)
    table.add_link(LinkFinding.UNJUDGED, "product:2:page: cached without a version")
    report = Report([table])
    assert report.exit_code == 0
    assert report.as_json()["link_findings"]["unjudged"] == 1
    for finding in (LinkFinding.UNLINKED, LinkFinding.ESCAPED):
        failing = TableReport("catalog.products", links=3)
        failing.add_link(finding, "product:1:page under catalog.brands:7")
        assert Report([failing]).exit_code == 1
        assert f"{finding.value} 1" in Report([failing]).format()
