"""A tag on every Spark job of one run, so users find its jobs and Ctrl-C stops them.

On Spark Connect the client's ``spark.addTag`` tags every operation it sends; a
KeyboardInterrupt in the client (which drives the EM loop) then asks the server to interrupt
them (``spark.interruptTag``): without it the server goes on running the iteration's job for a
client that has gone. On a classic session the SparkContext's job tags do the same
(``addJobTag`` / ``cancelJobsWithTag``), for RDD and DataFrame jobs alike. The tag is removed
afterwards, on error too: tags are per thread and would otherwise mark the next run's jobs.
Threads a fit starts for its work (``select``'s candidates, engine/shared_passes.py) inherit
the tags through :func:`tag_carrying_thread`.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from em_spark.engine.dataframe_source import is_connect

__all__ = ["run_tag", "tag_carrying_thread", "tagged_jobs"]

log = logging.getLogger("em_spark")


def run_tag(run_id: str | None) -> str:
    """``em_spark-<run id>`` (a fresh id for a run without one); Spark refuses commas in tags."""
    return "em_spark-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", run_id) if run_id else uuid.uuid4().hex[:12])


@contextmanager
def tagged_jobs(spark: Any, run_id: str | None) -> Iterator[str]:
    """Tag the jobs this thread starts on ``spark`` with :func:`run_tag`; yield the tag."""
    tag = run_tag(run_id)
    connect = is_connect(spark)
    sc: Any = None if connect else spark.sparkContext
    if connect:
        spark.addTag(tag)
    else:
        sc.addJobTag(tag)
        sc.setInterruptOnCancel(True)  # a cancelled task's Python worker is interrupted, not left running
    try:
        yield tag
    except KeyboardInterrupt:
        try:
            if connect:
                spark.interruptTag(tag)
            else:
                sc.cancelJobsWithTag(tag)
        except Exception as exc:  # noqa: BLE001 -- the interrupt the user asked for goes on either way
            log.warning("could not stop the Spark jobs tagged %s: %s", tag, exc)
        raise
    finally:
        if connect:
            spark.removeTag(tag)
        else:
            sc.removeJobTag(tag)
            sc.setInterruptOnCancel(False)


def tag_carrying_thread(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> threading.Thread:
    """A thread whose Spark jobs carry the calling thread's job tags (not started).

    pyspark's InheritableThread copies them: on a classic session the JVM thread's local
    properties, which hold the SparkContext job tags; on Connect the active session's tags.
    Without a Spark session (local sources) it is a plain thread.
    """
    from pyspark.sql import SparkSession
    from pyspark.util import InheritableThread

    session = SparkSession.getActiveSession()
    if session is None:
        return threading.Thread(target=target, args=args, name=name, daemon=True)
    return InheritableThread(target, session=session, args=args, name=name, daemon=True)
