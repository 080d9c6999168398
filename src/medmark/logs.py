"""Logging for Snakemake ``script:`` wrappers: everything, tracebacks included, goes to ``log:``."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def script_logging(log_path: str | Path, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Route the root logger to ``log_path`` (and stderr); log any exception before re-raising."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.FileHandler(log_path, mode="w"),
        logging.StreamHandler(sys.stderr),
    ]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    old = root.handlers[:]
    root.handlers = []
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    logger = logging.getLogger("medmark.script")
    t0 = time.perf_counter()
    try:
        yield logger
        # Cacheable rules have no `benchmark:` (Snakemake forbids it): this line is their timing.
        logger.info("stage finished in %.1f s wall time", time.perf_counter() - t0)
    except BaseException:
        logger.exception("stage failed after %.1f s", time.perf_counter() - t0)
        raise
    finally:
        for h in handlers:
            h.close()
        root.handlers = old
