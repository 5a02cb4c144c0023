"""GET /metrics: Prometheus text format, with vLLM's metric names so that vLLM dashboards and the
Kubernetes Gateway API Inference Extension (which reads vllm:num_requests_waiting,
vllm:num_requests_running and vllm:kv_cache_usage_perc) work unchanged.

Each app has its own CollectorRegistry (tests build many apps in one process). Engine gauges and
counters are read from Engine.stats() at scrape time; the histograms and the HTTP counter are
observed by the views as requests finish.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.engine.types import GenerationResult

# vLLM's labels on every engine metric: the served model's name and the engine's index.
LABELS = ["model_name", "engine"]
ENGINE_INDEX = "0"
# vLLM's finish reasons, always exported (0 until seen) so rate() works from the first scrape.
FINISH_REASONS = ("stop", "length", "abort")
# vLLM v1's buckets (vllm/v1/metrics/loggers.py), so its dashboards' quantile queries fit.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector(Collector):
    """Reads the engine at scrape time: gauges of its state and counters of its totals."""

    def __init__(self, engine: Any, kv_cells: int, block_tokens: int = 1) -> None:
        self.engine = engine
        self.kv_cells = kv_cells
        self.block_tokens = block_tokens

    def collect(self) -> Iterator:
        st = self.engine.stats()
        labels = [self.engine.model_name, ENGINE_INDEX]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", st["running"])
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", st["queued"])
        usage = st["kv_cache_usage"]
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        # The name before vLLM 0.9, still read by older inference gateways.
        yield gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage. "
                    "DEPRECATED: use vllm:kv_cache_usage_perc.", usage)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", st["prompt_tokens_total"])
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", st["generation_tokens_total"])
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      st["prefix_cache_queries_total"])
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                      st["prefix_cache_hits_total"])
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=LABELS + ["finished_reason"])
        finished = st["requests_finished_total"]
        for reason in sorted(set(FINISH_REASONS) | set(finished)):
            success.add_metric(labels + [reason], finished.get(reason, 0))
        yield success
        # The gateway's optional BlockSize / NumGPUBlocks: prompts are computed in batches of up to
        # CHUNK_TOKENS, and a block is one such chunk. The endpoint picker's prefix index sizes itself from
        # these (block size x blocks = tokens a pod can hold); a block of 1 token would be raised to
        # its minimum of 64 and overstate the cache 64 times.
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks", "engine"])
        info.add_metric([str(self.block_tokens), str(self.kv_cells // self.block_tokens), ENGINE_INDEX], 1)
        yield info
        yield counter("llm_server_queue_full", "Requests refused with 503 because MAX_QUEUED requests were waiting.",
                      st["rejected_queue_full_total"])
        yield counter("llm_server_request_timeouts", "Requests cancelled and answered 504 at REQUEST_TIMEOUT.",
                      st["timed_out_total"])


class Metrics:
    """The app's registry: the engine collector, the process's memory and CPU, request histograms
    and HTTP requests by route and status."""

    def __init__(self, engine: Any, kv_cells: int, block_tokens: int = 1) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, kv_cells, block_tokens))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        reg = self.registry
        self.queue_time = Histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                                    LABELS, buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              LABELS, buckets=TTFT_BUCKETS, registry=reg)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             LABELS, buckets=LATENCY_BUCKETS, registry=reg)
        # The name Prometheus' own naming guide uses for this; route is the URL rule, never the raw path.
        self.http = Counter("http_requests", "HTTP requests answered by the app, by route and status.",
                            ["route", "status"], registry=reg)

    def request_finished(self, result: GenerationResult, seconds: float) -> None:
        """Observe one answered /process request: its queue time, first token and total latency."""
        labels = (self.engine.model_name, ENGINE_INDEX)
        self.queue_time.labels(*labels).observe(result.queue_s)
        if result.first_token_s is not None:
            self.ttft.labels(*labels).observe(result.first_token_s)
        self.e2e.labels(*labels).observe(seconds)

    def http_request(self, route: str, status: int) -> None:
        self.http.labels(route, str(status)).inc()

    def render(self) -> bytes:
        """The exposition text of every metric, now."""
        return generate_latest(self.registry)
