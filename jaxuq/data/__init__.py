"""jaxuq.data."""
