"""Prometheus metrics (`GET /metrics`): an observer that counts every exchange, plus the
limiters and the mode read at scrape time.

Every label value comes from a small bounded set, never from free text a client sent:
a model name is one from the configuration, a Claude family (`claude-sonnet`), `none`
or `other`; an error type is a known Anthropic type or one of the gateway's outcomes.
The registry is the gateway's own, so two gateways in one process never share figures.

With `server.workers = N`, every worker keeps its figures in files of one directory
(prometheus-client's multiprocess mode) and `/metrics`, whichever worker answers, adds
them all up: a counter never seems to go back because the scrape reached another worker.
The limiter gauges stay the answering worker's own (each has its share of the slots).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cc_proxy.exchange import Exchange, Observer, Outcome
from cc_proxy.modes import Mode, ModeSwitch
from cc_proxy.upstream import Upstream

# The `_created` timestamp series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Time to first token and whole answers of self-hosted models: tens of milliseconds on
# a warm short prompt, minutes for a long Claude Code turn.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CLAUDE_FAMILIES = ("opus", "sonnet", "haiku")
# https://docs.anthropic.com/en/api/errors
ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)
# With workers, how soon a worker's figures reach the files every worker's scrape reads.
FOLD_SECS = 0.5
# The keys of `Metrics._counts`: which counter, then its label values.
_REQUESTS, _TOKENS, _TOOL_CALLS, _ERRORS = "requests", "tokens", "tool_calls", "errors"
_DROPPED = ("shadow_dropped",)
# What the gateway answered itself, by status (`Outcome.REJECTED`).
_REJECTED_TYPES = {400: "invalid_request_error", 413: "request_too_large", 529: "overloaded_error"}


class ModelLabels:
    """Maps a model name to a bounded label: configured names as they are, Claude models
    by family, anything else to `other`."""

    def __init__(self, configured: Iterable[str | None]) -> None:
        self._configured = frozenset(name for name in configured if name)

    def __call__(self, model: str | None) -> str:
        if not model:
            return "none"
        if model in self._configured:
            return model
        if model.startswith("claude-"):
            for family in CLAUDE_FAMILIES:
                if family in model:
                    return f"claude-{family}"
        return "other"


def error_type(exchange: Exchange) -> str | None:
    """The bounded error label of a failed exchange, None when it did not fail."""
    if not exchange.failed or exchange.outcome in (Outcome.CLIENT_GONE, Outcome.DROPPED):
        return None
    reported = exchange.usage.error_type
    if reported is not None:
        return reported if reported in ANTHROPIC_ERROR_TYPES else "other"
    if exchange.outcome is Outcome.REJECTED:
        return _REJECTED_TYPES.get(exchange.status or 0, "other")
    if exchange.outcome is not Outcome.COMPLETE and exchange.outcome is not None:
        return exchange.outcome.value
    return f"http_{(exchange.status or 0) // 100}xx"


MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)


class _Labelled(Generic[MetricT]):
    """A labelled metric that keeps its children: prometheus-client checks the values and
    takes a lock on every `labels()` call. The label values are bounded, and so is this
    cache."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: MetricT) -> None:
        self._metric: MetricT = metric
        self._children: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _Observed:
    """Observations of one histogram child not yet folded in: a count per bucket (the last
    one `+Inf`) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        # The first bucket whose bound is >= the value, as `Histogram.observe` picks it.
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def fold_into(self, child: Histogram) -> None:
        # prometheus-client observes one value at a time; its buckets and sum are values
        # that count up (0.26: `_buckets`, `_sum`), so a batch is added to them whole.
        for value, count in zip(child._buckets, self.counts, strict=True):
            if count:
                value.inc(count)
        child._sum.inc(self.total)


class _Live(Collector):
    """Figures read when scraped: the mode, and each limiter's slots."""

    def __init__(self, upstreams: Mapping[str, Upstream], modes: ModeSwitch) -> None:
        self._upstreams = upstreams
        self._modes = modes

    def collect(self) -> Iterator[Metric]:
        mode = GaugeMetricFamily("cc_proxy_mode", "1 for the current mode", labels=["mode"])
        for each in Mode:
            mode.add_metric([each.value], 1 if each is self._modes.current else 0)
        yield mode
        capacity = GaugeMetricFamily(
            "cc_proxy_limiter_capacity", "max_concurrent of the upstream", labels=["upstream"]
        )
        in_use = GaugeMetricFamily(
            "cc_proxy_limiter_in_use", "limiter slots taken", labels=["upstream"]
        )
        waiting = GaugeMetricFamily(
            "cc_proxy_limiter_waiting", "requests waiting for a slot", labels=["upstream"]
        )
        saturation = GaugeMetricFamily(
            "cc_proxy_limiter_saturation", "slots taken / capacity (0 to 1)", labels=["upstream"]
        )
        for name, upstream in self._upstreams.items():
            limiter = upstream.limiter
            if limiter is None:
                continue
            capacity.add_metric([name], limiter.capacity)
            in_use.add_metric([name], limiter.in_flight)
            waiting.add_metric([name], limiter.waiting)
            saturation.add_metric([name], limiter.in_flight / limiter.capacity)
        yield from (capacity, in_use, waiting, saturation)


