"""Each plugin's recent calls and restarts in fixed time buckets: the dashboard's charts.

    bucket = BUCKET_SECONDS of one plugin's life: calls, failures, mean and max
             latency of the calls that ended in it, restarts seen in it

Only the last KEPT_BUCKETS of a plugin are kept (ten minutes), so memory is
bounded by the number of plugins however long the service runs. Buckets are
indexed on the monotonic clock (a wall-clock jump must not reorder them) and
labelled with wall-clock time for the browser's time axis.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BUCKET_SECONDS = 5.0
KEPT_BUCKETS = 120


@dataclass(slots=True)
class Bucket:
    index: int  # monotonic time // BUCKET_SECONDS
    calls: int = 0
    failures: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    restarts: int = 0


class CallHistory:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        bucket_seconds: float = BUCKET_SECONDS,
        kept: int = KEPT_BUCKETS,
    ) -> None:
        self._clock = clock
        self._wall_minus_clock = wall_clock() - clock()
        self._first_index = int(clock() // bucket_seconds)
        self.bucket_seconds = bucket_seconds
        self.kept = kept
        self._buckets: dict[str, collections.deque[Bucket]] = {}
        self._restarts_seen: dict[str, int] = {}

    def record_call(self, plugin_id: str, seconds: float, failed: bool) -> None:
        bucket = self._current(plugin_id)
        bucket.calls += 1
        bucket.failures += failed
        bucket.total_seconds += seconds
        bucket.max_seconds = max(bucket.max_seconds, seconds)

    def note_restarts(self, plugin_id: str, total: int) -> None:
        """The plugin's restart count as its status reports it now; a rise lands
        in the current bucket. The first look only sets the baseline."""
        seen = self._restarts_seen.get(plugin_id)
        self._restarts_seen[plugin_id] = total
        if seen is not None and total > seen:
            self._current(plugin_id).restarts += total - seen

    def series(self, plugin_id: str) -> list[dict[str, Any]]:
        """The last `kept` buckets up to now (none from before this history began),
        oldest first, empty ones included: a chart's x axis is time, not activity."""
        now_index = self._index()
        stored = {bucket.index: bucket for bucket in self._buckets.get(plugin_id, ())}
        rows = []
        for index in range(max(now_index - self.kept + 1, self._first_index), now_index + 1):
            bucket = stored.get(index) or Bucket(index)
            rows.append({
                "t": round(index * self.bucket_seconds + self._wall_minus_clock, 3),
                "calls": bucket.calls,
                "failures": bucket.failures,
                "mean_ms": round(1000 * bucket.total_seconds / bucket.calls, 3) if bucket.calls else None,
                "max_ms": round(1000 * bucket.max_seconds, 3) if bucket.calls else None,
                "restarts": bucket.restarts,
            })
        return rows

    def _index(self) -> int:
        return int(self._clock() // self.bucket_seconds)

    def _current(self, plugin_id: str) -> Bucket:
        index = self._index()
        buckets = self._buckets.get(plugin_id)
        if buckets is None:
            buckets = self._buckets[plugin_id] = collections.deque(maxlen=self.kept)
        if not buckets or buckets[-1].index != index:
            buckets.append(Bucket(index))
        return buckets[-1]
