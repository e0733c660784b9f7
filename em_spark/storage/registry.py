"""A model registry on any ``pyarrow.fs`` URI: immutable numbered versions and alias logs.

Layout under ``<root>/<model-name>/``::

    versions/0000000007.claim                 claims number 7 (conditional create; sealed JSON: run id, when, who)
    versions/0000000007/model.emsp            the model bytes, sealed (same file as EMModel.save writes)
    versions/0000000007/version.json.sealed   the metadata, sealed; its existence makes version 7 complete
    aliases/production/0000000003.json.sealed entry 3 of the append-only log of alias "production"

Every object is written once and never changed or deleted, and the only atomic
primitive used is "create this key unless it exists" (``write_object`` with
``overwrite=False``: ``link(2)`` locally, ``If-None-Match: *`` on S3). That is why:

* version numbers are claimed with a small marker object, not by listing and
  hoping: two registrations that pick the same number cannot both create it;
* the model payload is written before the metadata, and readers treat only a
  version whose metadata verifies as complete, so a crash leaves an invisible
  incomplete version rather than a broken visible one;
* an alias is an append-only log of entries instead of one pointer object that is
  overwritten: overwriting atomically would need compare-and-swap on the object's
  ETag (``If-Match``), which this registry deliberately does not rely on. The
  current value is the newest entry, and only the newest: entries are created at
  "highest listed sequence + 1", so entry k+1 was always written after entry k
  existed and supersedes it whatever it said;
* the registry never moves an alias by itself: if the newest entry is damaged,
  resolving the alias fails and names the entry, and the repair is an explicit
  ``promote`` that appends a fresh entry past it. A damaged *older* entry is
  reported but does not decide anything, except that ``rollback`` cannot go back
  past it (the promotion stack below it is unknown and is never guessed).

The registry never interprets model bytes and never imports a model class.
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

import pyarrow.fs as pafs

from em_spark.storage.codec import to_jsonable
from em_spark.storage.errors import (
    CorruptObjectError,
    InvalidNameError,
    ObjectExistsError,
    UnsupportedContentError,
)
from em_spark.storage.frame import seal, unseal
from em_spark.storage.fs import (
    absolute_uri,
    exists,
    join,
    list_names,
    read_object,
    redact_uri,
    resolve,
    validate_name,
    write_object,
)
from em_spark.storage.names import MAX_NUMBER, MODEL_FILE, NumberedNames

__all__ = [
    "DEFAULT_ALIAS",
    "LATEST",
    "AliasEntry",
    "DamagedAliasEntry",
    "IncompleteVersion",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
]

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "production"
LATEST = "latest"  # a reserved selector for get(), so it cannot be an alias name
MODEL_OBJECT = MODEL_FILE  # the name EMModel.save writes: a version directory loads with Model.load()
METADATA_OBJECT = "version.json.sealed"
METADATA_FORMAT = 1
ALIAS_FORMAT = 1
CLAIM_ATTEMPTS = 32  # a registration loses at most one race per concurrent winner
_MAX_NUMBER = MAX_NUMBER  # ten digits keep name order equal to numeric order
_VERSIONS = NumberedNames()  # versions/0000000007/
_CLAIMS = NumberedNames(suffix=".claim")  # versions/0000000007.claim
_ENTRIES = NumberedNames(suffix=".json.sealed")  # aliases/<alias>/0000000003.json.sealed
_METADATA_FIELDS = {
    "run_id": str,
    "created_at": str,
    "seed": int,
    "data_fingerprint": str,
    "package_version": str,
    "config": dict,
    "metrics": dict,
    "extra": dict,
}


class RegistryError(ValueError):
    """A registry request that cannot be satisfied; the message says what to do instead."""


@dataclass(frozen=True)
class ModelVersion:
    """One complete, verified version of a model. ``uri`` is the version's directory."""

    name: str
    version: int
    run_id: str
    created_at: str
    metrics: dict
    config: dict
    seed: int
    data_fingerprint: str
    package_version: str
    extra: dict
    uri: str
    model_sha256: str = ""
    model_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AliasEntry:
    """One entry of an alias log: from ``sequence`` on, ``alias`` points at ``version``."""

    alias: str
    version: int
    previous: int | None
    at: str
    reason: str
    sequence: int
    action: str = "promote"  # or "rollback"
    by: str = ""
    # Written on top of a damaged newest entry: that entry's sequence (``previous`` is then unknown, None).
    repairs: int | None = None

    # Literal: ``if entry.damaged`` tells a type checker which of the two an entry is
    damaged: ClassVar[Literal[False]] = False


