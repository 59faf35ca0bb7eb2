"""Feature definitions, the batch and incremental engines, and the Feast repo built from settings."""
