"""Prometheus metrics of a server (prometheus-client), in a registry of its own per app.

    peftkit_requests_total{model, status}          requests answered, by model asked for and HTTP status
    peftkit_request_seconds{model}                 latency, request to last token (histogram)
    peftkit_time_to_first_token_seconds{model}     (histogram)
    peftkit_generated_tokens_total{model}          output tokens; rate() of it is tokens/s
    peftkit_tokens_per_second                      output tokens/s over the last 10 s of steps
    peftkit_queue_depth, peftkit_batch_size, peftkit_adapters_resident
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("peftkit_requests", "Requests answered", ["model", "status"], registry=r)
        self.latency = Histogram("peftkit_request_seconds", "Request latency", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("peftkit_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("peftkit_generated_tokens", "Output tokens", ["model"], registry=r)
        self.tokens_per_second = Gauge("peftkit_tokens_per_second", "Output tokens/s over the last 10 s", registry=r)
        self.queue_depth = Gauge("peftkit_queue_depth", "Requests waiting for a slot", registry=r)
        self.batch_size = Gauge("peftkit_batch_size", "Sequences decoded in the last step", registry=r)
        self.adapters_resident = Gauge("peftkit_adapters_resident", "Adapters with weights loaded", registry=r)
        self._window: deque[tuple[float, int]] = deque()  # (time, tokens finished)

    def request(self, model: str, status: int) -> None:
        self.requests.labels(model=model, status=str(status)).inc()

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model=model).observe(seconds)

    def finished(self, model: str, tokens: int, seconds: float) -> None:
        self.latency.labels(model=model).observe(seconds)
        self.tokens.labels(model=model).inc(tokens)

    def observe_engine(self, engine) -> None:
        """Called by the worker after every step."""
        now = time.monotonic()
        self._window.append((now, len(engine.running)))
        while self._window and now - self._window[0][0] > 10.0:
            self._window.popleft()
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        self.tokens_per_second.set(sum(n for _, n in self._window) / span if span else 0.0)
        self.queue_depth.set(engine.queue_depth())
        self.batch_size.set(len(engine.running))
        self.adapters_resident.set(len(engine.cache.resident))

    def render(self) -> bytes:
        return generate_latest(self.registry)