@dataclass(frozen=True)
class DamagedAliasEntry:
    """An entry of an alias log that does not verify (torn, flipped, misplaced) or is missing.

    It is shown in :meth:`ModelRegistry.alias_history` so damage is never hidden; it
    points at no version (``version`` is ``None``).
    """

    alias: str
    sequence: int
    uri: str
    problem: str

    damaged: ClassVar[Literal[True]] = True
    version: ClassVar[None] = None


@dataclass(frozen=True)
class IncompleteVersion:
    """A claimed version number without verified metadata: in progress, crashed or damaged."""

    name: str
    version: int
    reason: str
    run_id: str | None = None
    claimed_at: str | None = None
    uri: str = field(default="", repr=False)


class ModelRegistry:
    """Register, list, load and promote model versions under ``root_uri``.

    ``root_uri`` is a path or any URI ``pyarrow.fs`` understands (``file://``,
    ``s3://bucket/prefix``, ...); ``s3_endpoint`` names an S3-compatible endpoint.
    Instances are cheap and thread-safe; verified metadata is cached per instance,
    which is safe because nothing is ever rewritten.
    """

    def __init__(self, root_uri: str, *, s3_endpoint: str | None = None) -> None:
        try:
            self._fs, self._root = resolve(root_uri, s3_endpoint=s3_endpoint)
        except ValueError as exc:
            raise RegistryError(f"cannot open model registry: {exc}") from None
        self.root_uri = absolute_uri(root_uri)
        self._metadata_cache: dict[tuple[str, int], dict] = {}
        self._entry_cache: dict[tuple[str, str, int], AliasEntry] = {}

    def __repr__(self) -> str:
        return f"ModelRegistry({redact_uri(self.root_uri)!r})"

    # --- writing ------------------------------------------------------------

    def register(
        self,
        name: str,
        model_bytes: bytes,
        *,
        config: Mapping[str, Any],
        seed: int,
        data_fingerprint: str,
        run_id: str,
        metrics: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Store ``model_bytes`` (from ``model.to_bytes()``) as the next version of ``name``.

        Idempotent per run id: if ``run_id`` already has a complete version, that
        version is returned and nothing is written (a re-run of a nightly job that
        died after registering must not create a duplicate).
        """
        _check_name(name, "model name")
        run_id = _check_name(run_id, "run id")
        if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
            raise RegistryError(f"model_bytes must be bytes (model.to_bytes()), got {type(model_bytes).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RegistryError(f"seed must be an integer, got {seed!r}")
        if not isinstance(data_fingerprint, str):
            raise RegistryError(f"data_fingerprint must be a string, got {type(data_fingerprint).__name__}")
        model_bytes = bytes(model_bytes)
        model_sha256 = hashlib.sha256(model_bytes).hexdigest()
        # Converted up front: a metric JSON cannot hold must fail before a number is claimed.
        fields = {
            "config": _jsonable(config, "config", mapping=True),
            "metrics": _jsonable(metrics, "metrics", mapping=True),
            "extra": _jsonable(extra if extra is not None else {}, "extra", mapping=True),
        }

        existing = self.find_by_run_id(name, run_id)
        if existing is not None:
            self._log_duplicate(existing, model_sha256)
            return existing

        number = self._claim_number(name, run_id)
        payload_path = self._version_path(name, number, MODEL_OBJECT)
        write_object(self._fs, payload_path, seal(model_bytes))  # payload first: metadata is the commit point

        # The upload is the slow step; a run registered meanwhile (one writer per run id
        # is assumed, as for checkpoints) still wins, and this version stays incomplete.
        existing = self._find_by_run_id(name, run_id, in_flight=number)
        if existing is not None:
            self._log_duplicate(existing, model_sha256)
            return existing

        import em_spark

        metadata = {
            "format": METADATA_FORMAT,
            "name": name,
            "version": number,
            "run_id": run_id,
            "created_at": _utc_now(),
            "seed": seed,
            "data_fingerprint": data_fingerprint,
            "package_version": em_spark.__version__,
            **fields,
            "model": {"object": MODEL_OBJECT, "sha256": model_sha256, "size": len(model_bytes)},
        }
        write_object(self._fs, self._version_path(name, number, METADATA_OBJECT), seal(_dumps(metadata)))
        version, problem = self._read_version(name, number)
        if version is None:
            raise RegistryError(
                f"model {name!r} version {number}: the metadata is damaged right after it was written "
                f"({problem}); the version stays incomplete, register again"
            )
        log.info("model %s: registered version %d (run %s) at %s", name, number, run_id, redact_uri(version.uri))
        return version

    def promote(self, name: str, version: int, *, alias: str = DEFAULT_ALIAS, reason: str = "") -> AliasEntry:
        """Point ``alias`` of ``name`` at ``version`` (a complete version); no-op if it already does."""
        _check_name(name, "model name")
        alias = _check_alias(alias)
        number = _check_number(version)
        found = self.get(name, number)  # unknown model or version: a clear error before anything is written
        # A version whose model bytes are damaged would only fail later, when scoring with it.
        self._verified_model_bytes(
            found,
            f"cannot promote model {name!r} version {number} to alias {alias!r}: ",
            f"; alias {alias!r} was not moved",
        )

        def entry_for(history: list[AliasEntry | DamagedAliasEntry]) -> AliasEntry | None:
            head = history[-1] if history else None
            if head is None:
                return _new_entry(alias, number, None, reason, "promote")
            if head.damaged:  # the repair: a fresh entry supersedes the damaged one
                log.warning(
                    "model %s: alias %s entry %d is damaged (%s); the new entry %d supersedes it",
                    name,
                    alias,
                    head.sequence,
                    head.problem,
                    head.sequence + 1,
                )
                return _new_entry(alias, number, None, reason, "promote", repairs=head.sequence)
            if head.version == number:
                return None
            return _new_entry(alias, number, head.version, reason, "promote")

        return self._append_alias_entry(name, alias, entry_for)

    def rollback(self, name: str, *, alias: str = DEFAULT_ALIAS, reason: str = "") -> AliasEntry:
        """Point ``alias`` back at the version it pointed at before the current one.

        Rollbacks undo promotions like a stack: promote 1, 2, 3 then rollback twice
        gives 2, then 1 (not 2, 3, 2, ...).
        """
        _check_name(name, "model name")
        alias = _check_alias(alias)
        self._require_model(name)

        def entry_for(history: list[AliasEntry | DamagedAliasEntry]) -> AliasEntry:
            if not history:
                raise RegistryError(f"alias {alias!r} of model {name!r} is not set; nothing to roll back")
            head = history[-1]
            repair = self._repair_hint(name, alias, head_damaged=head.damaged)
            if head.damaged:
                raise RegistryError(
                    f"cannot roll back alias {alias!r} of model {name!r}: its newest entry {head.sequence} "
                    f"({redact_uri(head.uri)}) is damaged ({head.problem}), so neither the version it points at "
                    f"nor the one before is known and none is guessed; {repair}"
                )
            stack = _promotion_stack(history)
            current = head.version
            if len(stack) < 2 or stack[-2] is None:
                if len(stack) >= 2:  # None only stands for what a damaged entry hid
                    cut = [e for e in history if e.damaged][-1]
                    raise RegistryError(
                        f"cannot roll back alias {alias!r} of model {name!r} from version {current}: the version "
                        f"before it is unknown because entry {cut.sequence} of its log ({redact_uri(cut.uri)}) is "
                        f"damaged ({cut.problem}) and none is guessed; {repair}"
                    )
                raise RegistryError(
                    f"nothing to roll back to: alias {alias!r} of model {name!r} points at version {current} "
                    "and no earlier version was promoted before it; promote a version explicitly instead"
                )
            target = stack[-2]
            found, problem = self._read_version(name, target)
            if found is None:
                raise RegistryError(
                    f"cannot roll back alias {alias!r} of model {name!r} to version {target}: that version is "
                    f"missing or damaged ({problem}); promote a version explicitly instead"
                )
            self._verified_model_bytes(
                found,
                f"cannot roll back alias {alias!r} of model {name!r} to version {target}: ",
                f"; alias {alias!r} was not moved (still version {current}); promote a version explicitly instead",
            )
            return _new_entry(alias, target, current, reason, "rollback")

        return self._append_alias_entry(name, alias, entry_for)

    # --- reading --------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the registry root exists (a first registration creates it)."""
        return exists(self._fs, self._root)

    def names(self) -> list[str]:
        """Names of the models in the registry, sorted."""
        selector = pafs.FileSelector(self._root, allow_not_found=True, recursive=False)
        candidates = sorted(
            info.base_name
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and _is_valid_name(info.base_name)
        )
        return [name for name in candidates if exists(self._fs, self._model_path(name, "versions"))]

    def versions(self, name: str) -> list[ModelVersion]:
        """Complete versions of ``name``, ascending. Damaged ones are skipped with a warning."""
        _check_name(name, "model name")
        self._require_model(name)
        return self._complete_versions(name)

    def incomplete_versions(self, name: str) -> list[IncompleteVersion]:
        """Claimed versions without verified metadata (in progress, crashed or damaged)."""
        _check_name(name, "model name")
        self._require_model(name)
        out = []
        for number in self._claimed_numbers(name):
            version, problem = self._read_version(name, number)
            if version is None:
                claim = self._read_claim(name, number)
                out.append(
                    IncompleteVersion(
                        name,
                        number,
                        problem,
                        claim.get("run_id"),
                        claim.get("claimed_at"),
                        self._version_uri(name, number),
                    )
                )
        return out

    def find_by_run_id(self, name: str, run_id: str) -> ModelVersion | None:
        """The (lowest-numbered) complete version registered by ``run_id``, or ``None``."""
        _check_name(name, "model name")
        return self._find_by_run_id(name, run_id)

    def _find_by_run_id(self, name: str, run_id: str, in_flight: int | None = None) -> ModelVersion | None:
        for version in self._complete_versions(name, in_flight=in_flight):
            if version.run_id == run_id:
                return version
        return None

    def get(self, name: str, version: int | str = DEFAULT_ALIAS) -> ModelVersion:
        """A complete version by number, by alias name, or ``"latest"``."""
        _check_name(name, "model name")
        self._require_model(name)
        if isinstance(version, str) and not version.isdigit():
            if version == LATEST:
                complete = self._complete_versions(name)
                if not complete:
                    raise RegistryError(f"model {name!r} has no complete version yet")
                return complete[-1]
            alias = _check_alias(version)
            number = self.alias(name, alias)
            if number is None:
                raise RegistryError(
                    f"alias {alias!r} of model {name!r} is not set; promote a version first "
                    f"(versions: {self._describe_numbers(name)})"
                )
        else:
            number = _check_number(version)
        found, problem = self._read_version(name, number)
        if found is not None:
            return found
        if number in self._claimed_numbers(name):
            raise RegistryError(
                f"model {name!r} version {number} is incomplete or damaged ({problem}); "
                f"available versions: {self._describe_numbers(name)}"
            )
        raise RegistryError(
            f"unknown version {number} of model {name!r}; available versions: {self._describe_numbers(name)}"
        )

    def load_bytes(self, name: str, version: int | str = DEFAULT_ALIAS) -> bytes:
        """The model bytes of a version (for ``Model.from_bytes``), checked against its metadata."""
        found = self.get(name, version)
        return self._verified_model_bytes(found, f"model {name!r} version {found.version}: ")

    def _verified_model_bytes(self, found: ModelVersion, prefix: str, suffix: str = "") -> bytes:
        """The version's model bytes if their seal and recorded checksum verify, else a RegistryError."""
        uri = redact_uri(join(found.uri, MODEL_OBJECT))
        try:
            data = unseal(read_object(self._fs, self._version_path(found.name, found.version, MODEL_OBJECT)))
        except FileNotFoundError:
            raise RegistryError(f"{prefix}the model object {uri} is missing{suffix}") from None
        except CorruptObjectError as exc:
            raise RegistryError(f"{prefix}the model object is damaged ({exc}): {uri}{suffix}") from None
        if hashlib.sha256(data).hexdigest() != found.model_sha256:
            raise RegistryError(
                f"{prefix}the model object {uri} does not match the checksum recorded in its metadata{suffix}"
            )
        return data

    def alias(self, name: str, alias: str = DEFAULT_ALIAS) -> int | None:
        """The version ``alias`` points at, or ``None`` if it was never set.

        A :class:`RegistryError` naming the entry and the repair if the newest entry of
        the log is damaged: the alias is never resolved from an older entry instead.
        """
        history = self.alias_history(name, alias)
        if not history:
            return None
        head = history[-1]
        if head.damaged:
            raise RegistryError(self._damaged_head_message(name, alias, history))
        return head.version

    def alias_history(self, name: str, alias: str = DEFAULT_ALIAS) -> list[AliasEntry | DamagedAliasEntry]:
        """Every entry of the alias log, oldest first; damaged or missing ones as :class:`DamagedAliasEntry`."""
        _check_name(name, "model name")
        alias = _check_alias(alias)
        self._require_model(name)
        return self._alias_entries(name, alias)

    def alias_names(self, name: str) -> list[str]:
        """The aliases of ``name`` that have a log (set, or damaged), sorted."""
        _check_name(name, "model name")
        aliases_dir = self._model_path(name, "aliases")
        selector = pafs.FileSelector(aliases_dir, allow_not_found=True, recursive=False)
        return sorted(
            info.base_name
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
            and _is_valid_name(info.base_name)
            and info.base_name != LATEST
            and not info.base_name.isdigit()
        )

    def aliases_of(self, name: str) -> dict[str, int]:
        """Every alias of ``name`` that is set, with the version it points at.

        An alias whose newest entry is damaged points at no known version and is left
        out; :meth:`alias` raises for it and :meth:`alias_history` shows the damage.
        """
        found = {}
        for alias in self.alias_names(name):
            history = self._alias_entries(name, alias)
            if history and not history[-1].damaged:
                found[alias] = history[-1].version
        return found

    # --- versions: internals ------------------------------------------------------

    def _model_path(self, name: str, *parts: str) -> str:
        return join(self._root, name, *parts)

    def _version_path(self, name: str, number: int, obj: str) -> str:
        return join(self._root, name, "versions", _number_name(number), obj)

    def _version_uri(self, name: str, number: int) -> str:
        return join(self.root_uri, name, "versions", _number_name(number))

    def _claimed_numbers(self, name: str) -> list[int]:
        names = list_names(self._fs, self._model_path(name, "versions"))
        return _CLAIMS.numbers(names)

    def _claim_number(self, name: str, run_id: str) -> int:
        """Create the claim marker of the next free number; retry past numbers others took."""
        claim = seal(_dumps({"run_id": run_id, "claimed_at": _utc_now(), "by": _who()}))
        candidate = 0
        for _ in range(CLAIM_ATTEMPTS):
            claimed = self._claimed_numbers(name)
            candidate = max(candidate, claimed[-1] if claimed else 0) + 1
            if candidate > _MAX_NUMBER:
                raise RegistryError(f"model {name!r} has used every version number up to {_MAX_NUMBER}")
            try:
                write_object(self._fs, self._model_path(name, "versions", _CLAIMS.name(candidate)), claim)
                return candidate
            except ObjectExistsError:
                log.debug("model %s: version %d was claimed concurrently, trying the next", name, candidate)
        raise RegistryError(
            f"model {name!r}: could not claim a version number after {CLAIM_ATTEMPTS} attempts "
            f"(last tried {candidate}); are more than {CLAIM_ATTEMPTS} registrations running at once?"
        )

    def _read_claim(self, name: str, number: int) -> dict:
        try:
            claim = json.loads(unseal(read_object(self._fs, self._model_path(name, "versions", _CLAIMS.name(number)))))
            return claim if isinstance(claim, dict) else {}
        except (OSError, ValueError):
            return {}  # informational only: a claim counts by existing

    def _read_version(self, name: str, number: int) -> tuple[ModelVersion | None, str]:
        """``(version, "")`` if its metadata verifies, else ``(None, reason)``.

        Other I/O errors propagate: a network failure is not a damaged version.
        """
        metadata = self._metadata_cache.get((name, number))
        if metadata is None:
            try:
                raw = read_object(self._fs, self._version_path(name, number, METADATA_OBJECT))
            except FileNotFoundError:
                return None, "no metadata: the registration is in progress or crashed before finishing"
            try:
                metadata = _parse_metadata(unseal(raw), name, number)
            except (CorruptObjectError, ValueError) as exc:
                return None, f"damaged metadata: {exc}"
            self._metadata_cache[(name, number)] = metadata
        return _version_from_metadata(copy.deepcopy(metadata), self._version_uri(name, number)), ""

    def _complete_versions(self, name: str, in_flight: int | None = None) -> list[ModelVersion]:
        """Complete versions; ``in_flight`` is the caller's own registration, incomplete by design."""
        complete = []
        for number in self._claimed_numbers(name):
            version, problem = self._read_version(name, number)
            if version is not None:
                complete.append(version)
            elif number == in_flight and not problem.startswith("damaged"):
                continue
            elif problem.startswith("damaged"):
                log.warning(
                    "model %s: skipping version %d at %s: %s",
                    name,
                    number,
                    redact_uri(self._version_uri(name, number)),
                    problem,
                )
            else:
                # Possibly a registration running right now: not worth a warning.
                log.info("model %s: skipping incomplete version %d (%s)", name, number, problem)
        return complete

    def _require_model(self, name: str) -> None:
        if exists(self._fs, self._model_path(name, "versions")):
            return
        if not self.exists():
            raise RegistryError(
                f"unknown model {name!r}: registry {redact_uri(self.root_uri)} does not exist; check the registry "
                "URI, or create it with a first registration (a nightly run or ModelRegistry.register)"
            )
        known = self.names()
        listing = ", ".join(known) if known else "none, the registry is empty"
        raise RegistryError(f"unknown model {name!r} in registry {redact_uri(self.root_uri)}; known models: {listing}")

    def _describe_numbers(self, name: str) -> str:
        numbers = [v.version for v in self._complete_versions(name)]
        return ", ".join(map(str, numbers)) if numbers else "none"

    def _log_duplicate(self, existing: ModelVersion, model_sha256: str) -> None:
        differs = " (the new model bytes differ and were not stored)" if existing.model_sha256 != model_sha256 else ""
        log.warning(
            "model %s: run %s is already registered as version %d; not registering it again%s",
            existing.name,
            existing.run_id,
            existing.version,
            differs,
        )

    # --- aliases: internals ---------------------------------------------------------

    def _alias_dir(self, name: str, alias: str) -> str:
        return self._model_path(name, "aliases", alias)

    def _alias_entry_uri(self, name: str, alias: str, sequence: int) -> str:
        return join(self.root_uri, name, "aliases", alias, _ENTRIES.name(sequence))

    def _alias_entries(self, name: str, alias: str) -> list[AliasEntry | DamagedAliasEntry]:
        """Every entry from 1 to the highest sequence present, oldest first; damage is kept visible.

        A sequence number below the highest that is not listed (entries are never
        deleted, so something removed it) is reported as damaged too.
        """
        names = list_names(self._fs, self._alias_dir(name, alias))
        present = set(_ENTRIES.numbers(names))
        entries: list[AliasEntry | DamagedAliasEntry] = []
        for sequence in range(1, max(present, default=0) + 1):
            key = (name, alias, sequence)
            entry = self._entry_cache.get(key)
            if entry is None:
                if sequence not in present:
                    entries.append(
                        DamagedAliasEntry(
                            alias,
                            sequence,
                            self._alias_entry_uri(name, alias, sequence),
                            "missing: the log has later entries but not this one",
                        )
                    )
                    continue
                path = join(self._alias_dir(name, alias), _ENTRIES.name(sequence))
                try:
                    entry = _parse_entry(unseal(read_object(self._fs, path)), alias, sequence)
                except FileNotFoundError:
                    problem = "listed but could not be read"
                except CorruptObjectError as exc:
                    problem = str(exc)
                except ValueError as exc:
                    problem = f"not a valid alias entry: {exc}"
                else:
                    self._entry_cache[key] = entry
                    entries.append(entry)
                    continue
                entries.append(
                    DamagedAliasEntry(alias, sequence, self._alias_entry_uri(name, alias, sequence), problem)
                )
                continue
            entries.append(entry)
        return entries

    def _repair_hint(self, name: str, alias: str, *, head_damaged: bool = True) -> str:
        if alias == DEFAULT_ALIAS:
            how = f"`em-spark registry promote --registry {redact_uri(self.root_uri)} --name {name} --version N`"
        else:
            how = f"ModelRegistry.promote({name!r}, N, alias={alias!r})"
        if head_damaged:
            return (
                f"to repair, promote the version that should be in {alias} explicitly: {how} appends a fresh "
                "entry that supersedes the damaged one"
            )
        return f"promote the version that should be in {alias} explicitly instead: {how}"

    def _damaged_head_message(self, name: str, alias: str, history: list[AliasEntry | DamagedAliasEntry]) -> str:
        head = history[-1]
        assert head.damaged  # (what this message is about)
        verified = [e for e in history if not e.damaged]
        before = (
            f" (entry {verified[-1].sequence}, the newest that verifies, had set version "
            f"{verified[-1].version} before it)"
            if verified
            else ""
        )
        return (
            f"alias {alias!r} of model {name!r} cannot be resolved: its newest log entry {head.sequence} "
            f"({redact_uri(head.uri)}) is damaged ({head.problem}), so the version it set is unknown{before}, and "
            f"the registry does not fall back to an older entry; {self._repair_hint(name, alias)}"
        )

    def _append_alias_entry(
        self, name: str, alias: str, entry_for: Callable[[list[AliasEntry | DamagedAliasEntry]], AliasEntry | None]
    ) -> AliasEntry:
        """Append the entry ``entry_for(history)`` at the next sequence, by conditional create.

        A concurrent promoter that wins the sequence makes this one re-read the log
        and decide again, once; a second loss is reported rather than retried forever.
        """
        for _attempt in range(2):
            history = self._alias_entries(name, alias)
            entry = entry_for(history)
            if entry is None:  # already pointing there
                head = history[-1]
                assert not head.damaged  # (entry_for repairs a damaged head)
                log.info("model %s: alias %s already points at version %d", name, alias, head.version)
                return head
            sequence = (history[-1].sequence if history else 0) + 1
            if sequence > _MAX_NUMBER:
                raise RegistryError(f"alias {alias!r} of model {name!r} has no sequence numbers left")
            entry = AliasEntry(**{**asdict(entry), "sequence": sequence})
            path = join(self._alias_dir(name, alias), _ENTRIES.name(sequence))
            try:
                write_object(self._fs, path, seal(_dumps({"format": ALIAS_FORMAT, **asdict(entry)})))
            except ObjectExistsError:
                log.info("model %s: alias %s changed concurrently (entry %d taken); re-reading", name, alias, sequence)
                continue
            self._entry_cache[(name, alias, sequence)] = entry
            was = f"unknown, entry {entry.repairs} is damaged" if entry.repairs is not None else entry.previous
            log.info("model %s: alias %s -> version %d (was %s, %s)", name, alias, entry.version, was, entry.action)
            return entry
        raise RegistryError(
            f"alias {alias!r} of model {name!r} was changed by someone else while this change was being made, "
            "twice; check `em-spark registry list` and try again"
        )


# --- helpers -------------------------------------------------------------------


def _check_name(name: str, what: str) -> str:
    try:
        return validate_name(name, what)
    except InvalidNameError as exc:
        raise RegistryError(str(exc)) from None


def _check_alias(alias: str) -> str:
    _check_name(alias, "alias")
    if alias == LATEST or alias.isdigit():
        raise RegistryError(f"invalid alias {alias!r}: 'latest' and plain numbers select versions, not aliases")
    return alias


def _is_valid_name(name: str) -> bool:
    try:
        validate_name(name)
        return True
    except InvalidNameError:
        return False


def _check_number(version: Any) -> int:
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _MAX_NUMBER:
        raise RegistryError(f"a version must be a number >= 1, an alias name or {LATEST!r}, got {version!r}")
    return version


def _number_name(number: int) -> str:
    return _VERSIONS.name(number)


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _dumps(value: Any) -> bytes:
    # allow_nan: a diverged run may report -inf or NaN; Python's json reads them back.
    return json.dumps(value, ensure_ascii=False, allow_nan=True, sort_keys=True, indent=1).encode("utf-8")


def _jsonable(value: Any, where: str, *, mapping: bool = False) -> Any:
    """``value`` as plain JSON types (numpy scalars converted), or a :class:`RegistryError`."""
    if mapping and not isinstance(value, Mapping):
        raise RegistryError(f"{where} must be a dict, got {type(value).__name__}")
    try:
        return to_jsonable(value, where)
    except UnsupportedContentError as exc:
        raise RegistryError(str(exc)) from None


def _parse_metadata(payload: bytes, name: str, number: int) -> dict:
    metadata = json.loads(payload.decode("utf-8"))
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"not registry metadata of format {METADATA_FORMAT}")
    # A metadata object copied into the wrong directory must not pass for this version.
    if metadata.get("name") != name or metadata.get("version") != number:
        raise ValueError(f"it describes {metadata.get('name')!r} version {metadata.get('version')!r}")
    for key, kind in _METADATA_FIELDS.items():
        if not isinstance(metadata.get(key), kind) or isinstance(metadata.get(key), bool):
            raise ValueError(f"field {key!r} is missing or not a {kind.__name__}")
    model = metadata.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("sha256"), str):
        raise ValueError("it records no model checksum")
    return metadata


