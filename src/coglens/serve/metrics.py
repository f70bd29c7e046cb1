"""Prometheus metrics of one server (own registry, so several apps in one process do not collide).

Batching is visible in ``coglens_engine_batch_size`` (rows of every decode step) and
``coglens_engine_max_running``; the engine's own counters are read from ``EngineStats`` at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engine import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("coglens_requests", "HTTP requests answered, by protocol and status code.",
                                ["protocol", "status"], registry=r)
        self.request_seconds = Histogram("coglens_request_duration_seconds",
                                         "Wall time of HTTP requests, streaming included.", ["protocol"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.first_token_seconds = Histogram("coglens_time_to_first_token_seconds",
                                             "From queueing to the first generated token.", ["protocol"],
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.generation_seconds = Histogram("coglens_generation_duration_seconds",
                                            "From queueing to the last token of a request.", ["protocol"],
                                            buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("coglens_prompt_tokens", "Prompt tokens fed to the model (image tokens "
                                     "included).", ["protocol"], registry=r)
        self.completion_tokens = Counter("coglens_completion_tokens", "Tokens generated.", ["protocol"], registry=r)
        self.queue_depth = Gauge("coglens_queue_depth", "Requests waiting for a place in the batch.", registry=r)
        self.running = Gauge("coglens_running_requests", "Requests in the running batch.", registry=r)
        self.batch_size = Histogram("coglens_engine_batch_size", "Rows of each engine decode step.",
                                    buckets=_BATCH_BUCKETS, registry=r)

    def watch_engine(self, stats: Callable[[], EngineStats]) -> None:
        """Export the engine's own counters, read fresh at every scrape."""
        self.registry.register(_EngineStatsCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- coglens.engine.SchedulerMetrics -------------------------------------------------------------

    def observe_step(self, batch_size: int, waiting: int, running: int) -> None:
        if batch_size:
            self.batch_size.observe(batch_size)
        self.queue_depth.set(waiting)
        self.running.set(running)

    def observe_first_token(self, protocol: str, seconds: float) -> None:
        self.first_token_seconds.labels(protocol).observe(seconds)

    def observe_finished(self, protocol: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.labels(protocol).inc(prompt_tokens)
        self.completion_tokens.labels(protocol).inc(completion_tokens)

    def observe_group_done(self, protocol: str, seconds: float) -> None:
        self.generation_seconds.labels(protocol).observe(seconds)

    # --- access log -------------------------------------------------------------------------------

    def observe_request(self, protocol: str, status: int, seconds: float) -> None:
        self.requests.labels(protocol, str(status)).inc()
        self.request_seconds.labels(protocol).observe(seconds)


class _EngineStatsCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        yield GaugeMetricFamily("coglens_engine_max_running", "Most requests ever decoded in one batch.",
                                value=s.max_running)
        for name, value, doc in (
            ("prefill_batches", s.prefill_batches, "Prefill forward passes."),
            ("prefill_sequences", s.prefill_sequences, "Sequences prefilled."),
            ("decode_steps", s.decode_steps, "Decode forward passes."),
            ("decode_rows", s.decode_rows, "Sum of the batch sizes of all decode steps."),
            ("generated_tokens", s.generated_tokens, "Tokens sampled by the engine."),
            ("mixed_adapter_steps", s.mixed_adapter_steps,
             "Decode passes whose rows ran different LoRA adapters (or adapters and the base model)."),
        ):
            yield CounterMetricFamily(f"coglens_engine_{name}", doc, value=value)
