"""`python -m feedbackloop`: run the operator (the same as `kopf run -m feedbackloop.handlers`)."""

from __future__ import annotations

import importlib
import logging
import sys

import kopf

from feedbackloop.config import ConfigError, load_config


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every successful timer tick at INFO, once per loop per tick; keep its warnings and errors.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        config = load_config()
    except ConfigError as err:
        print(f"feedbackloop: invalid configuration: {err}", file=sys.stderr)
        return 2
    importlib.import_module("feedbackloop.handlers")  # registers the handlers, once the settings are valid
    kopf.run(
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=config.health_endpoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
