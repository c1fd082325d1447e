"""Protocol metrics (one module per metric, grouped by dimension) and their backbones."""

from narrastream.metrics.base import METRICS, Metric, MetricContext, MetricResult, build_metric

__all__ = ["METRICS", "Metric", "MetricContext", "MetricResult", "build_metric"]
