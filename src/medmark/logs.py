"""Logging for Snakemake ``script:`` wrappers: everything, tracebacks included, goes to ``log:``.

On success the wrapper of a Snakemake job also writes the job's provenance record
(:mod:`medmark.provenance`), once its outputs exist.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def script_logging(
    log_path: str | Path, level: int = logging.INFO, job: Any = None
) -> Iterator[logging.Logger]:
    """Route the root logger to ``log_path`` (and stderr); log any exception before re-raising.

    ``job``: the ``snakemake`` object of the running script (default: the one Snakemake put in
    ``__main__``); when there is one, its provenance record is written after the body succeeds.
    """
    from medmark import provenance

    job = job if job is not None else provenance.snakemake_job()
    started = provenance.now()
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
        if job is not None:
            record = provenance.write_job_record(job, started)
            logger.info("provenance record: %s", record)
        # Cacheable rules have no `benchmark:` (Snakemake forbids it): this line is their timing.
        logger.info("stage finished in %.1f s wall time", time.perf_counter() - t0)
    except BaseException:
        logger.exception("stage failed after %.1f s", time.perf_counter() - t0)
        raise
    finally:
        for h in handlers:
            h.close()
        root.handlers = old
