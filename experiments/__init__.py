"""jaxuq experiments (thin scripts over the library)."""
