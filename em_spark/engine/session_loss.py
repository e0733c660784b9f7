"""A Spark Connect server lost mid-fit: recognizing it, and bounding how long a client waits.

On Connect the client drives the EM loop and the data are cached on the server. When that
server dies or restarts between iterations, the next iteration's job cannot succeed: a new
server has none of the cached data (pyspark reports ``INVALID_HANDLE.SESSION_CHANGED``, or a
server-side session id that changed), and a dead one is ``UNAVAILABLE``. pyspark's client
retries ``UNAVAILABLE`` for about ten minutes by default (:data:`PYSPARK_DEFAULT_WAIT_SECONDS`);
the sessions em_spark builds retry for about a minute (:data:`RETRY_POLICY`), then the fit
stops with :class:`SessionLostError`. Its checkpoints are whole (one is only written after
its iteration's job returned), so the same command, run again, resumes.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = [
    "PYSPARK_DEFAULT_WAIT_SECONDS",
    "RETRY_POLICY",
    "SessionLostError",
    "bound_retries",
    "close_lost_session",
    "describe_server",
    "first_line",
    "is_session_lost",
    "retry_wait_seconds",
]

log = logging.getLogger("em_spark")


class SessionLostError(RuntimeError):
    """The Spark session holding a fit's cached data is gone (its Connect server died or restarted)."""


#: pyspark.sql.connect.client.retries.DefaultPolicy's arguments for em_spark's sessions: retries
#: waiting 0.05, 0.2, 0.8, 3.2, 12.8, 15, 15, 15 s (plus up to 0.5 s of jitter each past 2 s),
#: about 62 s in all, enough for a network blip, not ten minutes per call against a dead server
RETRY_POLICY: dict[str, Any] = {
    "max_retries": 8,
    "initial_backoff": 50,
    "backoff_multiplier": 4.0,
    "max_backoff": 15_000,
}

#: what pyspark 4.3's DefaultPolicy waits in all before it gives up on an unavailable server
#: (15 retries, 50 ms x 4 per retry, at most 60 s each, without jitter): 608 s
PYSPARK_DEFAULT_WAIT_SECONDS = 608.25

#: error conditions of a session whose server-side state is gone
_LOST_CONDITIONS = ("INVALID_HANDLE.SESSION_CHANGED", "INVALID_HANDLE.SESSION_CLOSED", "NO_ACTIVE_SESSION")


def retry_wait_seconds(max_retries: int, initial_backoff: int, backoff_multiplier: float, max_backoff: int) -> float:
    """The total of a DefaultPolicy's waits (milliseconds in, seconds out), without jitter."""
    total, wait = 0.0, float(initial_backoff)
    for _ in range(max_retries):
        total += wait
        wait = min(float(max_backoff), wait * backoff_multiplier)
    return total / 1000.0


def bound_retries(spark: Any) -> None:
    """Make a Connect session em_spark built give up on an unavailable server after about a
    minute (:data:`RETRY_POLICY`) instead of pyspark's ten; a no-op for a classic session."""
    client = getattr(spark, "client", None)
    if client is None or not hasattr(client, "set_retry_policies"):
        return
    from pyspark.sql.connect.client.retries import DefaultPolicy

    client.set_retry_policies([DefaultPolicy(**RETRY_POLICY)])


def is_session_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (from a Connect call) says the server holding the session is gone."""
    condition = exc.getCondition() if hasattr(exc, "getCondition") else None
    if condition and condition.startswith(_LOST_CONDITIONS):
        return True
    text = str(exc)
    if "INVALID_HANDLE.SESSION_CHANGED" in text or "incorrect server side session identifier" in text:
        return True
    if hasattr(exc, "getGrpcStatusCode"):  # a grpc.StatusCode, after the client's retries
        return getattr(exc.getGrpcStatusCode(), "name", "") == "UNAVAILABLE"
    return False


def describe_server(spark: Any) -> str:
    """``the Spark Connect server at sc://host:port`` (or without the address when unknown)."""
    try:
        return f"the Spark Connect server at sc://{spark.client._builder.endpoint}"
    except Exception:  # noqa: BLE001 -- a private attribute of pyspark's client; the message still helps
        return "the Spark Connect server"


def close_lost_session(spark: Any) -> None:
    """Close the client of a session whose server is gone, so that the calls after the error
    (releasing the cache, stopping the session) fail at once instead of retrying again.
    pyspark does the same itself on ``SESSION_CHANGED``."""
    try:
        spark.client.close()
    except Exception as exc:  # noqa: BLE001 -- best effort; the loss is the error to report
        log.debug("closing the lost session's client: %s", exc)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters (no server stack trace)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
