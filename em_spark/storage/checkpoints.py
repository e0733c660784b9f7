"""Per-run checkpoints on any filesystem ``pyarrow.fs`` reaches.

Layout: ``<root>/<run_id>/checkpoints/ckpt-<sequence:010d>.emck``, each object a
sealed payload (see :mod:`em_spark.storage.frame`). The store never interprets
payloads; the sequence is an increasing integer chosen by the caller.

The commit protocol does not trust that an object exists: a crashed writer can
leave a torn object under its final name (GCS or HDFS through pyarrow publish
partial writes; local and S3 writes are atomic, but a machine crash or another
tool can still tear an object). So every read verifies the checksum, ``latest()``
falls back past damaged objects, a damaged object at the sequence being committed
is replaced, and retention counts only checkpoints that verify. One writer per
run id is assumed; on local disks and S3 a second writer racing for the same new
sequence gets :class:`ObjectExistsError` instead of overwriting.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

from em_spark.storage.errors import CorruptObjectError, SequenceConflictError
from em_spark.storage.frame import seal, unseal
from em_spark.storage.fs import (
    absolute_uri,
    delete_object,
    join,
    list_names,
    read_object,
    redact_uri,
    resolve,
    validate_name,
    write_object,
)
from em_spark.storage.names import MAX_NUMBER, NumberedNames

__all__ = ["DEFAULT_KEEP_LAST", "Checkpoint", "CheckpointStore"]

DEFAULT_KEEP_LAST = 3  # newest valid checkpoints kept per run (FitSettings.keep_checkpoints)

_OBJECT_NAMES = NumberedNames("ckpt-", ".emck")
_MAX_SEQUENCE = MAX_NUMBER  # ten digits keep name order equal to numeric order


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its sequence, payload and where it is stored."""

    sequence: int
    payload: bytes
    uri: str


