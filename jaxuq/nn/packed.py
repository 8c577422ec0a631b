"""Packed-Ensembles layers (PackedConv, PackedDense). Owned by the ensembles work."""
