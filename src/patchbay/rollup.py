"""One ``/v1/stats`` for the whole server: the workers' own counters, added up.

With ``--workers N`` each worker counts what it served itself (requests per database, latency
histograms, pools, webhook, push and CRM outcomes) and publishes that every second
(``Stats.publish``). The worker that answers ``/v1/stats`` merges the others' latest snapshots
into its own counters here, with pure functions over the decoded JSON:

- numbers add up, except the few in ``HIGHEST`` that are levels or maxima, not counts;
- a histogram (a dict with ``counts``, from ``Histogram.summary``) adds its buckets up and has
  its percentiles computed again from the sum;
- ``true`` only when every worker says so (a server is ``up`` when every worker sees it up);
- lists of objects (the servers of a database, in configuration order) merge by position;
- text (a URL, a kind, the last error) is the first worker's that has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import Any, Final

from patchbay.stats import Histogram

# Levels and maxima: the highest worker's value, not a sum. total_requests and uptime_seconds
# are the whole server's already (each worker reads the shared counters), so the freshest wins.
HIGHEST: Final = frozenset(
    {"uptime_seconds", "total_requests", "consecutive_failures", "max_in_flight", "depth"}
)


def merge(values: Sequence[Any], key: str | None = None) -> Any:
    """Several workers' values of one field (``key`` names it), as one server's."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        objects = [v for v in present if isinstance(v, dict)]
        if "counts" in first:
            return _histogram(objects)
        keys = list(dict.fromkeys(k for obj in objects for k in obj))
        return {k: merge([obj.get(k) for obj in objects], k) for k in keys}
    if isinstance(first, list):
        lists = [v for v in present if isinstance(v, list)]
        return [merge(list(items)) for items in zip_longest(*lists)]
    if isinstance(first, bool):
        return all(v is True for v in present)
    if isinstance(first, int | float):
        numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
        return max(numbers) if key in HIGHEST else sum(numbers)
    return first


def _histogram(objects: list[dict[str, Any]]) -> dict[str, Any]:
    counts = [sum(column) for column in zip_longest(*(o["counts"] for o in objects), fillvalue=0)]
    return Histogram.of(counts).summary()
