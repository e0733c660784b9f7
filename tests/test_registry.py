"""The model registry: immutable numbered versions, alias logs, crash safety and the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

import em_spark
from em_spark.app.registry import add_registry_parser, run_registry
from em_spark.storage import ObjectExistsError, get_sealed, seal, write_object
from em_spark.storage import registry as registry_module
from em_spark.storage.registry import ModelRegistry, RegistryError

LOGGER = "em_spark.storage.registry"
METRICS = {"trainAvgLogLik": -3.7542263, "holdoutAvgLogLik": -3.76, "bic": 1234.56, "numIter": 12, "wallSeconds": 4.2}
CONFIG = {"model": {"k": 3, "covarianceType": "full"}, "fit": {"maxIter": 100, "tol": 1e-3}}


@pytest.fixture(autouse=True)
def _registry_logs_reach_caplog(monkeypatch):
    # The CLI's setup_logging stops "em_spark" records at that logger; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("em_spark"), "propagate", True)


@dataclass
class Place:
    """Where a registry lives, and where its objects land on disk."""

    make: Callable[[], ModelRegistry]
    root: Path

    def version_dir(self, number: int, name: str = "gmm") -> Path:
        return self.root / name / "versions" / f"{number:010d}"


@pytest.fixture(params=["plain-path", "file-uri", "non-local"])
def place(request, tmp_path, monkeypatch) -> Place:
    root = tmp_path / "registry"
    if request.param == "plain-path":
        return Place(lambda: ModelRegistry(str(root)), root)
    if request.param == "file-uri":
        return Place(lambda: ModelRegistry(f"file://{root}"), root)
    # A filesystem the storage layer does not treat as local: writes take the direct
    # path an object store takes, while the objects stay inspectable on disk.
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(registry_module, "resolve", lambda uri, s3_endpoint=None: (subtree, "registry"))
    return Place(lambda: ModelRegistry("remote://bucket/registry"), root)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def reg(root) -> ModelRegistry:
    return ModelRegistry(str(root))


def register(reg: ModelRegistry, run_id: str = "r1", name: str = "gmm", model: bytes | None = None, **overrides):
    kwargs = {
        "config": CONFIG,
        "seed": 7,
        "data_fingerprint": "sha256:abc",
        "run_id": run_id,
        "metrics": METRICS,
        "extra": {"note": run_id},
    }
    kwargs.update(overrides)
    return reg.register(name, model if model is not None else f"model of {run_id}".encode(), **kwargs)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# --- versions -------------------------------------------------------------------


def test_register_numbers_versions_from_one_and_round_trips_metadata(place):
    reg = place.make()
    made = [register(reg, f"r{i}", model=f"bytes {i}".encode()) for i in (1, 2, 3)]
    assert [v.version for v in made] == [1, 2, 3]

    fresh = place.make()  # nothing from the writer's cache
    listed = fresh.versions("gmm")
    assert listed == made
    v2 = fresh.get("gmm", 2)
    assert (v2.name, v2.run_id, v2.seed, v2.data_fingerprint) == ("gmm", "r2", 7, "sha256:abc")
    assert v2.config == CONFIG and v2.metrics == METRICS and v2.extra == {"note": "r2"}
    assert v2.package_version == em_spark.__version__
    assert v2.created_at.endswith("Z") and v2.uri.endswith("/gmm/versions/0000000002")
    assert fresh.load_bytes("gmm", 2) == b"bytes 2"
    assert fresh.names() == ["gmm"]
    assert (place.version_dir(2) / "model.emsp").is_file()
    assert (place.version_dir(2) / "version.json.sealed").is_file()


def test_a_version_directory_loads_like_a_saved_model(reg, root):
    from em_spark.api.base import MODEL_FILE

    version = register(reg, model=b"\x00model bytes\xff")
    assert registry_module.MODEL_OBJECT == MODEL_FILE
    assert get_sealed(f"{version.uri}/{MODEL_FILE}") == b"\x00model bytes\xff"


def test_metadata_keeps_numpy_scalars_and_non_finite_metrics(reg):
    metrics = {"bic": np.float64(10.5), "numIter": np.int64(3), "trainAvgLogLik": -math.inf, "history": (1.0, 2.0)}
    version = ModelRegistry(reg.root_uri).get("gmm", register(reg, metrics=metrics).version)
    assert version.metrics == {"bic": 10.5, "numIter": 3, "trainAvgLogLik": -math.inf, "history": [1.0, 2.0]}
    assert type(version.metrics["numIter"]) is int


def test_metadata_json_cannot_hold_is_refused_before_anything_is_written(reg, root):
    with pytest.raises(RegistryError, match=r"metrics\['model'\] has type 'object', which JSON cannot represent"):
        register(reg, metrics={"model": object()})
    with pytest.raises(RegistryError, match="non-string key 1"):
        register(reg, config={1: "a"})
    with pytest.raises(RegistryError, match="seed must be an integer"):
        register(reg, seed="7")
    assert not root.exists()


def test_registering_never_overwrites_and_version_keys_refuse_writes(reg, root):
    first = register(reg, "r1")
    before = {p: (root / p).read_bytes() for p in files_under(root)}
    register(reg, "r2")
    assert all((root / p).read_bytes() == data for p, data in before.items())

    fs = pafs.LocalFileSystem()
    vdir = root / "gmm" / "versions" / "0000000001"
    for key in (vdir / "model.emsp", vdir / "version.json.sealed", root / "gmm" / "versions" / "0000000001.claim"):
        with pytest.raises(ObjectExistsError):
            write_object(fs, str(key), seal(b"replacement"))
    assert ModelRegistry(str(root)).load_bytes("gmm", 1) == b"model of r1" and first.version == 1


def test_a_taken_number_is_skipped_even_when_the_listing_is_stale(reg, root, monkeypatch):
    register(reg, "r1")
    register(reg, "r2")
    monkeypatch.setattr(ModelRegistry, "_claimed_numbers", lambda self, name: [])  # sees nothing claimed
    assert register(reg, "r3").version == 3
    monkeypatch.undo()
    assert [v.run_id for v in ModelRegistry(str(root)).versions("gmm")] == ["r1", "r2", "r3"]


def test_claiming_gives_up_after_a_bounded_number_of_conflicts(reg, monkeypatch):
    register(reg, "r1")
    real_write = registry_module.write_object
    attempts = []

    def always_taken(fs, path, data, overwrite=False):
        if path.endswith(".claim"):
            attempts.append(path)
            raise ObjectExistsError(path)
        real_write(fs, path, data, overwrite=overwrite)

    monkeypatch.setattr(registry_module, "write_object", always_taken)
    with pytest.raises(RegistryError, match="could not claim a version number after 32 attempts"):
        register(reg, "r2")
    assert len(attempts) == registry_module.CLAIM_ATTEMPTS


def test_eight_concurrent_registrations_get_eight_distinct_consecutive_versions(root):
    start = threading.Barrier(8)
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        reg = ModelRegistry(str(root))  # one instance per thread, like separate jobs
        try:
            start.wait()
            results[f"r{i}"] = register(reg, f"r{i}").version
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results.values()) == list(range(1, 9))
    listed = ModelRegistry(str(root)).versions("gmm")
    assert {v.run_id: v.version for v in listed} == results
    assert all(ModelRegistry(str(root)).load_bytes("gmm", n) == f"model of {r}".encode() for r, n in results.items())


def test_find_by_run_id_and_re_registering_a_run_returns_its_version(reg, root, caplog):
    assert reg.find_by_run_id("gmm", "r1") is None  # unknown model: just not found
    first = register(reg, "r1")
    register(reg, "r2")
    assert reg.find_by_run_id("gmm", "r1") == first
    assert reg.find_by_run_id("gmm", "nope") is None

    claims = files_under(root)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = register(ModelRegistry(str(root)), "r1", model=b"different bytes")
    assert again == first and files_under(root) == claims
    assert "already registered as version 1" in caplog.text and "differ" in caplog.text


def test_get_by_number_alias_latest_and_clear_errors(reg):
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    assert reg.get("gmm", "latest").version == 3
    assert reg.get("gmm", 2).version == reg.get("gmm", "2").version == 2
    with pytest.raises(RegistryError, match="alias 'production' of model 'gmm' is not set"):
        reg.get("gmm")
    with pytest.raises(RegistryError, match="unknown version 9 of model 'gmm'; available versions: 1, 2, 3"):
        reg.get("gmm", 9)
    with pytest.raises(RegistryError, match="unknown model 'other'.*known models: gmm"):
        reg.get("other", 1)
    with pytest.raises(
        RegistryError, match="unknown model 'gmm': registry .*-missing does not exist; .*first registration"
    ):
        ModelRegistry(str(reg.root_uri) + "-missing").versions("gmm")
    empty = Path(str(reg.root_uri) + "-empty")
    empty.mkdir()
    with pytest.raises(RegistryError, match="unknown model 'gmm'.*the registry is empty"):
        ModelRegistry(str(empty)).versions("gmm")
    with pytest.raises(RegistryError, match="a version must be a number >= 1"):
        reg.get("gmm", 0)
    reg.promote("gmm", 2)
    assert reg.get("gmm").version == reg.get("gmm", "production").version == 2


# --- crashes and damage --------------------------------------------------------------


def test_a_crash_between_payload_and_metadata_leaves_an_invisible_version(reg, root, monkeypatch):
    register(reg, "r1")
    real_write = registry_module.write_object

    def die_before_metadata(fs, path, data, overwrite=False):
        if path.endswith("version.json.sealed"):
            raise KeyboardInterrupt("killed")  # the job dies: no cleanup is attempted
        real_write(fs, path, data, overwrite=overwrite)

    monkeypatch.setattr(registry_module, "write_object", die_before_metadata)
    with pytest.raises(KeyboardInterrupt):
        register(reg, "r2")
    monkeypatch.undo()
    assert (root / "gmm" / "versions" / "0000000002" / "model.emsp").is_file()

    fresh = ModelRegistry(str(root))
    assert [v.version for v in fresh.versions("gmm")] == [1]
    assert fresh.find_by_run_id("gmm", "r2") is None
    with pytest.raises(RegistryError, match="version 2 is incomplete"):
        fresh.get("gmm", 2)
    with pytest.raises(RegistryError, match="version 2 is incomplete"):
        fresh.promote("gmm", 2)
    [incomplete] = fresh.incomplete_versions("gmm")
    assert (incomplete.version, incomplete.run_id) == (2, "r2") and "no metadata" in incomplete.reason
    # The re-run registers the run again, under the next number.
    assert register(fresh, "r2").version == 3
    assert fresh.find_by_run_id("gmm", "r2").version == 3


@pytest.mark.parametrize("damage", ["torn", "flipped", "garbage", "wrong-version"])
def test_damaged_metadata_is_skipped_with_a_warning(reg, root, caplog, damage):
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    meta = root / "gmm" / "versions" / "0000000002" / "version.json.sealed"
    data = meta.read_bytes()
    if damage == "torn":
        meta.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        meta.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "garbage":
        meta.write_bytes(seal(b"{not json"))
    else:  # a valid object copied from another version
        meta.write_bytes((root / "gmm" / "versions" / "0000000003" / "version.json.sealed").read_bytes())

    fresh = ModelRegistry(str(root))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert [v.version for v in fresh.versions("gmm")] == [1, 3]
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipping version 2" in record.getMessage() and "damaged metadata" in record.getMessage()
    with pytest.raises(RegistryError, match="version 2 is incomplete or damaged"):
        fresh.get("gmm", 2)
    with pytest.raises(RegistryError):
        fresh.load_bytes("gmm", 2)


def test_damaged_or_swapped_model_bytes_are_never_returned(reg, root):
    register(reg, "r1")
    register(reg, "r2")
    model1 = root / "gmm" / "versions" / "0000000001" / "model.emsp"
    model1.write_bytes(model1.read_bytes()[:-1] + b"X")
    with pytest.raises(RegistryError, match="version 1: the model object is damaged"):
        reg.load_bytes("gmm", 1)
    model2 = root / "gmm" / "versions" / "0000000002" / "model.emsp"
    model2.write_bytes(seal(b"a different, validly sealed model"))
    with pytest.raises(RegistryError, match="does not match the checksum recorded"):
        reg.load_bytes("gmm", 2)
    model2.unlink()
    with pytest.raises(RegistryError, match="is missing"):
        reg.load_bytes("gmm", 2)


# --- aliases ----------------------------------------------------------------------------


def test_promote_rollback_and_history(place):
    reg = place.make()
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    assert reg.alias("gmm") is None and reg.alias_history("gmm") == []

    e1 = reg.promote("gmm", 1, reason="first")
    reg.promote("gmm", 2)
    e3 = reg.promote("gmm", 3, reason="better holdout")
    assert (e1.sequence, e1.previous, e1.reason, e1.action) == (1, None, "first", "promote")
    assert (e3.sequence, e3.version, e3.previous) == (3, 3, 2)
    assert reg.promote("gmm", 3) == e3  # already there: nothing appended
    assert place.make().alias("gmm") == 3

    back = reg.rollback("gmm", reason="bad scores")
    assert (back.version, back.previous, back.action, back.reason, back.sequence) == (2, 3, "rollback", "bad scores", 4)
    assert reg.rollback("gmm").version == 1  # undoes promotions like a stack, no ping-pong
    with pytest.raises(
        RegistryError, match="nothing to roll back to: alias 'production' of model 'gmm' points at version 1"
    ):
        reg.rollback("gmm")

    history = place.make().alias_history("gmm")
    assert [(e.sequence, e.version, e.previous, e.action) for e in history] == [
        (1, 1, None, "promote"),
        (2, 2, 1, "promote"),
        (3, 3, 2, "promote"),
        (4, 2, 3, "rollback"),
        (5, 1, 2, "rollback"),
    ]
    assert all(e.at.endswith("Z") and e.by for e in history)
    assert place.make().get("gmm").version == 1


def test_promote_after_rollback_then_rollback_again(reg):
    for i in (1, 2, 3, 4):
        register(reg, f"r{i}")
    for n in (1, 2, 3):
        reg.promote("gmm", n)
    reg.rollback("gmm")  # -> 2
    reg.promote("gmm", 4)
    assert reg.rollback("gmm").version == 2


def test_rollback_with_nothing_before_is_a_clear_error(reg):
    register(reg, "r1")
    with pytest.raises(RegistryError, match="alias 'production' of model 'gmm' is not set; nothing to roll back"):
        reg.rollback("gmm")
    reg.promote("gmm", 1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("gmm")
    assert reg.alias("gmm") == 1 and len(reg.alias_history("gmm")) == 1


def test_promote_refuses_unknown_versions_and_models(reg):
    register(reg, "r1")
    with pytest.raises(RegistryError, match="unknown version 5 of model 'gmm'; available versions: 1"):
        reg.promote("gmm", 5)
    with pytest.raises(RegistryError, match="unknown model 'nope'"):
        reg.promote("nope", 1)
    assert reg.alias_history("gmm") == []


def test_other_aliases_are_independent(reg):
    register(reg, "r1")
    register(reg, "r2")
    reg.promote("gmm", 1)
    reg.promote("gmm", 2, alias="staging")
    assert (reg.alias("gmm"), reg.alias("gmm", "staging")) == (1, 2)
    assert reg.get("gmm", "staging").version == 2
    assert reg.aliases_of("gmm") == {"production": 1, "staging": 2}
    for reserved in ("latest", "7"):
        with pytest.raises(RegistryError, match="select versions, not aliases"):
            reg.promote("gmm", 1, alias=reserved)


def _race_once(reg: ModelRegistry, monkeypatch, racer_version: int, times: int) -> None:
    """Make another promoter append an entry right after ``reg`` reads the log, ``times`` times."""
    real = ModelRegistry._alias_entries
    racer = ModelRegistry(reg.root_uri)
    remaining = [times]

    def read_then_lose_the_race(self, name, alias):
        result = real(self, name, alias)
        if self is reg and remaining[0] > 0:
            remaining[0] -= 1
            target = racer_version if racer.alias(name, alias) != racer_version else 1
            racer.promote(name, target, alias=alias, reason="racer")
        return result

    monkeypatch.setattr(ModelRegistry, "_alias_entries", read_then_lose_the_race)


def test_a_racing_promoter_makes_promote_reread_the_head_once(reg, monkeypatch):
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    reg.promote("gmm", 1)
    _race_once(reg, monkeypatch, racer_version=2, times=1)
    entry = reg.promote("gmm", 3)
    assert (entry.version, entry.previous, entry.sequence) == (3, 2, 3)  # previous is the racer's version
    monkeypatch.undo()
    assert [e.version for e in ModelRegistry(reg.root_uri).alias_history("gmm")] == [1, 2, 3]


def test_losing_the_race_twice_fails_clearly(reg, monkeypatch):
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    reg.promote("gmm", 1)
    _race_once(reg, monkeypatch, racer_version=2, times=2)
    with pytest.raises(RegistryError, match="changed by someone else while this change was being made, twice"):
        reg.promote("gmm", 3)


def test_a_damaged_newest_alias_entry_fails_resolving_instead_of_falling_back(reg, root):
    # Was: the damaged entry was skipped with a warning and the alias silently answered 1.
    for i in (1, 2):
        register(reg, f"r{i}")
    reg.promote("gmm", 1)
    reg.promote("gmm", 2)
    entry = root / "gmm" / "aliases" / "production" / "0000000002.json.sealed"
    entry.write_bytes(entry.read_bytes()[:-3])
    fresh = ModelRegistry(str(root))
    for resolve in (lambda: fresh.alias("gmm"), lambda: fresh.get("gmm"), lambda: fresh.load_bytes("gmm")):
        with pytest.raises(
            RegistryError,
            match=r"alias 'production' of model 'gmm' cannot be resolved: its newest "
            r"log entry 2 \(.*0000000002\.json\.sealed\) is damaged .*"
            r"does not fall back .*registry promote .*--name gmm --version N",
        ):
            resolve()
    assert fresh.aliases_of("gmm") == {}
    history = fresh.alias_history("gmm")
    assert [(e.sequence, e.damaged, e.version) for e in history] == [(1, False, 1), (2, True, None)]
    with pytest.raises(RegistryError, match="newest entry 2 .* is damaged .*none is guessed"):
        fresh.rollback("gmm")
    repaired = fresh.promote("gmm", 2)  # appends past the damaged entry, never over it
    assert (repaired.sequence, repaired.previous, repaired.repairs) == (3, None, 2)
    assert ModelRegistry(str(root)).alias("gmm") == 2


def test_a_damaged_older_alias_entry_is_superseded_but_limits_rollback(reg, root):
    for i in (1, 2, 3, 4):
        register(reg, f"r{i}")
    for n in (1, 2, 3, 4):
        reg.promote("gmm", n)
    entry = root / "gmm" / "aliases" / "production" / "0000000002.json.sealed"
    entry.write_bytes(seal(b"{not json"))
    fresh = ModelRegistry(str(root))
    assert fresh.alias("gmm") == 4  # entry 4 was written after entry 2 existed: it decides
    assert [e.damaged for e in fresh.alias_history("gmm")] == [False, True, False, False]
    assert fresh.rollback("gmm").version == 3  # entries after the damage replay exactly
    with pytest.raises(
        RegistryError,
        match="from version 3: the version before it is unknown because entry 2 "
        ".*is damaged .*none is guessed; promote the version that should be in production explicitly instead",
    ):
        fresh.rollback("gmm")
    assert fresh.alias("gmm") == 3


def test_a_missing_alias_entry_below_the_newest_counts_as_damaged(reg, root):
    for i in (1, 2, 3):
        register(reg, f"r{i}")
    for n in (1, 2, 3):
        reg.promote("gmm", n)
    (root / "gmm" / "aliases" / "production" / "0000000002.json.sealed").unlink()
    history = ModelRegistry(str(root)).alias_history("gmm")
    assert [(e.sequence, e.damaged) for e in history] == [(1, False), (2, True), (3, False)]
    assert "missing" in history[1].problem
    with pytest.raises(RegistryError, match="the version before it is unknown because entry 2"):
        ModelRegistry(str(root)).rollback("gmm")


@pytest.mark.parametrize("damage", ["flipped", "resealed", "missing"])
def test_promote_and_rollback_refuse_a_version_with_a_damaged_model(reg, root, damage):
    for i in (1, 2):
        register(reg, f"r{i}")
    reg.promote("gmm", 1)
    model = root / "gmm" / "versions" / "0000000002" / "model.emsp"
    if damage == "flipped":
        data = model.read_bytes()
        model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "resealed":
        model.write_bytes(seal(b"some other model"))
    else:
        model.unlink()
    with pytest.raises(
        RegistryError,
        match=r"cannot promote model 'gmm' version 2 to alias 'production': the model "
        r"object .*(damaged|does not match|missing).*alias 'production' was not moved",
    ):
        reg.promote("gmm", 2)
    assert reg.alias("gmm") == 1 and len(reg.alias_history("gmm")) == 1


def test_rollback_refuses_a_target_with_a_damaged_model(reg, root):
    for i in (1, 2):
        register(reg, f"r{i}")
    reg.promote("gmm", 1)
    reg.promote("gmm", 2)
    (root / "gmm" / "versions" / "0000000001" / "model.emsp").write_bytes(seal(b"some other model"))
    with pytest.raises(
        RegistryError,
        match="cannot roll back alias 'production' of model 'gmm' to version 1: .*"
        r"does not match .*was not moved \(still version 2\)",
    ):
        reg.rollback("gmm")
    assert reg.alias("gmm") == 2 and len(reg.alias_history("gmm")) == 2


def test_registering_does_not_log_its_own_version_as_incomplete(reg, root, caplog):
    register(reg, "r1")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        register(reg, "r2")
    assert "incomplete" not in caplog.text and "registered version 2" in caplog.text
    # A real incomplete version is still reported.
    claim = root / "gmm" / "versions" / "0000000003.claim"
    write_object(pafs.LocalFileSystem(), str(claim), seal(json.dumps({"run_id": "crashed"}).encode()))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        register(reg, "r4")
    assert "skipping incomplete version 3" in caplog.text and "skipping incomplete version 4" not in caplog.text
    assert [v.version for v in ModelRegistry(str(root)).incomplete_versions("gmm")] == [3]


# --- names --------------------------------------------------------------------------------

BAD_NAMES = ["..", "../x", "a/b", "/abs", "%2e%2e", "%2E%2E%2Fx", ".hidden", "", "a\n", "a b", "a\\b", "x" * 129]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_names_are_refused_and_write_nothing(tmp_path, bad):
    reg = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(RegistryError, match="invalid model name"):
        register(reg, name=bad)
    for call in (
        lambda: reg.versions(bad),
        lambda: reg.get(bad),
        lambda: reg.promote(bad, 1),
        lambda: reg.rollback(bad),
        lambda: reg.find_by_run_id(bad, "r1"),
        lambda: reg.alias_history(bad),
    ):
        with pytest.raises(RegistryError, match="invalid model name"):
            call()
    assert list(tmp_path.iterdir()) == []  # not even the registry root was created

    register(reg, "r1")
    for call in (
        lambda: reg.promote("gmm", 1, alias=bad),
        lambda: reg.rollback("gmm", alias=bad),
        lambda: reg.alias_history("gmm", bad),
    ):
        with pytest.raises(RegistryError, match="invalid alias"):
            call()
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.get("gmm", bad)
    with pytest.raises(RegistryError, match="invalid run id"):
        register(reg, run_id=bad)
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "registry")]
    assert outside == []
    assert files_under(tmp_path / "registry") == [
        "gmm/versions/0000000001.claim",
        "gmm/versions/0000000001/model.emsp",
        "gmm/versions/0000000001/version.json.sealed",
    ]


def test_names_lists_only_models(reg, root):
    assert reg.names() == []
    register(reg, "r1", name="b-model")
    register(reg, "r1", name="a.model")
    (root / ".hidden").mkdir()
    (root / "stray-dir").mkdir()
    (root / "stray-file").write_text("x")
    assert reg.names() == ["a.model", "b-model"]


# --- CLI ------------------------------------------------------------------------------------


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="em-spark")
    add_registry_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(argv: list[str], capsys) -> str:
    assert run_registry(cli(argv)) == 0
    return capsys.readouterr().out


@pytest.fixture
def populated(reg, root) -> str:
    register(reg, "nightly-2024-01-01")
    register(reg, "nightly-2024-01-02", metrics={"trainAvgLogLik": -3.5, "bic": 99.0})
    register(reg, "nightly-2024-01-03", metrics={})
    register(reg, "r1", name="other")
    reg.promote("gmm", 1)
    reg.promote("gmm", 2)
    return str(root)


def test_cli_list_models_and_versions(populated, capsys):
    out = run(["registry", "list", "--registry", populated], capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["model", "production", "latest", "versions"]
    assert lines[1].split() == ["gmm", "2", "3", "3"] and lines[2].split() == ["other", "-", "1", "1"]

    out = run(["registry", "list", "--registry", populated, "--name", "gmm"], capsys)
    lines = out.splitlines()
    assert lines[0].startswith("version") and "train avgLogLik" in lines[0] and "BIC" in lines[0]
    assert lines[1].split()[:3] == ["1", lines[1].split()[1], "nightly-2024-01-01"]
    assert lines[1].split()[3:] == ["-3.754226", "-3.760000", "1234.6"]
    assert lines[2].split()[0] == "*2" and lines[2].split()[3:] == ["-3.500000", "-", "99.0"]
    assert lines[3].split()[0] == "3" and lines[3].split()[3:] == ["-", "-", "-"]
    assert lines[4] == "(* = production)"


def test_cli_list_reports_incomplete_versions_only_when_asked(populated, capsys):
    claim = Path(populated) / "gmm" / "versions" / "0000000004.claim"
    write_object(pafs.LocalFileSystem(), str(claim), seal(json.dumps({"run_id": "crashed"}).encode()))
    out = run(["registry", "list", "--registry", populated, "--name", "gmm"], capsys)
    assert "incomplete" not in out and "crashed" not in out
    out = run(["registry", "list", "--registry", populated, "--name", "gmm", "--incomplete"], capsys)
    assert "incomplete version 4 (run crashed" in out


def test_cli_show_prints_the_metadata_as_json(populated, capsys):
    shown = json.loads(run(["registry", "show", "--registry", populated, "--name", "gmm"], capsys))
    assert shown["version"] == 2 and shown["run_id"] == "nightly-2024-01-02" and shown["aliases"] == ["production"]
    assert shown["config"] == CONFIG and shown["metrics"] == {"trainAvgLogLik": -3.5, "bic": 99.0}
    assert shown["package_version"] == em_spark.__version__ and shown["uri"].endswith("/gmm/versions/0000000002")
    shown = json.loads(
        run(["registry", "show", "--registry", populated, "--name", "gmm", "--version", "latest"], capsys)
    )
    assert shown["version"] == 3 and shown["aliases"] == []
    shown = json.loads(run(["registry", "show", "--registry", populated, "--name", "gmm", "--version", "1"], capsys))
    assert shown["version"] == 1


def test_cli_promote_and_rollback(populated, capsys):
    out = run(
        [
            "registry",
            "promote",
            "--registry",
            populated,
            "--name",
            "gmm",
            "--version",
            "3",
            "--reason",
            "better holdout",
        ],
        capsys,
    )
    assert out.strip() == "model gmm: production -> version 3 (was 2)"
    assert ModelRegistry(populated).alias_history("gmm")[-1].reason == "better holdout"
    out = run(["registry", "rollback", "--registry", populated, "--name", "gmm", "--reason", "regression"], capsys)
    assert out.strip() == "model gmm: production rolled back to version 2 (was 3)"
    out = run(["registry", "promote", "--registry", populated, "--name", "other", "--version", "1"], capsys)
    assert out.strip() == "model other: production -> version 1 (was not set)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "--name", "nope"], "unknown model 'nope'.*known models: gmm, other"),
        (["show", "--name", "gmm", "--version", "9"], "unknown version 9 of model 'gmm'; available versions: 1, 2, 3"),
        (["show", "--name", "other"], "alias 'production' of model 'other' is not set"),
        (["promote", "--name", "gmm", "--version", "7"], "unknown version 7"),
        (["rollback", "--name", "other"], "is not set; nothing to roll back"),
        (["list", "--name", "../etc"], "invalid model name '../etc'"),
    ],
)
def test_cli_errors_are_registry_errors(populated, argv, message):
    args = cli(["registry", argv[0], "--registry", populated, *argv[1:]])
    with pytest.raises(RegistryError, match=message):
        run_registry(args)


def test_cli_list_on_an_empty_registry(tmp_path, capsys):
    # Was: a root that does not exist also said "no models"; now only an existing empty one does.
    (tmp_path / "empty").mkdir()
    out = run(["registry", "list", "--registry", str(tmp_path / "empty")], capsys)
    assert out.strip() == f"no models in {tmp_path / 'empty'}"
    with pytest.raises(RegistryError, match="registry .*none does not exist; check --registry, or create it"):
        run_registry(cli(["registry", "list", "--registry", str(tmp_path / "none")]))
    assert not (tmp_path / "none").exists()


def test_cli_show_does_not_print_credentials_from_the_registry_uri(populated, capsys, monkeypatch):
    from em_spark.app import registry as registry_cli

    class CredentialedRegistry(ModelRegistry):
        def __init__(self, root_uri, *, s3_endpoint=None):
            super().__init__(root_uri, s3_endpoint=s3_endpoint)
            self.root_uri = "s3://AKIA:SECRET@bucket/registry"  # as if given with credentials

    monkeypatch.setattr(registry_cli, "ModelRegistry", CredentialedRegistry)
    out = run(["registry", "show", "--registry", populated, "--name", "gmm"], capsys)
    assert "SECRET" not in out and json.loads(out)["uri"] == "s3://***@bucket/registry/gmm/versions/0000000002"


def test_cli_requires_a_registry_and_a_sub_command(capsys):
    with pytest.raises(SystemExit):
        cli(["registry", "list"])
    with pytest.raises(SystemExit):
        cli(["registry"])
    args = cli(["registry", "list", "--registry", "s3://bucket/reg", "--s3-endpoint", "http://127.0.0.1:9"])
    assert (args.registry, args.s3_endpoint, args.name) == ("s3://bucket/reg", "http://127.0.0.1:9", None)


# --- S3 -------------------------------------------------------------------------------------


@pytest.mark.s3
def test_registry_on_s3(s3_bucket, s3_server):
    """The same protocol on a real S3 API (the conditional create is If-None-Match there)."""
    uri = f"{s3_bucket}/registry"
    reg = ModelRegistry(uri, s3_endpoint=s3_server.endpoint)
    assert [register(reg, f"r{i}").version for i in (1, 2, 3)] == [1, 2, 3]
    fresh = ModelRegistry(uri, s3_endpoint=s3_server.endpoint)
    assert fresh.names() == ["gmm"] and [v.run_id for v in fresh.versions("gmm")] == ["r1", "r2", "r3"]
    assert fresh.load_bytes("gmm", 2) == b"model of r2"
    fresh.promote("gmm", 1)
    fresh.promote("gmm", 3)
    assert fresh.rollback("gmm").version == 1 and fresh.get("gmm").version == 1

    results: list[int] = []
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        results.append(register(ModelRegistry(uri, s3_endpoint=s3_server.endpoint), f"c{i}").version)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(4, 12))
