#!/usr/bin/env python3
"""A kopf operator that does nothing: the floor bench/scale.py measures the real operator's CPU, RSS and API
requests against.

It watches what the real operator watches, FeedbackLoops and retrain Jobs, in the same namespaces, with the
same kopf settings (standalone, no scanning, no event posting, the same watch timeouts), and its handlers
return at once: no status, no annotation, no finalizer is ever written.

    noop_operator.py --namespace NS [--namespace NS2] [--liveness http://127.0.0.1:PORT/healthz]
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import kopf

GROUP, VERSION, PLURAL = "feedbackloop.dev", "v1alpha1", "feedbackloops"
RETRAIN_JOBS = {"feedbackloop.dev/component": "retrain"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 600
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = 8


@kopf.on.event(GROUP, VERSION, PLURAL)
def loop_seen(**_: Any) -> None:
    """Nothing: the cost of seeing a loop is kopf's alone."""


@kopf.on.event("batch", "v1", "jobs", labels=RETRAIN_JOBS)
def job_seen(**_: Any) -> None:
    """Nothing."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespace", action="append", required=True)
    parser.add_argument("--liveness", default=None, help="kopf's liveness endpoint URL")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.run(standalone=True, clusterwide=False, namespaces=args.namespace, liveness_endpoint=args.liveness)


if __name__ == "__main__":
    main()
