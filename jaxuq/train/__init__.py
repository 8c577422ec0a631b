"""jaxuq.train."""
