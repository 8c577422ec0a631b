"""jaxuq.metrics."""
