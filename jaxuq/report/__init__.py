"""jaxuq.report."""
