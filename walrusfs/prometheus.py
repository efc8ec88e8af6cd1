"""The Prometheus text exposition format (version 0.0.4), rendered by prometheus_client.

One renderer for the node's ``/metrics`` (nodes/metrics.py) and the mount daemon's metrics
(walrusfs/fs/metrics.py), so both escape labels and write special values (``+Inf``, ``NaN``) the one
standard way. Figures are kept where they are cheapest to keep (plain counters on the request path)
and turned into metric families only when scraped: ``family`` builds one, ``render`` writes many.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
Sample = tuple[Mapping[str, str], float]


def metric_family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> Metric:
    """A gauge or counter family; a counter's ``name`` ends in ``_total``. Every sample of a family
    carries the same label names (those of the first)."""
    samples = list(samples)
    label_names = list(samples[0][0]) if samples else []
    if kind == "counter":
        metric: GaugeMetricFamily | CounterMetricFamily = CounterMetricFamily(name, help_text, labels=label_names)
    elif kind == "gauge":
        metric = GaugeMetricFamily(name, help_text, labels=label_names)
    else:
        raise ValueError(f"metric {name}: unsupported type {kind!r} (gauge or counter)")
    for labels, value in samples:
        metric.add_metric([str(labels[label]) for label in label_names], float(value))
    return metric


class _Families:
    """What generate_latest collects from: the families given, once."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(families: Iterable[Metric]) -> str:
    return generate_latest(_Families(families)).decode()  # type: ignore[arg-type]


__all__ = ["CONTENT_TYPE", "Sample", "metric_family", "render"]
