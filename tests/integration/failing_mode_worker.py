"""A worker whose mode thread fails on its third tick, as a bug would: for tests only.

``python -m tests.integration.failing_mode_worker run ...`` is ``cdc-cache run`` with
:meth:`ModeRuntime.tick` raising once it ran twice. It lives under ``tests/``, which
neither the package nor the image ships, so no deployment can start it.
"""

from __future__ import annotations

from cdc_cache.cli import main
from cdc_cache.fallback.runtime import ModeRuntime
from cdc_cache.mode.controller import Decision

FAIL_AT_TICK = 3
_tick = ModeRuntime.tick
_ticks = [0]


def _failing_tick(self: ModeRuntime) -> Decision | None:
    _ticks[0] += 1
    if _ticks[0] == FAIL_AT_TICK:
        msg = "a bug in the mode loop"
        raise ZeroDivisionError(msg)
    return _tick(self)


if __name__ == "__main__":
    ModeRuntime.tick = _failing_tick  # type: ignore[method-assign]
    main()
