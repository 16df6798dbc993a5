"""Entry point: ``python -m services.feature`` runs one faust worker."""

from __future__ import annotations

import faust

from recsys.logs import logging_config, setup_logging
from recsys.observability import start_health
from services.feature.app import create_app
from services.feature.settings import FeatureSettings


def main() -> None:
    settings = FeatureSettings()
    setup_logging("feature", settings.obs.log_level)
    feature = create_app(settings)
    health = start_health(settings.obs.http_port, lambda: feature.ready)
    # faust's worker reconfigures logging at start; hand it the same JSON config.
    feature.app.conf.logging_config = logging_config("feature", settings.obs.log_level)
    worker = faust.Worker(
        feature.app,
        loglevel=settings.obs.log_level.lower(),
        redirect_stdouts=False,
        quiet=True,
    )
    try:
        worker.execute_from_commandline()
    finally:
        if health:
            health.stop()


if __name__ == "__main__":
    main()
