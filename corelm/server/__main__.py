"""`python -m corelm.server MODEL ...`: the same as `corelm serve MODEL ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from corelm.server import add_arguments, cmd_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corelm.server", description="Serve a model over HTTP.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return cmd_serve(args)
    except (ValueError, OSError) as e:
        print(f"corelm serve: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
