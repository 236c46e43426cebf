"""`probe dashboard RUN [RUN ...]`: serve the dashboard on the given runs."""

from __future__ import annotations

import argparse

from probe.cli.shared import nonnegative_int, port


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("dashboard", help="browse recorded runs and their analyses in a web app (Dash)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `probe record`")
    p.add_argument("--port", type=port, default=8050, help="port to listen on (default 8050)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the runs to the "
                        "network)")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error pages); off by default")
    p.add_argument("--cache-mb", type=nonnegative_int, default=None,
                   help="memory each run's cache of read slices may hold, in MiB (default 256 MiB)")
    return p


def run(args: argparse.Namespace) -> int:
    from dashboard.server import serve

    serve(args.runs, host=args.host, port=args.port, debug=args.debug,
          cache_bytes=None if args.cache_mb is None else args.cache_mb * 2**20)
    return 0
