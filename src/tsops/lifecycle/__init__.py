"""Continual learning: gates, promotion and rollback of the `champion` alias."""