class CheckpointStore:
    """Commit and recover the checkpoints of one run.

    Parameters
    ----------
    root_uri : str
        Where runs live: a path, ``file://``, ``s3://``, ``gs://``, ``hdfs://`` ... URI.
    run_id : str
        A safe name (see :func:`~em_spark.storage.fs.validate_name`).
    keep_last : int
        How many newest valid checkpoints survive each commit (>= 1).
    s3_endpoint : str, optional
        Explicit S3 endpoint such as ``http://127.0.0.1:9000``.
    logger : logging.Logger, optional
        Receives warnings about damaged objects; defaults to this module's logger.
    """

    def __init__(
        self,
        root_uri: str,
        run_id: str,
        *,
        keep_last: int = DEFAULT_KEEP_LAST,
        s3_endpoint: str | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        # Validate before touching any filesystem: a bad run id must write nothing.
        self.run_id = validate_name(run_id, "run id")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        self.keep_last = keep_last
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._fs, root_path = resolve(root_uri, s3_endpoint=s3_endpoint)
        self._dir = join(root_path, self.run_id, "checkpoints")
        self._dir_uri = join(absolute_uri(root_uri), self.run_id, "checkpoints")
        # Sequences this instance has read back intact. A valid object is never
        # rewritten, so it need not be read again to count it during retention.
        self._verified: set[int] = set()

    @property
    def directory_uri(self) -> str:
        """URI of the directory holding this run's checkpoints."""
        return self._dir_uri

    def __repr__(self) -> str:
        return f"CheckpointStore({redact_uri(self._dir_uri)!r}, keep_last={self.keep_last})"

    # --- public -------------------------------------------------------------

    def commit(self, sequence: int, payload: bytes) -> str:
        """Store ``payload`` as checkpoint ``sequence``, prune old ones, return its URI.

        Raises :class:`SequenceConflictError` (an ``ObjectExistsError``) if a valid
        checkpoint exists at this sequence or a later one: committing below it would
        be silently shadowed by ``latest()``. The URI is built from ``root_uri``; if
        that carried credentials, so does the URI (log it with ``redact_uri``).
        """
        sequence = _checked_sequence(sequence)
        uri = self._uri(sequence)
        present = [s for s in self.sequences() if s >= sequence]
        for other in reversed(present):
            if self._try_read(other)[0] is not None:  # read afresh: the cache is for retention only
                raise SequenceConflictError(self._conflict_message(sequence, other))
        # Still present but not valid: a torn write from an earlier, crashed attempt.
        replace_torn = sequence in present
        if replace_torn:
            self._log.warning(
                "run %s: replacing corrupt checkpoint %s (a torn write from an earlier attempt)",
                self.run_id,
                redact_uri(uri),
            )
        write_object(self._fs, self._path(sequence), seal(payload), overwrite=replace_torn)
        # Read back before pruning: never delete good checkpoints for a bad new one.
        written, reason = self._try_read(sequence)
        if written is None:
            raise CorruptObjectError(
                f"checkpoint {redact_uri(uri)} is damaged right after it was written ({reason}); "
                "older checkpoints were left in place"
            )
        self._log.debug("run %s: committed checkpoint %d at %s", self.run_id, sequence, redact_uri(uri))
        self._prune(committed=sequence)
        return uri

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None``; damaged ones are skipped with a warning."""
        damaged: list[tuple[str, str]] = []
        for sequence in reversed(self.sequences()):
            payload, reason = self._try_read(sequence)
            if payload is None:
                damaged.append((self._uri(sequence), reason))
                continue
            for uri, why in damaged:
                self._log.warning(
                    "run %s: checkpoint %s is corrupt (%s); fell back to sequence %d",
                    self.run_id,
                    redact_uri(uri),
                    why,
                    sequence,
                )
            return Checkpoint(sequence, payload, self._uri(sequence))
        for uri, why in damaged:
            self._log.warning(
                "run %s: checkpoint %s is corrupt (%s); no valid checkpoint remains to fall back to",
                self.run_id,
                redact_uri(uri),
                why,
            )
        return None

    def sequences(self) -> list[int]:
        """Sequences of all objects named like checkpoints (valid or not), ascending."""
        return _OBJECT_NAMES.numbers(list_names(self._fs, self._dir))

    # --- internals ------------------------------------------------------------

    def _path(self, sequence: int) -> str:
        return join(self._dir, _object_name(sequence))

    def _uri(self, sequence: int) -> str:
        return join(self._dir_uri, _object_name(sequence))

    def _try_read(self, sequence: int) -> tuple[bytes | None, str]:
        """``(payload, "")`` if the object verifies, else ``(None, reason)``.

        Other I/O errors propagate: a network failure is not a damaged checkpoint,
        and falling back past it would silently resume from an older state.
        """
        try:
            payload = unseal(read_object(self._fs, self._path(sequence)))
        except CorruptObjectError as exc:
            return None, str(exc)
        except FileNotFoundError:
            return None, "it disappeared while being read"
        self._verified.add(sequence)
        return payload, ""

    def _is_valid(self, sequence: int) -> bool:
        return sequence in self._verified or self._try_read(sequence)[0] is not None

    def _prune(self, committed: int) -> None:
        """Keep ``keep_last`` newest valid checkpoints up to ``committed``; delete older and damaged ones."""
        try:
            kept = 1  # the one just committed, already verified
            for sequence in reversed(self.sequences()):
                if sequence >= committed:
                    continue  # only older objects are this commit's business
                if kept < self.keep_last and self._is_valid(sequence):
                    kept += 1
                    continue
                delete_object(self._fs, self._path(sequence), missing_ok=True)
                self._verified.discard(sequence)
                self._log.debug("run %s: pruned checkpoint %d", self.run_id, sequence)
        except OSError as exc:
            # Retention is housekeeping: the checkpoint is committed, so report and go on.
            self._log.warning(
                "run %s: checkpoint %d is committed, but pruning older checkpoints failed: %s",
                self.run_id,
                committed,
                exc,
            )

    def _conflict_message(self, sequence: int, existing: int) -> str:
        if existing == sequence:
            what = f"a valid checkpoint {sequence} already exists at {redact_uri(self._uri(existing))}"
        else:
            what = f"a newer valid checkpoint {existing} exists at {redact_uri(self._uri(existing))}"
        return (
            f"run {self.run_id}: refusing to commit checkpoint {sequence}: {what}; "
            "checkpoints are never overwritten and sequences must increase "
            "(resume from latest(), or start a new run id)"
        )


def _object_name(sequence: int) -> str:
    return _OBJECT_NAMES.name(sequence)


def _checked_sequence(sequence: int) -> int:
    if isinstance(sequence, bool):
        raise TypeError("checkpoint sequence must be an integer, got a bool")
    sequence = operator.index(sequence)
    if not 0 <= sequence <= _MAX_SEQUENCE:
        raise ValueError(f"checkpoint sequence must be in [0, {_MAX_SEQUENCE}], got {sequence}")
    return sequence
