"""Test-suite plugins: real servers for the integration tier (see tests/integration)."""

pytest_plugins = [
    "tests.integration.fixtures_stack",
    "tests.integration.fixtures_redis",
    "tests.integration.fixtures_browser",
]
