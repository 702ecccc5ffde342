import pytest

from cdc_cache.core.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "rediss://app:p%40ss@cache:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://app:***@cache:6380/0?ssl_ca_certs=/ca.pem",
        ),
        (
            "redis://cache:6379/0?password=hunter2&cluster=true",
            "redis://cache:6379/0?password=***&cluster=true",
        ),
        ("https://user:pw@registry:8081", "https://user:***@registry:8081"),
        ("http://registry:8081?token=abc", "http://registry:8081?token=***"),
        ("redis://app@cache/0", "redis://app@cache/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("http://u:secret@[::1:80/", "http://***@[::1:80/"),
    ],
)
def test_passwords_never_survive(url, shown):
    assert redact_url(url) == shown
