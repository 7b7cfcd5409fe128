"""Harvesting sources: one module per source, all with the interface in ``base``."""
