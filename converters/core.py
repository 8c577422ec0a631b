"""The conversion pipeline behind ``jaxuq-convert`` (usable as a library).

    from converters import convert, convert_checkpoint
    variables = convert_checkpoint("resnet20", "resnet20-12fca82f.th")            # in memory
    res = convert(["a.pt", "b.pt"], arch="lenet", kwargs={...}, output="out")      # stacked, on disk
    module, variables, meta = jaxuq.models.load("out")

Steps: read each source (:mod:`converters.io`) -> infer or take the architecture + kwargs -> strict
table conversion (:mod:`converters.mappings`) -> optional torch verification -> stack members (several
sources, or one TU ``deep_ensembles`` state dict) -> atomic orbax + JSON write (:mod:`jaxuq.models.io`).
Every user-facing failure raises :class:`ConvertError` (exit code 2 in the CLI).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

import jaxuq
from converters import mappings
from converters.ensemble import is_deep_ensembles_state_dict, split_deep_ensembles, stack_members
from converters.io import CheckpointError, read_state_dict
from jaxuq._io import check_output_dir
from jaxuq.models.io import KIND, check_path, intact, save

__all__ = [
    "ConvertError", "convert", "convert_checkpoint", "convert_state_dicts", "split_members",
    "verify_with_torch",
]


class ConvertError(ValueError):
    """A conversion that cannot be done (bad input); the message is meant for the user."""


def _describe(arch: str, kwargs: dict) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{arch}({kw})"


def split_members(sd: dict, source: str) -> list[dict]:
    """A TU ``deep_ensembles`` state dict (``core_models.{i}.*``) as one state dict per member; any other
    state dict as ``[sd]``."""
    if is_deep_ensembles_state_dict(sd):
        try:
            return split_deep_ensembles(sd, source)
        except ValueError as e:
            raise ConvertError(str(e)) from None
    return [sd]


def _resolve_arch(arch: str | None, kwargs: dict | None, sd: dict, source: str) -> tuple[str, dict]:
    guess = mappings.infer(sd)
    if arch is None:
        if guess is None:
            raise ConvertError(
                f"{source}: cannot recognise the architecture from its keys; pass --arch "
                f"(known: {', '.join(mappings.arch_names())}) and its kwargs"
            )
        arch, kwargs = guess[0], {**guess[1], **(kwargs or {})}
    elif arch not in mappings.arch_names():
        raise ConvertError(f"unknown architecture {arch!r}; known: {', '.join(mappings.arch_names())}")
    elif guess is not None and guess[0] == arch:
        kwargs = {**guess[1], **(kwargs or {})}
    # e.g. MIMO: kwargs from the shapes + M; a regression head: its width + -k dist_family
    complete = getattr(mappings.family_of(arch), "complete", None)
    if complete is not None:
        try:
            return arch, {**complete(arch, sd, dict(kwargs or {})), **(kwargs or {})}
        except (KeyError, ValueError, IndexError) as e:
            raise ConvertError(f"{source}: {e}") from None
    return arch, dict(kwargs or {})


def convert_state_dicts(arch: str, kwargs: dict, state_dicts: Sequence[dict], sources: Sequence[str]):
    """``(module, [variables per member])`` — strict; raises :class:`ConvertError`."""
    try:
        module, template, _ = mappings.build_template(arch, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise ConvertError(f"cannot build {_describe(arch, kwargs)}: {e}") from None
    fam = mappings.family_of(arch)
    out = []
    for sd, src in zip(state_dicts, sources, strict=True):
        try:
            out.append(fam.torch_to_flax(sd, template, src))
        except ValueError as e:
            guess = mappings.infer(sd)
            hint = ""
            if guess is not None and (guess[0], guess[1]) != (arch, kwargs):
                hint = f" The checkpoint looks like {_describe(*guess)}."
            raise ConvertError(_mismatch_message(str(e), src, _describe(arch, kwargs), hint)) from None
    return module, out


MAX_LISTED = 15


def _mismatch_message(raw: str, src: str, desc: str, hint: str) -> str:
    """One summary paragraph, then the problems (missing / unexpected keys, shape mismatches), capped."""
    head, _, rest = raw.partition("\n")
    lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
    if not lines:
        return f"{src} does not match architecture {desc}: {head}{hint} Nothing was written."
    n_miss = sum(ln.startswith("missing") for ln in lines)
    n_extra = sum(ln.startswith("unexpected") for ln in lines)
    n_shape = sum(ln.startswith("shape mismatch") for ln in lines)
    n_other = len(lines) - n_miss - n_extra - n_shape
    parts = [f"{n_miss} missing key(s)", f"{n_extra} unexpected key(s)", f"{n_shape} shape mismatch(es)"]
    if n_other:
        parts.append(f"{n_other} other problem(s)")
    shown: list[str] = []
    for kind in ("shape mismatch", "unexpected", "missing", ""):  # most telling first, each capped
        group = [ln for ln in lines if ln.startswith(kind) and ln not in shown] if kind else \
            [ln for ln in lines if ln not in shown and not ln.startswith(("shape", "unexpected", "missing"))]
        shown += group[:MAX_LISTED]
        if len(group) > MAX_LISTED:
            shown.append(f"... and {len(group) - MAX_LISTED} more {kind or 'other'} line(s)")
    return (f"{src} does not match architecture {desc}: {', '.join(parts)}.{hint} Nothing was written.\n  "
            + "\n  ".join(shown))


def verify_with_torch(arch: str, kwargs: dict, module, variables_list: list, state_dicts: list,
                      sample_shape: tuple, batch: int = 4, seed: int = 0) -> list[dict]:
    """Eval-mode logits of torch vs Flax on one random batch per member: ``[{max_abs_diff, max_abs}]``."""
    import torch  # noqa: PLC0415

    from converters.torch_refs import torch_model  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *sample_shape[1:]), dtype=np.float32)
    results = []
    apply = jax.jit(lambda v, xx: module.apply(v, xx, train=False))
    make = getattr(mappings.family_of(arch), "torch_reference", None) or torch_model
    for v, sd in zip(variables_list, state_dicts, strict=True):
        tm = make(arch, **kwargs)
        tm.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in sd.items()}, strict=True)
        tm.eval()
        with torch.no_grad():  # images NHWC -> NCHW; feature vectors as they are
            ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x))
        ref, got = _flat_outputs(ref), _flat_outputs(apply(v, x))
        if got.shape != ref.shape:
            raise ConvertError(f"--verify: Flax logits {got.shape} vs torch {ref.shape}")
        diff = float(np.max(np.abs(got - ref)))
        results.append({"max_abs_diff": diff, "max_abs": float(np.max(np.abs(ref)))})
    return results


def _flat_outputs(out) -> np.ndarray:
    """Logits as they are; a regression head's parameter dict as its values side by side (sorted keys)."""
    if isinstance(out, dict):
        return np.concatenate([np.asarray(out[k]) for k in sorted(out)], axis=-1)
    return np.asarray(out)


