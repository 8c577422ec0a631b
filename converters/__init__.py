"""Torch -> Flax checkpoint converters (CLI: ``jaxuq-convert``, or ``python -m converters``).

Library API: :func:`convert` (files -> variables [+ orbax/JSON output]), :func:`convert_checkpoint`
(one file -> variables), :func:`read_state_dict`; architecture tables in :mod:`converters.mappings`;
Hugging Face Hub loading with a conversion cache in :mod:`converters.hub` (its one public home).

The dependency runs one way: ``converters`` imports ``jaxuq`` at module top, and nothing in ``jaxuq``
imports ``converters``. Only this package (never ``jaxuq``) imports torch, lazily, where a torch file
is read or a torch reference is built, so ``import converters`` needs no torch.
"""

from converters.core import ConvertError, convert, convert_checkpoint
from converters.io import CheckpointError, read_state_dict

__all__ = ["CheckpointError", "ConvertError", "convert", "convert_checkpoint", "read_state_dict"]
