"""How every trainer-image entry point (trainer, snapshot, consolidation) logs: one format, to stderr.

Standard library only: the entry points set logging up before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

#: The level when ``--log-level`` is not given (the Job's pod template may set it for every entry point).
LEVEL_VARIABLE = "CONTINUAL_TRAINER_LOG_LEVEL"


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """The ``--log-level`` option (default: ``$CONTINUAL_TRAINER_LOG_LEVEL``, else INFO)."""
    parser.add_argument("--log-level", default=os.environ.get(LEVEL_VARIABLE, "INFO"))


def configure(level: str) -> None:
    """Log at ``level`` (a name such as ``info``) to stderr, with time, level and logger name."""
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
