"""Serve the dashboard on the given runs: what `probe dashboard RUN [RUN ...]` and the end of
`probe demo` call (the command's flags live in probe/cli/dashboard_command.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from probe.errors import InputError, StoreError


def check_runs(run_paths: list[str | Path]) -> None:
    """Refuse to start when no given path is a run; a run that is merely damaged or still
    incomplete is served (its views say what is wrong)."""
    from probe.store import MANIFEST

    paths = [Path(p) for p in run_paths]
    if not any((p / MANIFEST).is_file() for p in paths):
        raise StoreError(f"none of {', '.join(map(str, paths))} is a recorded run (a directory with {MANIFEST}); "
                         "record one with `probe record`")
    for p in paths:
        if not (p / MANIFEST).is_file():
            print(f"warning: {p} is not a recorded run; the dashboard shows why when it is selected",
                  file=sys.stderr)


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def serve(run_paths: list[str | Path], host: str = "127.0.0.1", port: int = 8050, debug: bool = False,
          cache_bytes: int | None = None) -> None:
    """Build the app on these runs and serve it until interrupted (Ctrl-C)."""
    check_runs(run_paths)
    from .app import create_app

    check_port(host, port)
    from .data import CACHE_BYTES  # here, not at the top: building probe's parser should not import pandas

    app = create_app(run_paths, cache_bytes=CACHE_BYTES if cache_bytes is None else cache_bytes)
    print(f"dashboard on {len(run_paths)} run(s): {url_of(host, port)}  (Ctrl-C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {host}; anyone who can reach this address can read these runs", file=sys.stderr)
    app.run(host=host, port=port, debug=debug, use_reloader=False)


def check_port(host: str, port: int) -> None:
    """Fail with one line when the address cannot be bound (werkzeug would print a
    paragraph and exit), or the port is no port (getaddrinfo wraps 99999 to another one)."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"port {port!r} is not a port number from 1 to 65535; pick another --port")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(info[4])
    except OSError as e:
        raise StoreError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") \
            from None
