"""Torch -> Flax checkpoint converters (CLI: ``jaxuq-convert``, or ``python -m converters``).

Library API: :func:`convert` (files -> variables [+ orbax/JSON output]), :func:`convert_checkpoint`
(one file -> variables), :func:`read_state_dict`; architecture tables in :mod:`converters.mappings`.
Only this package (never ``jaxuq``) imports torch.
"""

from converters.core import ConvertError, convert, convert_checkpoint
from converters.io import CheckpointError, read_state_dict

__all__ = ["CheckpointError", "ConvertError", "convert", "convert_checkpoint", "read_state_dict"]
