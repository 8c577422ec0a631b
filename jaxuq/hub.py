"""``jaxuq.hub``: torch checkpoints on the Hugging Face Hub as jaxuq models (cached conversions).

``load_hf(weight_id, version=0)`` (torch-uncertainty's naming), ``load_repo(repo_id, filename)``,
``load_ensemble(repo_id, filenames)`` -> ``(module, variables, meta)`` like :func:`jaxuq.models.load`.
The implementation lives in :mod:`converters.hub` (it reads torch files); it is imported on first use,
so ``import jaxuq.hub`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names, for readers and type checkers; imported lazily below
    from converters.hub import (
        cache_dir,
        load_ensemble,
        load_hf,
        load_repo,
        read_config,
        tu_filenames,
        tu_source,
    )

__all__ = ["cache_dir", "load_ensemble", "load_hf", "load_repo", "read_config", "tu_filenames", "tu_source"]


def __getattr__(name: str):
    if name in __all__:
        from converters import hub  # noqa: PLC0415

        return getattr(hub, name)
    raise AttributeError(f"module 'jaxuq.hub' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
