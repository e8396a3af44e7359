"""`vwt-export serve OUT/triton`: run the repository's Python-backend models on Triton, on 127.0.0.1, until stopped.

Stopping: Ctrl-C (SIGINT), SIGTERM, SIGHUP (a closed terminal or SSH session) and SIGQUIT all stop the server and
its stubs before the command exits; if the command itself is killed outright, the server follows it (the parent-
death signal and the watchdog of server.py). Errors are one line and exit 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import click

from ..errors import VWTError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _Stopped(Exception):
    """A stop signal while the server was starting."""


class _StopSignals:
    """While serving, a stop signal ends the wait; while starting, it unwinds the start (the server is stopped by
    the caller's cleanup); once stopping, further signals are ignored, so cleanup is never cut short."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "interrupted"
        self.serving = False
        self.stopping = False
        self._previous: dict = {}

    def _handler(self, signum, _frame) -> None:
        if self.stopping:
            return
        self.reason = signal.Signals(signum).name
        self.event.set()
        if not self.serving:
            self.stopping = True  # once: the cleanup this starts must not be cut short by the next signal
            raise _Stopped(self.reason)

    def __enter__(self) -> "_StopSignals":
        self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _say(text: str, err: bool = True) -> None:
    """Print, unless the terminal is gone (after SIGHUP writing to it fails; cleanup must go on)."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(text, err=err)


def _wait_for_stop(server, signals: _StopSignals) -> str:
    """Block until a stop signal or the server's own exit; say which."""
    signals.serving = True
    while not signals.event.wait(0.5):
        if server.process.poll() is not None:
            return f"tritonserver exited by itself (code {server.process.returncode})"
    return signals.reason


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
    the nvidia-pytriton wheel; stops cleanly on Ctrl-C, SIGTERM, SIGHUP or SIGQUIT.

    \b
    Example:
      vwt-export serve out/demo/triton --http-port 8000 --grpc-port 8001
    """
    from .server import TritonServer

    server = None
    with _StopSignals() as signals:
        try:
            server = TritonServer(repository, http_port, grpc_port, metrics_port, list(models) or None)
            for line in server.warnings:
                _say(f"warning: {line}")
            for name, why in server.skipped.items():
                _say(f"skipped {name}: {why}")
            _say(f"starting tritonserver on {repository} (models: {', '.join(server.models)}) ...")
            server.start(timeout)
            _say(f"ready: {', '.join(server.models)}", err=False)
            _say(f"  HTTP     {server.http_url}   (e.g. {server.http_url}/v2/models/{server.models[0]})", err=False)
            _say(f"  gRPC     {server.grpc_url}", err=False)
            _say(f"  metrics  {server.metrics_url}", err=False)
            _say(f"  pid      {server.process.pid} (its Python backend stubs share its process group)", err=False)
            _say("press Ctrl-C to stop")
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            reason = _wait_for_stop(server, signals)
            signals.stopping = True
            _say(f"stopping ({reason}) ...")
            code = server.stop()
            _say(f"stopped (tritonserver exit code {code})")
        except BaseException as e:
            signals.stopping = True  # no further signal cuts this cleanup short
            if server is not None:
                server.stop()
            if isinstance(e, (_Stopped, KeyboardInterrupt)):  # a stop signal while starting
                _say(f"interrupted ({e or 'SIGINT'}) before the server was ready; stopped it")
                sys.exit(130)
            if debug or not isinstance(e, Exception):
                raise
            if isinstance(e, VWTError):
                _say(f"error: {e}")
                sys.exit(2)
            _say(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")  # a bug
            sys.exit(1)
