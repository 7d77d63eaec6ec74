"""Prometheus metrics of one app (its own registry: two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "geoalign_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "geoalign_request_latency_seconds",
            "Request latency from first byte to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "geoalign_batch_size",
            "Images per backbone batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "geoalign_images", "Images received, by outcome", ["outcome"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "geoalign_queue_depth", "Images waiting for the backbone", registry=self.registry
        )
        self.ready = Gauge("geoalign_ready", "1 once the model is loaded", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
