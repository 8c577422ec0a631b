"""``jaxuq-convert``: torch checkpoints -> jaxuq (orbax + JSON) checkpoints.

Usage::

    jaxuq-convert archs
    jaxuq-convert inspect FILE
    jaxuq-convert convert FILE [FILE ...] [--arch NAME] [-k KEY=VALUE ...] -o OUT [--force] [--verify]
    jaxuq-convert convert --hf-repo ORG/NAME --hf-file PATH [--hf-file PATH ...] [--revision REV] -o OUT
    jaxuq-convert convert --hf-id WEIGHT_ID [--hf-version N] -o OUT     # TU's load_hf naming + config.yaml

FILE: ``.pt/.pth/.th/.bin`` (torch state dict, read with ``weights_only=True``), Lightning ``.ckpt``,
``.safetensors`` or ``hf://ORG/NAME/path[@REV]``. Several FILEs -> one stacked ensemble (``[M, ...]``).
Exit codes: 0 ok; 2 bad input (message on stderr, nothing written); 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import jax
import numpy as np

from converters import mappings
from converters.core import ConvertError, convert
from converters.hub import model_kwargs, tu_source
from converters.io import CheckpointError, read_state_dict, resolve_hf

__all__ = ["main"]


def _kv(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def _json_object(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {s!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of model kwargs like '{{\"arch\": 18}}', "
            f"got a {type(v).__name__}: {s!r}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxuq-convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("archs", help="list the architectures the converter knows")
    pi = sub.add_parser("inspect", help="list keys, shapes, dtypes and the recognised architecture")
    pi.add_argument("source")
    pc = sub.add_parser("convert", help="convert checkpoint(s) to a jaxuq checkpoint directory")
    pc.add_argument("sources", nargs="*", help="checkpoint file(s); several = stacked ensemble")
    pc.add_argument("--arch", help="architecture name (default: recognised from the keys)")
    pc.add_argument("-k", "--kw", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                    help="model kwarg (JSON value), e.g. -k arch=18 -k style=cifar")
    pc.add_argument("--kwargs", type=_json_object, default=None, help="model kwargs as one JSON object")
    pc.add_argument("-o", "--output", required=True, help="output directory")
    pc.add_argument("--force", action="store_true",
                    help="replace a previous jaxuq output (a folder with its meta.json); nothing else")
    pc.add_argument("--verify", action="store_true", help="compare logits with the torch model")
    pc.add_argument("--verify-tol", type=float, default=1e-4)
    pc.add_argument("--hf-repo", help="Hugging Face Hub repo id (or a local folder)")
    pc.add_argument("--hf-file", action="append", default=[],
                    help="file in --hf-repo; repeat it for a stacked ensemble (e.g. version_0.ckpt ...)")
    pc.add_argument("--hf-id", help="torch-uncertainty hub model, as TU's load_hf(WEIGHT_ID): repo "
                    "torch-uncertainty/WEIGHT_ID, WEIGHT_ID[_N].ckpt or WEIGHT_ID_N.safetensors, config.yaml")
    pc.add_argument("--hf-version", type=int, default=0, help="version N for --hf-id (default 0)")
    pc.add_argument("--revision", help="Hub revision")
    return p


def _inspect(source: str) -> int:
    sd, info = read_state_dict(source)
    print(f"{info['path']}  ({info['format']}, {info['bytes']:,} bytes, sha256 {info['sha256'][:16]}...)")
    for n in info["notes"]:
        print(f"  note: {n}")
    w = max(len(k) for k in sd)
    for k, v in sd.items():
        print(f"  {k:<{w}}  {str(tuple(v.shape)):<18} {v.dtype}")
    n_float = sum(int(np.prod(v.shape)) for k, v in sd.items()
                  if np.issubdtype(v.dtype, np.floating) and "running_" not in k)
    print(f"{len(sd)} tensors, {n_float:,} floating-point values outside BN running stats")
    guess = mappings.infer(sd)
    if guess is None:
        print("architecture: not recognised (pass --arch and its kwargs to convert)")
    else:
        print(f"architecture: {guess[0]}  kwargs: {json.dumps(guess[1])}")
    return 0


def _hub_sources(a) -> tuple[list[str], dict]:
    """Local paths of the ``--hf-*`` sources and the model kwargs of ``--hf-id``'s config.yaml."""
    if a.hf_id is not None:
        if a.hf_repo or a.hf_file:
            raise ConvertError("--hf-id names the repo and file itself; do not add --hf-repo/--hf-file")
        path, _, cfg_kwargs = tu_source(a.hf_id, a.hf_version, a.revision)
        return [str(path)], model_kwargs(path, a.arch, cfg_kwargs)[0]
    if a.hf_repo or a.hf_file:
        if not (a.hf_repo and a.hf_file):
            raise ConvertError("--hf-repo and --hf-file go together")
        return [str(resolve_hf(a.hf_repo, f, revision=a.revision)) for f in a.hf_file], {}
    return [], {}


def _convert(a) -> int:
    sources, kwargs = _hub_sources(a)
    sources = list(a.sources) + sources
    if not sources:
        raise ConvertError("no checkpoint given (FILE ..., --hf-repo/--hf-file or --hf-id)")
    kwargs.update(a.kwargs or {})
    kwargs.update(dict(a.kw))
    t0 = time.perf_counter()
    res = convert(sources, arch=a.arch, kwargs=kwargs or None, output=a.output, force=a.force,
                  verify=a.verify, verify_tol=a.verify_tol, log=print)
    n = sum(x.size for x in jax.tree.leaves(res["variables"].get("params", {})))
    m = res["meta"]["num_members"]
    print(f"{res['meta']['arch']}: {n:,} parameters" + (f" ({m} members)" if m else "")
          + f"; {time.perf_counter() - t0:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if argv is None:  # the process is the CLI and about to exit: a Ctrl-C while the interpreter
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # joins orbax's idle threads is moot


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "archs":
            for fam, mod in mappings.families().items():
                print(f"{fam}: {', '.join(sorted(mod.ARCHS))}")
            return 0
        if args.cmd == "inspect":
            return _inspect(args.source)
        return _convert(args)
    except (ConvertError, CheckpointError) as e:
        print(f"jaxuq-convert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxuq-convert: interrupted; nothing written", file=sys.stderr)
        return 130


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
