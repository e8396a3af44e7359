"""`vwt-export serve OUT/triton`: run the repository's Python-backend models on Triton, on 127.0.0.1, until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from ..errors import VWTError


def _wait_for_stop(server) -> str:
    """Block until Ctrl-C, SIGTERM or the server's own exit; say which."""
    stop = threading.Event()
    why = {"reason": "interrupted"}

    def on_signal(signum, _frame):
        why["reason"] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                return f"tritonserver exited by itself (code {server.process.returncode})"
        return why["reason"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=None, help="HTTP port  [default: a free one]")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None, help="gRPC port  [default: a free one]")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Prometheus metrics port  [default: a free one]")
@click.option("--model", "models", multiple=True, help="serve only this model (repeatable)  [default: all it can]")
@click.option("--timeout", type=click.FloatRange(min=1), default=180, show_default=True,
              help="seconds to wait for the models to be READY")
@click.option("--debug", is_flag=True, help="show tracebacks")
def serve(repository: Path, http_port: int | None, grpc_port: int | None, metrics_port: int | None,
          models: tuple[str, ...], timeout: float, debug: bool) -> None:
    """Serve a Triton model repository written by vwt-export (OUT/triton) on 127.0.0.1 with the tritonserver of
    the nvidia-pytriton wheel; stops cleanly on Ctrl-C or SIGTERM.

    \b
    Example:
      vwt-export serve out/demo/triton --http-port 8000 --grpc-port 8001
    """
    from .server import TritonServer

    server = None
    try:
        server = TritonServer(repository, http_port, grpc_port, metrics_port, list(models) or None)
        for name, why in server.skipped.items():
            click.echo(f"skipped {name}: {why}", err=True)
        click.echo(f"starting tritonserver on {repository} (models: {', '.join(server.models)}) ...", err=True)
        server.start(timeout)
        click.echo(f"ready: {', '.join(server.models)}")
        click.echo(f"  HTTP     {server.http_url}   (e.g. {server.http_url}/v2/models/{server.models[0]})")
        click.echo(f"  gRPC     {server.grpc_url}")
        click.echo(f"  metrics  {server.metrics_url}")
        click.echo(f"  pid      {server.process.pid} (its Python backend stubs share its process group)")
        click.echo("press Ctrl-C to stop", err=True)
        sys.stdout.flush()
        reason = _wait_for_stop(server)
        click.echo(f"stopping ({reason}) ...", err=True)
        code = server.stop()
        click.echo(f"stopped (tritonserver exit code {code})", err=True)
    except VWTError as e:
        if server is not None:
            server.stop()
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while starting
        if server is not None:
            server.stop()
        click.echo("interrupted", err=True)
        sys.exit(130)

