"""What a request target may look like before the proxy classifies or forwards it.

The proxy routes on the percent-decoded path and sends the raw target on to the homeserver; both
must name the same endpoint for the homeserver and for any path-normalising hop before it. So
only origin-form targets (one leading "/") pass, and never a "." or ".." segment, raw or
percent-encoded: a hop that resolves them could turn what the proxy saw as a plain request into
a room send or an upload it never encrypted.
"""

from __future__ import annotations

from urllib.parse import unquote

DOT_SEGMENTS = frozenset({".", ".."})


def target_problem(target: str) -> str | None:
    """Why the raw request target (path and query) may not be served, or None."""
    if not target.startswith("/") or target.startswith("//"):
        return "only a path starting with a single '/' is accepted as request target"
    if "#" in target:  # never part of a request target; URL parsers would cut it off
        return "a request target carries no fragment"
    return path_problem(target.split("?", 1)[0])


def path_problem(raw_path: str) -> str | None:
    """Dot segments in the raw path, or in the path as a hop that decodes first reads it."""
    for view in (raw_path, unquote(raw_path)):
        if DOT_SEGMENTS.intersection(view.split("/")):
            return "'.' and '..' path segments are not accepted"
    return None


def merged_slashes(path: str) -> str:
    """The path as a hop that merges repeated slashes reads it (nginx does by default)."""
    while "//" in path:
        path = path.replace("//", "/")
    return path
