"""jaxuq.ood."""
