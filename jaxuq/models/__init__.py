"""jaxuq.models."""
