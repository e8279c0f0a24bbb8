"""Hypothesis strategies for what the proxy parses from the network (issue 13, item 4): junk JSON
of every shape, and near-valid values (a genuine object with a field removed, retyped, made
huge, deeply nested or given broken base64), as a homeserver or a peer could send them.

Strings include what `json.loads` makes of `"\\ud800"`: a lone surrogate, which has no UTF-8
form and breaks anything that encodes it unguarded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded runs, so the whole fuzz tier stays within about a minute on a busy CI machine.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_LIGHT = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))

# Text as JSON can carry it: any code point, lone surrogates included (often: hypothesis
# draws them rarely by itself).
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
text = st.text(st.characters(codec=None), max_size=24) | surrogates | st.sampled_from(
    ["", "\ud800", "m.room_key", "!room:test", "@alice:test", "ALICEDEV", "A" * 300]
)
huge_ints = st.sampled_from([2**53, -(2**53) - 1, 2**63, 2**64 + 1, 10**40, -1, 0])
numbers = st.integers(-(2**70), 2**70) | huge_ints | st.floats(allow_nan=True)
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=16,
)
bad_base64 = st.sampled_from(
    ["", "=", "!!!!", "AAA", "AAAA====", "a" * 43, "a" * 45 + "=", "\ud800", "ZZZZ" * 300]
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of lists and objects around `leaf`."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


deep = st.integers(50, 400).map(nested)
# What replaces a field of a genuine object: anything, or something chosen to hurt.
hostile = json_values | huge_ints | bad_base64 | deep | surrogates


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found.extend(_paths(item, (*prefix, index)))
    return found


def _apply(value: Any, path: tuple[Any, ...], action: str, new: Any) -> Any:
    if not path:
        return new if action == "set" else value
    holder = value
    for key in path[:-1]:
        holder = holder[key]
    last = path[-1]
    if action == "delete":
        del holder[last]
    elif action == "set":
        holder[last] = new
    elif action == "add" and isinstance(holder, dict):
        holder[f"{last}_extra"] = new
    return value


@st.composite
def near_valid(draw: st.DrawFn, template: Any, extra: st.SearchStrategy[Any] = hostile) -> Any:
    """`template` (a genuine value) with one to three of its fields deleted, replaced by a
    hostile value, or joined by a new one; sometimes the whole thing replaced. What is drawn
    does not depend on the template's shape (which field a change hits is picked from what is
    drawn), so a template that varies between runs (a fresh sync body) stays reproducible."""
    value = copy.deepcopy(template)
    if draw(st.integers(0, 19)) == 0:
        return draw(extra)
    changes = draw(st.lists(st.tuples(st.integers(0, 2**16), st.sampled_from(
        ["delete", "set", "set", "add"]), extra), min_size=1, max_size=3))
    for pick, action, new in changes:
        paths = _paths(value)
        if paths:
            value = _apply(value, paths[pick % len(paths)], action, new)
    return value


def shapes(*templates: Any) -> st.SearchStrategy[Any]:
    """Near-valid versions of any of `templates`, and now and then plain junk."""
    return st.one_of(*(near_valid(t) for t in templates), json_values)


def never_raises(call: Callable[[], Any], *allowed: type[BaseException]) -> Any:
    """Run `call`; an exception other than the documented `allowed` ones fails the test."""
    try:
        return call()
    except allowed:
        return None
