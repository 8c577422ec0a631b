"""Torch -> Flax checkpoint converters (CLI: jaxuq-convert)."""
