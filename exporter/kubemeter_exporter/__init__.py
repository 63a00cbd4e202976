"""kubemeter GPU exporter: per-pod GPU time counters from NVML."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubemeter")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"
