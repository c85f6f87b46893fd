"""`perfkit serve`: one server process, REST (uvicorn + the FastAPI app) or gRPC, over params.yaml.

The configuration is the resolved config a launcher hands over (`--config FILE`, JSON written by
`config.to_json`: a stage's server runs with exactly the settings the stage resolved), else
params.yaml's (`config.load("serve")`, root from PERFKIT_ROOT / DVC_ROOT / the nearest params.yaml);
`--set section.key=value` overrides (values parsed as YAML) are merged over either and validated
exactly like the file, so a wrong key fails with the same message. The port may
be 0: the server binds a free one and reports it through `--port-file` once it is ready.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path

from perfkit import config
from perfkit.config import Config, ConfigError
from perfkit.hardware import pin_threads

log = logging.getLogger("perfkit.serving")


def serve_rest(cfg: Config, host: str, port: int, port_file: Path | None) -> int:
    """Run uvicorn on a socket bound here (so port 0 works); the port file is written once the model is ready."""
    import uvicorn

    from perfkit.serving.app import create_app
    from perfkit.serving.launch import write_port_file
    from perfkit.serving.state import ServerState

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and accepted sockets
    # inherit it; without it Nagle + delayed ACK stall every kept-alive response by ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    failed: list[BaseException] = []

    def ready(state: ServerState) -> None:
        log.info("serving %s on http://%s:%d (%s scheduler)", cfg.model.name, host, bound, cfg.serving.scheduler)
        if port_file is not None:
            write_port_file(port_file, bound, state.startup())

    def fail(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(cfg, on_ready=ready, on_fail=fail)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on"))
    server.run(sockets=[sock])
    return 1 if failed else 0


def main(
    protocol: str, host: str, port: int, port_file: Path | None, sets: Sequence[str], smoke: bool, config_file: Path | None = None
) -> int:
    base = config.from_json(config_file.read_text()) if config_file else config.load("serve", smoke=smoke)
    cfg = config.override(base, config.parse_sets(sets))
    pin_threads(cfg.hardware.threads)
    if protocol == "rest":
        return serve_rest(cfg, host, port, port_file)
    try:
        from perfkit.serving import grpc_server
    except ImportError as exc:
        raise ConfigError(f"--protocol grpc: the gRPC server is not available ({exc})") from None
    return int(grpc_server.serve(cfg, host, port, port_file) or 0)
