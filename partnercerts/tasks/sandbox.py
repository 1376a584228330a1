"""sandbox.*: the local sandbox API (mutual TLS + client_id + Basic auth, like the PSA B2B API), in the background."""
from __future__ import annotations

import json as jsonlib

from invoke import task

from ..errors import UserError
from ..sandbox import daemon
from ..settings import Settings
from ._common import reports_errors


@task(help={"port": f"TCP port to listen on (default ${daemon.PORT_ENV}, else {daemon.DEFAULT_PORT})",
            "bind": "comma-separated IP addresses to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"})
@reports_errors
def up(c, port=None, bind="127.0.0.1"):
    """Start the sandbox API in the background (mutual TLS with sandbox certificates, client_id, Basic auth)."""
    settings = Settings.from_env()
    pinned = port not in (None, "") or settings.sandbox_api_port_pinned  # else a busy port is replaced, and said
    port = daemon.parse_port(port, "--port") if port not in (None, "") else settings.sandbox_api_port
    addrs = list(dict.fromkeys(str(daemon.parse_address(a)) for a in bind.split(",") if a.strip()))
    if not addrs:
        raise UserError("--bind is empty; give at least one IP address, e.g. 127.0.0.1")
    print("\n".join(daemon.start(settings, port, addrs, pinned=pinned)))


@task
@reports_errors
def down(c):
    """Stop this state directory's background sandbox API (never another checkout's)."""
    print("stopped" if daemon.stop(Settings.from_env()) else "not running")


@task(help={"json": "print the status as JSON"})
@reports_errors
def status(c, json=False):
    """Show whether this state directory's sandbox API is running, where, its log file, and who holds its port."""
    st = daemon.status(Settings.from_env())
    if json:
        print(jsonlib.dumps(st, indent=2))
    else:
        for k, v in st.items():
            print(f"{k}: {', '.join(v) if isinstance(v, list) else v}")