def share_across_workers(directory: str, worker: int) -> None:
    """In worker `worker`, before any metric is made: its values live in `directory`,
    where every worker's `/metrics` reads them (see the module's docstring)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    # The value class is chosen when each metric is made; the worker's number, not its
    # pid, names its files: distinct among the workers running, as the library requires.
    values.ValueClass = values.MultiProcessValue(lambda: worker)  # type: ignore[no-untyped-call]


class Metrics(Observer):
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        modes: ModeSwitch,
        models: Iterable[str | None] = (),
        shared_dir: str | None = None,
    ) -> None:
        """`shared_dir`: the directory of `share_across_workers`, when there are workers."""
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._model = ModelLabels(models)

        def counter(name: str, doc: str, labels: list[str]) -> _Labelled[Counter]:
            return _Labelled(Counter(name, doc, labels, registry=registry))

        def latency(name: str, doc: str) -> _Labelled[Histogram]:
            labels = ["role", "upstream"]
            return _Labelled(
                Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=registry)
            )

        exchange_labels = ["role", "upstream", "model"]
        self._requests = counter(
            "cc_proxy_requests",
            "exchanges that ended, by mode, role, upstream, model as sent, status and outcome",
            ["mode", *exchange_labels, "status", "outcome"],
        )
        self._ttft = latency(
            "cc_proxy_time_to_first_token_seconds",
            "from receipt of the request to the first byte of the answer",
        )
        self._duration = latency(
            "cc_proxy_duration_seconds", "whole exchanges, from receipt to the answer's end"
        )
        self._tokens = counter(
            "cc_proxy_tokens",
            "tokens the answers reported, by kind (input, output, cache_creation, cache_read)",
            [*exchange_labels, "kind"],
        )
        self._tool_calls = counter(
            "cc_proxy_tool_calls", "tool_use blocks in answers", exchange_labels
        )
        self._errors = counter(
            "cc_proxy_errors",
            "failed exchanges by error type (Anthropic's, or the gateway's outcome)",
            ["role", "upstream", "type"],
        )
        self._in_flight = _Labelled(
            Gauge(
                "cc_proxy_in_flight_requests",
                "exchanges started and not yet ended",
                ["upstream"],
                registry=registry,
                multiprocess_mode="livesum",  # with workers: the sum over the running ones
            )
        )
        self._shadow_dropped = Counter(
            "cc_proxy_shadow_dropped",
            "compare-mode copies not sent because the target was saturated",
            registry=registry,
        )
        live = _Live(upstreams, modes)
        registry.register(live)
        # What `/metrics` shows: this registry, or with workers every worker's files.
        self._shown = registry
        if shared_dir is not None:
            self._shown = CollectorRegistry()
            MultiProcessCollector(self._shown, path=shared_dir)  # type: ignore[no-untyped-call]
            self._shown.register(live)
        for name in upstreams:
            self._in_flight(name)  # shown at 0 before the first request
        # Tallies since the last fold (see `on_end`), keyed by metric and label values;
        # the label values are bounded, and so are these.
        self._counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._ttft_observed: dict[tuple[str, str], _Observed] = {}
        self._duration_observed: dict[tuple[str, str], _Observed] = {}
        self._open: collections.Counter[str] = collections.Counter()  # in flight, by upstream
        self._counters = {
            _REQUESTS: self._requests,
            _TOKENS: self._tokens,
            _TOOL_CALLS: self._tool_calls,
            _ERRORS: self._errors,
        }
        self._shared = shared_dir is not None
        self._fold_timer: asyncio.TimerHandle | None = None

    def on_start(self, exchange: Exchange) -> None:
        self._open[exchange.upstream] += 1
        self._pending()

    def on_end(self, exchange: Exchange) -> None:
        """Tallies the exchange in plain dicts, folded into the metrics when scraped (or
        with workers, within FOLD_SECS): a locked update of a prometheus value for each
        of the exchange's dozen figures was 6% of a small request's CPU."""
        self._open[exchange.upstream] -= 1
        self._pending()
        counts = self._counts
        if exchange.outcome is Outcome.DROPPED:
            counts[_DROPPED] += 1
            return
        # The enums are StrEnums: labels as they are (`.value` is a slow property).
        role, upstream = exchange.role, exchange.upstream
        model = self._model(exchange.model)
        status = str(exchange.status) if exchange.status is not None else "none"
        outcome = exchange.outcome or "none"
        counts[_REQUESTS, exchange.mode, role, upstream, model, status, outcome] += 1
        first_byte, finished = exchange.first_byte, exchange.finished
        if first_byte is not None:
            self._observed(self._ttft_observed, role, upstream).add(first_byte - exchange.started)
        if finished is not None:
            self._observed(self._duration_observed, role, upstream).add(finished - exchange.started)
        usage = exchange.usage
        if usage.input_tokens:
            counts[_TOKENS, role, upstream, model, "input"] += usage.input_tokens
        if usage.output_tokens:
            counts[_TOKENS, role, upstream, model, "output"] += usage.output_tokens
        if usage.cache_creation_input_tokens:
            cache_creation = usage.cache_creation_input_tokens
            counts[_TOKENS, role, upstream, model, "cache_creation"] += cache_creation
        if usage.cache_read_input_tokens:
            counts[_TOKENS, role, upstream, model, "cache_read"] += usage.cache_read_input_tokens
        if usage.tool_calls:
            counts[_TOOL_CALLS, role, upstream, model] += usage.tool_calls
        failure = error_type(exchange)
        if failure is not None:
            counts[_ERRORS, role, upstream, failure] += 1

    @staticmethod
    def _observed(pending: dict[tuple[str, str], _Observed], role: str, upstream: str) -> _Observed:
        observed = pending.get((role, upstream))
        if observed is None:
            observed = pending[role, upstream] = _Observed()
        return observed

    def _pending(self) -> None:
        """With workers, another worker may answer the next scrape: this one's tallies
        go into the shared files within FOLD_SECS."""
        if self._fold_timer is None and self._shared:
            self._fold_timer = asyncio.get_running_loop().call_later(FOLD_SECS, self.fold)

    def fold(self) -> None:
        """Adds what was tallied since the last fold to the metrics."""
        if self._fold_timer is not None:  # a scrape came first: one timer at a time
            self._fold_timer.cancel()
            self._fold_timer = None
        counts, self._counts = self._counts, collections.Counter()
        for key, count in counts.items():
            if key == _DROPPED:
                self._shadow_dropped.inc(count)
            else:
                self._counters[key[0]](*key[1:]).inc(count)
        for pending, histogram in (
            (self._ttft_observed, self._ttft),
            (self._duration_observed, self._duration),
        ):
            for labels, observed in pending.items():
                observed.fold_into(histogram(*labels))
            pending.clear()
        for upstream, in_flight in self._open.items():
            self._in_flight(upstream).set(in_flight)

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure."""
        self.fold()
        return generate_latest(self._shown)
