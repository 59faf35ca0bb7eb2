"""tsops: a time-series forecasting model from history to real-time predictions on a live stream."""

__version__ = "0.1.0"
