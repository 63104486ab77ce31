"""Wall time per named span of a stage, logged as it goes (kept out of the metrics: it varies run to run)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Timer:
    """Wall time per named span (kept out of the metrics: it varies run to run), logged as it goes."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        log.info("%s ...", name)
        start = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.1f s", name, self.times[name])
