"""`tsops serve`: MLflow scoring and Open Inference Protocol v2 endpoints, forecast by entity
from the online store, adaptive batching, hot reload and canary/shadow routing."""
