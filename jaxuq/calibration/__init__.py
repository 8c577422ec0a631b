"""jaxuq.calibration."""
