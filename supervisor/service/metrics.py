"""Prometheus metrics of the service, through prometheus-client (its own registry per app).

Per call (counted where the API makes it):
    neko_calls_total{plugin, entry, outcome}      outcome: ok, entry_failed, timeout, crashed,
                                                  unavailable, overloaded, invalid_arguments,
                                                  cancelled (the client hung up), error (a bug)
    neko_call_duration_seconds{plugin, entry}     histogram
Read from `Supervisor.statuses()` at each scrape, so they are never stale:
    neko_plugin_state{plugin, state}              1 for the plugin's current state, 0 for the others
    neko_plugin_restarts_total{plugin}
    neko_worker_memory_rss_bytes{plugin}          the worker's whole process tree
    neko_worker_cpu_seconds_total{plugin}         CPU time of the current worker's tree
    neko_worker_processes{plugin}
    neko_plugin_in_flight_calls{plugin}, neko_plugin_queued_calls{plugin}

Labels only ever hold discovered plugin ids and their entries' ids (an unknown
entry is never counted), so the series stay bounded however long it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.lifecycle import PluginState
from supervisor.slot import PluginStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a fast async entry (~100 us) to the longest timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    def __init__(self, statuses: Callable[[], list[PluginStatus]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "neko_calls", "Calls made through the HTTP API, by outcome.", ("plugin", "entry", "outcome"), registry=self.registry
        )
        self.latency = Histogram(
            "neko_call_duration_seconds", "Time from the request's arrival to the call's end.", ("plugin", "entry"),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_PluginCollector(statuses))

    def observe_call(self, plugin_id: str, entry_id: str, outcome: str, seconds: float) -> None:
        self.calls.labels(plugin_id, entry_id, outcome).inc()
        self.latency.labels(plugin_id, entry_id).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PluginCollector(Collector):
    def __init__(self, statuses: Callable[[], list[PluginStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterable[Metric]:
        statuses = self._statuses()
        state = GaugeMetricFamily("neko_plugin_state", "1 for the plugin's current state.", labels=("plugin", "state"))
        restarts = CounterMetricFamily("neko_plugin_restarts", "Automatic worker restarts (after a crash or a failed start) since the service started.", labels=("plugin",))
        memory = GaugeMetricFamily("neko_worker_memory_rss_bytes", "Resident memory of the worker's process tree.", labels=("plugin",))
        cpu = CounterMetricFamily("neko_worker_cpu_seconds", "CPU time of the current worker's process tree.", labels=("plugin",))
        processes = GaugeMetricFamily("neko_worker_processes", "Processes in the worker's tree.", labels=("plugin",))
        in_flight = GaugeMetricFamily("neko_plugin_in_flight_calls", "Calls the worker is running.", labels=("plugin",))
        queued = GaugeMetricFamily("neko_plugin_queued_calls", "Calls waiting for a place.", labels=("plugin",))
        for status in statuses:
            for each in PluginState:
                state.add_metric((status.id, each.value), 1.0 if status.state is each else 0.0)
            restarts.add_metric((status.id,), status.restarts)
            if status.memory_rss is not None:
                memory.add_metric((status.id,), status.memory_rss)
            if status.cpu_time is not None:
                cpu.add_metric((status.id,), status.cpu_time)
            if status.processes is not None:
                processes.add_metric((status.id,), status.processes)
            in_flight.add_metric((status.id,), status.in_flight)
            queued.add_metric((status.id,), status.queued)
        return [state, restarts, memory, cpu, processes, in_flight, queued]
