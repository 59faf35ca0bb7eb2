"""Feature definitions, batch and incremental engines, the Feast repo built from settings."""
