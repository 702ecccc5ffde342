"""Keep secrets out of logs and error messages: URLs are shown without their passwords.

Redis, Schema Registry and database URLs may carry ``user:password@`` or a
``password=``/``token=`` query parameter; every URL that is logged or put into an error
passes through :func:`redact_url` first.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK: Final = "***"
_SECRET_PARAM: Final = re.compile(r"pass|secret|token|key$|credential", re.IGNORECASE)
_USERINFO: Final = re.compile(r"(?<=//)([^@/?#]*)@")


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and secret-looking query values masked.

    A URL that does not parse is masked between ``//`` and ``@`` all the same.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return _USERINFO.sub(f"{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    masked = [(name, MASK if _SECRET_PARAM.search(name) else value) for name, value in query]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(masked, safe="*/")))
