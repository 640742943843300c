"""feedbackloop-serve: serve MODEL_URI, sha256-verified, with predictions, feedback, drift and a sink."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from feedbackloop.adapters.artifacts import ArtifactStore, s3_client
from feedbackloop_serve.app import ModelServer, create_app
from feedbackloop_serve.settings import SettingsError, load_settings

log = logging.getLogger("feedbackloop-serve")
IN_FLIGHT_GRACE_SECONDS = 10  # after the drain, how long requests already being answered may take


class DrainingServer(uvicorn.Server):
    """SIGTERM turns the server unready and keeps serving for the drain time, then stops as uvicorn does: no
    new connections, in-flight requests finished, the lifespan's shutdown (the last feedback write)."""

    def __init__(self, config: uvicorn.Config, start_draining: Callable[[], None], drain_seconds: float):
        super().__init__(config)
        self._start_draining = start_draining
        self._drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain_until is None and self._drain_seconds > 0:
            self._captured_signals.append(sig)
            self._start_draining()
            self._drain_until = time.monotonic() + self._drain_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as err:
        log.error("%s", err)
        return 2
    store = ArtifactStore(s3_client(settings.s3_endpoint_url, settings.s3_region))
    server = ModelServer(settings, store)
    config = uvicorn.Config(
        create_app(server),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=IN_FLIGHT_GRACE_SECONDS,
    )
    DrainingServer(config, server.start_draining, settings.drain_seconds).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
