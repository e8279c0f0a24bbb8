"""What a request target may look like before the proxy classifies or forwards it.

The proxy routes on the decoded path and sends the raw target on to the homeserver: only an
origin-form target (one leading "/") is sure to stay on the configured homeserver.
"""

from __future__ import annotations


def target_problem(target: str) -> str | None:
    """Why the raw request target (path and query) may not be served, or None."""
    if not target.startswith("/") or target.startswith("//"):
        return "only a path starting with a single '/' is accepted as request target"
    if "#" in target:  # never part of a request target; URL parsers would cut it off
        return "a request target carries no fragment"
    return None
