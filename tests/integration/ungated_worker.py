"""A worker with its version gate disabled: a deliberately injected bug, for tests only.

``python -m tests.integration.ungated_worker run ...`` is ``cdc-cache run`` with an apply
script that writes an older change over a newer one (a change at the very position a key
holds is still a duplicate). It lives under ``tests/``, which neither the package nor the
image ships, so no deployment can start it; the consistency inspector must catch what it
does (``tests/integration/test_faults.py``).
"""

from __future__ import annotations

import hashlib

from cdc_cache.cli import main
from cdc_cache.sink import scripts

GATE = "elseif version > current then"
_gated = scripts.apply_script


def _ungated(*, allow_oom: bool = False) -> tuple[str, str]:
    source, _ = _gated(allow_oom=allow_oom)
    assert source.count(GATE) == 1, f"lua/apply.lua no longer gates with {GATE!r}: update this"
    patched = source.replace(GATE, "elseif true then")
    return patched, hashlib.sha1(patched.encode(), usedforsecurity=False).hexdigest()


if __name__ == "__main__":
    scripts.apply_script = _ungated  # type: ignore[assignment]
    main()
