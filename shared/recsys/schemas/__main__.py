"""``python -m recsys.schemas [DIR] [--check]``: write (or check) the JSON Schema files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys.schemas import SCHEMA_DIR, export_schemas, stale_schemas


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.schemas", description=__doc__)
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=SCHEMA_DIR,
        help=f"output folder (default: {SCHEMA_DIR})",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is missing or stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.directory)
        for name in stale:
            print(f"stale: {args.directory / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in export_schemas(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