def _version_from_metadata(metadata: dict, uri: str) -> ModelVersion:
    return ModelVersion(
        name=metadata["name"],
        version=metadata["version"],
        run_id=metadata["run_id"],
        created_at=metadata["created_at"],
        metrics=metadata["metrics"],
        config=metadata["config"],
        seed=metadata["seed"],
        data_fingerprint=metadata["data_fingerprint"],
        package_version=metadata["package_version"],
        extra=metadata["extra"],
        uri=uri,
        model_sha256=metadata["model"]["sha256"],
        model_size=metadata["model"].get("size", 0),
    )


def _new_entry(
    alias: str, version: int, previous: int | None, reason: str, action: str, repairs: int | None = None
) -> AliasEntry:
    if not isinstance(reason, str):
        raise RegistryError(f"reason must be a string, got {type(reason).__name__}")
    return AliasEntry(
        alias=alias,
        version=version,
        previous=previous,
        at=_utc_now(),
        reason=reason,
        sequence=0,
        action=action,
        by=_who(),
        repairs=repairs,
    )


def _parse_entry(payload: bytes, alias: str, sequence: int) -> AliasEntry:
    raw = json.loads(payload.decode("utf-8"))
    if not isinstance(raw, dict) or raw.get("format") != ALIAS_FORMAT:
        raise ValueError(f"not an alias entry of format {ALIAS_FORMAT}")
    if raw.get("alias") != alias or raw.get("sequence") != sequence:
        raise ValueError(f"it claims to be entry {raw.get('sequence')!r} of alias {raw.get('alias')!r}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"invalid version {version!r}")
    return AliasEntry(
        alias=alias,
        version=version,
        previous=raw.get("previous"),
        at=str(raw.get("at", "")),
        reason=str(raw.get("reason", "")),
        sequence=sequence,
        action=str(raw.get("action", "promote")),
        by=str(raw.get("by", "")),
        repairs=raw.get("repairs") if isinstance(raw.get("repairs"), int) else None,
    )


def _promotion_stack(history: list[AliasEntry | DamagedAliasEntry]) -> list[int | None]:
    """Replay the log: a promotion pushes its version, a rollback pops back to its version.

    A damaged entry could have been either, so everything below it becomes unknown:
    the stack restarts as ``[None]`` and a rollback can never reach past it. Entries
    after it still replay exactly (they say which version they set).
    """
    stack: list[int | None] = []
    for entry in history:
        if entry.damaged:
            stack = [None]
        elif entry.action == "rollback":
            if stack and stack[-1] is not None:
                stack.pop()
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        elif not stack or stack[-1] != entry.version:
            stack.append(entry.version)
    return stack