def _check_output(output: Path, force: bool, sources: Sequence) -> None:
    """Refuse, before any work, an output that could not or must not be written: not UTF-8, an input
    file or a folder holding one, an existing output without ``force``, or with ``force`` anything but a
    folder jaxuq marked as its model output (the one output-folder rule,
    :func:`jaxuq._io.check_output_dir`: never a link, a file or the working folder); check the folder
    is writable."""
    try:
        check_path(output)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    target = output.resolve()
    for s in sources:
        src = Path(s).resolve() if not str(s).startswith("hf://") else None
        if src is not None and (src == target or target in src.parents):
            raise ConvertError(f"output {output} is the input {s} or a folder holding it; choose another -o")
    try:
        check_output_dir(output, KIND, replace=force, verify=intact)
    except (ValueError, FileExistsError) as e:
        raise ConvertError(str(e)) from None
    parent = output.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not parent.is_dir():
            raise NotADirectoryError(str(parent))
        probe = tempfile.mkdtemp(prefix=f".{output.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise ConvertError(
            f"cannot write the output {output}: its folder {parent} is not writable "
            f"({type(e).__name__}: {e.strerror or e})"
        ) from None


def _read_sources(sources: Sequence) -> tuple[list[dict], list[dict], list[str]]:
    """``(state dicts, file infos, names)``: one state dict per member (a TU ``deep_ensembles`` file
    gives several, named ``FILE[core_models.i]``), one info per file."""
    sds, infos, names = [], [], []
    for s in sources:
        try:
            sd, info = read_state_dict(s)
        except CheckpointError as e:
            raise ConvertError(str(e)) from None
        members = split_members(sd, str(s))
        for i, m in enumerate(members):
            sds.append(m)
            names.append(str(s) if len(members) == 1 else f"{s}[core_models.{i}]")
        infos.append(info)
    return sds, infos, names


