"""Suite-wide plugins: the fault scenarios' table, registered in every process (the
pytest-xdist controller too, which runs no test but prints the table)."""

import pytest

from tests.integration.scenario_table import NAME, ScenarioTable


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ScenarioTable(config), NAME)
