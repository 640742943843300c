"""feedbackloop-serve: serve MODEL_URI, sha256-verified, with predictions, feedback, drift and a sink."""

from __future__ import annotations

import logging
import sys

import uvicorn

from feedbackloop.adapters.artifacts import ArtifactStore, s3_client
from feedbackloop_serve.app import ModelServer, create_app
from feedbackloop_serve.settings import SettingsError, load_settings

log = logging.getLogger("feedbackloop-serve")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as err:
        log.error("%s", err)
        return 2
    store = ArtifactStore(s3_client(settings.s3_endpoint_url, settings.s3_region))
    app = create_app(ModelServer(settings, store))
    # uvicorn turns SIGTERM into a graceful shutdown, which runs the final feedback flush.
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
