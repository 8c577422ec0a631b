"""jaxuq.nn."""
