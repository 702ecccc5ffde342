"""Suite-wide plugins: the fault scenarios' table, registered in every process (the
pytest-xdist controller too, which runs no test but prints the table); and each test's
own bounds on label values, so the names one test makes up do not fold another's."""

from collections.abc import Iterator

import pytest

from cdc_cache.core import labels
from tests.integration.scenario_table import NAME, ScenarioTable


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ScenarioTable(config), NAME)


@pytest.fixture(autouse=True)
def fresh_label_bounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process runs many tests, which name hundreds of tables between them."""
    monkeypatch.setattr(labels, "TABLES", labels.Bounded("table", 100))
    monkeypatch.setattr(labels, "SOURCES", labels.Bounded("source", 32))
    yield
