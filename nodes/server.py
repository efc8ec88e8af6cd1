"""Running one storage node: check the configuration, open the store, serve HTTP until SIGTERM.

The HTTP server is the node's own (nodes.httpd: uvloop, llhttp, bodies received straight into the
store's buffers); docs/node-api.md has the measurements behind the choice. uvicorn and granian remain
selectable (``--server``) for comparison benchmarks: they are an optional extra
(``pip install walrusfs[servers]``), imported only when chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from walrusfs.errors import UserError
from walrusfs.keys import public_bytes
from walrusfs.malloc import keep_freed_buffers
from walrusfs.ports import ephemeral_range, in_ephemeral_range
from walrusfs.protocol import routes
from walrusfs.protocol.tls import server_context

from . import httpd
from .app import NodeApp
from .config import NodeConfig
from .epochs import open_chain, served_certificate
from .memory import FREE_BUDGET
from .store import BlobStore

log = logging.getLogger("nodes")
SERVERS = ("httpd", "uvicorn", "granian")
_CONFIG_ENV = "WALRUSFS_NODE_CONFIG"


def require_server(server: str) -> None:
    """Raise UserError, saying how to install it, if ``server`` is a comparison server not installed."""
    if server == "httpd":
        return
    try:
        importlib.import_module(server)
    except ImportError:
        raise UserError(f"--server {server} needs {server}, which is not installed: it is an optional extra, kept "
                        "for comparison benchmarks (pip install 'walrusfs[servers]'); the default, --server httpd, "
                        "needs nothing more") from None


def _uvicorn_server(config: object) -> object:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, except that after a graceful stop on SIGTERM/SIGINT the node exits normally (status 0,
        "stopped" logged, workers joined) instead of re-raising the signal at itself."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def tune_malloc() -> None:
    """Keep freed sliver-sized buffers in the heap for reuse instead of handing them back to the
    kernel: each request allocates a few MiB, and fresh pages cost a page fault apiece (measured:
    5-10% more PUT throughput, ~15% more GET). Up to ``FREE_BUDGET`` of them: beyond it they are
    returned (and nodes.memory trims what fragmentation keeps). glibc only; elsewhere a no-op."""
    keep_freed_buffers(FREE_BUDGET)


def port_hint(port: int, error: OSError) -> str:
    """What to do about a port in use that lies in the kernel's ephemeral range."""
    if error.errno != errno.EADDRINUSE or not in_ephemeral_range(port):
        return ""
    low, high = ephemeral_range()
    return (f"; port {port} lies in the kernel's ephemeral port range ({low}-{high}), where any outgoing "
            f"connection may take it as its local port: listen on a port below {low}, or reserve it with "
            f"`sysctl -w net.ipv4.ip_local_reserved_ports={port}`")


def build_app(config: NodeConfig) -> NodeApp:
    committee, key = config.load_identity()
    store = BlobStore(config.data_dir)
    try:
        store.open()
    except OSError as error:
        raise UserError(f"cannot use data directory {config.data_dir}: {error}") from error
    chain = open_chain(config.data_dir, committee, config.committee_path, config.node_id, public_bytes(key))
    return NodeApp(config, chain, key, store)


def _tls(app: NodeApp, server: str) -> ssl.SSLContext | None:
    """The TLS context if the committee gives this node a certificate (docs/node-api.md, TLS)."""
    certificate = served_certificate(app.core.chain, app.config.node_id, app.key)
    if certificate is None:
        return None
    if server != "httpd":
        raise UserError(f"the committee gives {app.config.node_id} a tls_cert, and only the node's own server "
                        f"(not --server {server}) serves TLS")
    # That certificate certifies the committee's key for this node, which is this node's key (both checked
    # as they were loaded), or is derived from this node's key (a joining node).
    return server_context(app.key, certificate)


def serve(config: NodeConfig, server: str = "httpd") -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests and return."""
    require_server(server)
    if server == "granian":
        _serve_granian(config)
        return
    tune_malloc()
    app = build_app(config)
    tls = _tls(app, server)
    log.info("node %s (epoch %d, shards %s) listening on %s://%s:%d, data in %s",
             config.node_id, app.committee.epoch, list(app.shards) or "none: standby", "https" if tls else "http",
             config.host,
             config.port, config.data_dir)
    if server == "httpd":
        try:
            limits = httpd.Limits(config.http.max_connections, config.http.max_connections_per_peer)
            httpd.run(app, config.host, config.port, limits=limits, stats=app.connections, ssl=tls,
                      own_headers=lambda: [(routes.EPOCH_HEADER, str(app.core.committee.epoch))])
        except OSError as error:
            raise UserError(f"could not listen on {config.host}:{config.port}: {error}{port_hint(config.port, error)}"
                            ) from error
        finally:
            app.executor.shutdown(wait=True)
        log.info("node %s stopped", config.node_id)
        return
    import uvicorn

    uvicorn_config = uvicorn.Config(
        app, host=config.host, port=config.port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, server_header=False, log_config=None, timeout_graceful_shutdown=10,
    )
    server_: Any = _uvicorn_server(uvicorn_config)
    try:
        server_.run()
    finally:
        app.executor.shutdown(wait=True)
    if not server_.started:
        raise UserError(f"could not listen on {config.host}:{config.port} (in use? see the log above)")
    log.info("node %s stopped", config.node_id)


def granian_app() -> NodeApp:
    """Factory for granian's worker process (the config path travels in the environment)."""
    config = NodeConfig.load(os.environ[_CONFIG_ENV])
    tune_malloc()
    return build_app(config)


def _serve_granian(config: NodeConfig) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    _tls(build_app(config), "granian")  # fail here, with a clear message, rather than in the worker
    os.environ[_CONFIG_ENV] = str(config.path)
    Granian("nodes.server:granian_app", address=config.host, port=config.port, interface=Interfaces.ASGI,
            factory=True, workers=1, log_access=False).serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes", description="Run one walrusfs storage node.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the node's configuration file (TOML)")
    parser.add_argument("--server", choices=SERVERS, default="httpd", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    try:
        config = NodeConfig.load(args.config)
        logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(config, args.server)
    except UserError as error:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.error("refusing to start: %s", error)
        print(f"walrusfs node: error: {error}", file=sys.stderr)
        return 2
    return 0
