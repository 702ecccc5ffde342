"""While a flow runs, the cyclic collector runs rarely and skips what existed at the start,
and threads hand the interpreter over sooner."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from dataflows.run import SWITCH_INTERVAL_S, YOUNG_COLLECTION_EVERY, run_flow


class _Cyclic:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _run(step: Any) -> list[Any]:
    seen: list[Any] = []
    flow = Dataflow("collector")
    items = op.input("in", flow, TestingSource([1]))
    op.output("out", op.map("look", items, step), TestingSink(seen))
    run_flow(flow, workers=1, process_id=None, addresses=[], epoch_interval_ms=10, recovery=None)
    return seen


def test_the_collector_is_tuned_while_the_flow_runs_and_restored_after() -> None:
    before = gc.get_threshold()
    seen = _run(lambda _: (gc.get_threshold(), gc.get_freeze_count()))
    ((threshold, frozen),) = seen
    assert threshold == (YOUNG_COLLECTION_EVERY, 20, 20)
    assert frozen > 0  # the modules, rules and settings built before the run
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_from_before_the_run_is_freed_once_it_ends() -> None:
    kept = [_Cyclic()]
    gone = weakref.ref(kept[0])
    _run(lambda item: kept.clear() or item)  # released while frozen
    gc.collect()
    assert gone() is None


def test_threads_hand_the_interpreter_over_sooner_while_the_flow_runs_and_as_before_after() -> None:
    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL_S
    (during,) = _run(lambda _: sys.getswitchinterval())
    assert during == SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before
