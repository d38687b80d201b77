"""benchbio: a benchmark harness for embedding-based instance segmentation of
biological images."""

from .errors import BenchbioError
from .registry import (
    DATASETS,
    METHODS,
    METRICS,
    register_dataset,
    register_method,
    register_metric,
)

__version__ = "0.1.0"


def list_methods(pattern: str | None = None) -> list[str]:
    """Names of the registered methods."""
    return METHODS.names(pattern)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names(pattern)


def list_metrics(pattern: str | None = None) -> list[str]:
    """Names of the registered metrics."""
    return METRICS.names(pattern)


def create_method(name: str, **options):
    """Instantiate a method plugin by name."""
    return METHODS.create(name, **options)


def create_dataset(name: str, **options):
    """Instantiate a dataset plugin by name."""
    return DATASETS.create(name, **options)


def create_metric(name: str, **options):
    """Instantiate a metric plugin by name."""
    return METRICS.create(name, **options)


__all__ = [
    "BenchbioError",
    "METHODS",
    "DATASETS",
    "METRICS",
    "register_method",
    "register_dataset",
    "register_metric",
    "list_methods",
    "list_datasets",
    "list_metrics",
    "create_method",
    "create_dataset",
    "create_metric",
]
