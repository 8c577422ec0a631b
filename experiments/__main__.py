"""``python -m experiments``: list the experiments; ``python -m experiments <name> [...]``: run one.

See ``experiments/_launch.py`` for the contract every experiment follows.
"""

from __future__ import annotations

import difflib
import sys

from experiments._launch import discover, launch

USAGE = "usage: python -m experiments [<name> [--small] [--set KEY=VALUE ...] [--out DIR] | <name> --help]"


def main(argv: list[str] | None = None) -> int:
    """0 on success, 2 on bad input (unknown experiment, bad key or value, missing data)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    found = discover()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(USAGE + "\n\nexperiments:")
        width = max(map(len, found), default=0)
        for name, summary in found.items():
            print(f"  {name:<{width}}  {summary}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(
            f"error: unknown experiment {name!r}{hint}; available: {', '.join(found)}\n{USAGE}",
            file=sys.stderr,
        )
        return 2
    return launch(name, rest)


if __name__ == "__main__":
    raise SystemExit(main())