def _verify(arch: str, kw: dict, module, members: list, sds: list, names: list[str], tol: float,
            log: Callable[[str], None]) -> list[dict]:
    """:func:`verify_with_torch` on every member; ConvertError when one is off by more than
    ``tol * max(1, max|logits|)`` (a NaN difference fails too)."""
    _, _, shape = mappings.build_template(arch, **kw)
    try:
        vres = verify_with_torch(arch, kw, module, members, sds, shape)
    except ImportError as e:
        raise ConvertError(f"--verify needs the torch reference ({e}); install torch / torch-uncertainty "
                           "or drop --verify") from None
    for n, r in zip(names, vres, strict=True):
        log(f"verify {n}: max|logits torch - flax| = {r['max_abs_diff']:.3g} "
            f"(max|logits| {r['max_abs']:.3g})")
    bad = [(n, r) for n, r in zip(names, vres, strict=True)  # `not <=`: a NaN difference fails
           if not r["max_abs_diff"] <= tol * max(1.0, r["max_abs"])]
    if bad:
        raise ConvertError(
            f"--verify failed: torch and Flax logits differ by {bad[0][1]['max_abs_diff']:.3g} on "
            f"{bad[0][0]} (tolerance {tol:g} x max(1, max|logits|)); nothing written"
        )
    return vres


def _meta(arch: str, kw: dict, num_members: int | None, infos: list[dict], vres: list | None) -> dict:
    """``meta.json``'s content: architecture, kwargs, members, sources (path, sha256, size, format)."""
    meta = {
        "arch": arch,
        "kwargs": kw,
        "num_members": num_members,
        "sources": [{"path": i["path"], "sha256": i["sha256"], "bytes": i["bytes"], "format": i["format"]}
                    for i in infos],
        "jaxuq_version": jaxuq.__version__,
        "converter": "jaxuq-convert",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    if vres is not None:
        meta["verify"] = vres
    return meta


def _write(out_path: Path, variables, meta: dict, force: bool) -> None:
    """:func:`jaxuq.models.io.save`, its failures as ConvertError (exit 2 in the CLI)."""
    try:
        save(out_path, variables, meta, force=force)
    except (FileExistsError, ValueError) as e:  # appeared meanwhile / not replaceable / not UTF-8
        raise ConvertError(f"output {out_path} not written: {e}") from None
    except OSError as e:
        raise ConvertError(f"cannot write the output {out_path}: {type(e).__name__}: {e}") from None


def convert(sources: Sequence[str | os.PathLike], arch: str | None = None, kwargs: dict | None = None,
            output: str | os.PathLike | None = None, force: bool = False, verify: bool = False,
            verify_tol: float = 1e-4, log: Callable[[str], None] | None = None) -> dict:
    """Convert one checkpoint (a single model) or several / a deep-ensembles one (a stacked ensemble).

    Returns ``{"module", "variables", "meta", "verify"}``; writes ``output`` (orbax + ``meta.json``)
    when given. ``verify_tol`` bounds ``max|Δ| / max(1, max|logits|)`` under ``verify``.
    """
    log = log or (lambda s: None)
    if not sources:
        raise ConvertError("no checkpoint given")
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        _check_output(out_path, force, sources)
    sds, infos, names = _read_sources(sources)
    arch, kw = _resolve_arch(arch, kwargs, sds[0], names[0])
    log(f"architecture: {_describe(arch, kw)}; {len(sds)} member(s)")
    module, members = convert_state_dicts(arch, kw, sds, names)
    stacked = len(members) > 1 or len(sources) > 1
    vres = _verify(arch, kw, module, members, sds, names, verify_tol, log) if verify else None
    variables = stack_members(members) if stacked else members[0]
    meta = _meta(arch, kw, len(members) if stacked else None, infos, vres)
    if out_path is not None:
        _write(out_path, variables, meta, force)
        log(f"wrote {out_path}")
    return {"module": module, "variables": variables, "meta": meta, "verify": vres}


def convert_checkpoint(model_name: str | None, path, **kwargs):
    """Flax variables of the checkpoint ``path`` for ``model_name`` (``None``: infer) — in memory.
    ``kwargs`` are the model's (e.g. TU resnet's ``arch=18``)."""
    return convert([path], arch=model_name, kwargs=kwargs or None)["variables"]
