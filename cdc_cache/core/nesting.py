"""How deeply JSON-shaped data nests, measured without recursion.

The JSON parser reads values nested up to 1,024 levels, but the encoder writes at most
:data:`ENCODER_MAX_DEPTH` and Python's own recursion (``str``, ``==``, ``repr``) gives up
near 1,000: a hostile row can be read yet not written back, compared or rendered. The
dead-letter path measures depth with this loop (no recursion, stops at a limit) before
it walks or encodes anything.
"""

from __future__ import annotations

from typing import Any, Final

# orjson.dumps refuses anything nested deeper than this ("Recursion limit reached").
ENCODER_MAX_DEPTH: Final = 254


def nesting_depth(doc: Any, limit: int) -> int:
    """Levels of lists and mappings in ``doc`` (a scalar is 0), counted up to ``limit + 1``.

    Stops as soon as one path goes deeper than ``limit``: a document nested 1,000 levels
    deep is known to be too deep after ``limit`` steps down.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(doc, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        pending.extend((child, depth) for child in children)
    return deepest
