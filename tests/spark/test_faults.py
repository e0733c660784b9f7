"""Fault injection on real Spark: every fault is injected for real, and every faulted fit is
compared with a fault-free fit of the same data in the same setup.

1. An E-step task raises on its first attempt (``local[2,4]``: 4 attempts per task).
2. A Python worker dies mid-E-step (``os._exit(1)``) on its first attempt.
3. An executor JVM is SIGKILLed mid-E-step (``local-cluster[2,1,1024]``).
   Faults 1-3 are injected into fits through both block sources of a classic session: the RDD
   source (its default) and the DataFrame source (a Spark Connect session's, here on a
   classic one so that the executors can be hurt), in the same applications.
4. The driver is SIGKILLed (whole process group) after checkpoint k; and, separately, it dies
   in the middle of a checkpoint commit after writing half the object under its final name.
   The same command, run again, resumes and ends with the model of an uninterrupted run.
5. The newest checkpoints of a finished run are truncated and bit-flipped: the resume falls
   back past them to the last intact iteration. (The JVM-free variant of truncation is in
   tests/engine/test_loop.py; this is the spark-submit job.)

The faults come from the scripts in ``tests/spark/faults/``: a Gaussian family whose E-step
injects the fault (shipped to the executors by value, em_spark untouched), and a wrapper of
the train job that pauses after, or tears, one checkpoint commit. Every fault fires once,
recorded by a marker file.

Each scenario is a separate Spark application (a different master cannot share the pytest
process's session, and killing a driver needs a process of its own). On a 2-core machine an
application takes 20-60 s, mostly JVM and Python-worker start-up, so the module starts the
applications its selected tests need at once, at most three at a time, in background threads;
each test then waits for its own and checks the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.clitools import process_group_members

REPO = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROWS, FEATURES, K, MAX_ITER, SEED = 20_000, 3, 3, 8, 7
APP_TIMEOUT = 600  # seconds per Spark application
PARALLEL_APPS = 3


# --- subprocesses -----------------------------------------------------------------------


def _spark_submit() -> str:
    found = Path(sys.executable).with_name("spark-submit")
    return str(found) if found.exists() else shutil.which("spark-submit")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def _submit(master: str, work: Path, *conf: str) -> list[str]:
    # Spark's scratch space (block manager, SparkFiles root and so em_spark's local block files)
    # and the JVM's temporary files under the test's directory: a SIGKILLed driver cannot clean
    # up after itself.
    (work / "jvm-tmp").mkdir(parents=True, exist_ok=True)
    args = [
        _spark_submit(),
        "--master",
        master,
        "--driver-java-options",
        f"-Djava.io.tmpdir={work / 'jvm-tmp'}",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.log.level=WARN",
        "--conf",
        f"spark.local.dir={work / 'spark-local'}",
    ]
    for item in conf:
        args += ["--conf", item]
    return args


class App:
    """One spark-submit in its own process group (so the whole driver tree can be killed)."""

    def __init__(self, args: list[str], log: Path, cwd: Path):
        self.args, self.log_path = args, log
        self._log_file = open(log, "wb")  # noqa: SIM115 (closed by wait())
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=_env(), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pgid = self.popen.pid  # start_new_session: the child leads its own group
        self.seconds: float | None = None

    def wait(self, timeout: float = APP_TIMEOUT) -> int:
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.popen.wait()
            raise
        finally:
            self.seconds = time.perf_counter() - self.started
            self._log_file.close()
        return rc

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class _Registry:
    """Every App this module started, so that teardown can end the ones still running."""

    def __init__(self):
        self._apps: list[App] = []
        self._lock = threading.Lock()
        self._closed = False

    def launch(self, args: list[str], log: Path, cwd: Path) -> App:
        with self._lock:
            if self._closed:
                raise RuntimeError("the test module is tearing down; not starting another application")
            app = App(args, log, cwd)
            self._apps.append(app)
            return app

    def end_all(self) -> None:
        """Kill the process groups of the apps still running; start no more."""
        with self._lock:
            self._closed = True
            for app in self._apps:
                if app.alive():
                    app.kill_group()


def _is_executor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"CoarseGrainedExecutorBackend" in f.read()
    except OSError:
        return False


# --- data, configs, results ----------------------------------------------------------------


def _write_data(path: Path) -> None:
    from em_spark.app.demo_data import write_blobs

    # Overlapping blobs: the parameters still move at iteration 8, so every iteration counts.
    write_blobs(str(path), ROWS, FEATURES, K, separation=2.5, seed=11)


def _train_config(root: Path, data: Path, run_id: str, checkpoints: Path, model: Path) -> Path:
    config = {
        "run": {"id": run_id, "checkpointDir": str(checkpoints), "keepCheckpoints": 3},
        "input": {
            "path": str(data),
            "format": "parquet",
            "features": [f"x{j}" for j in range(FEATURES)],
            "generate": None,
        },
        "model": {"family": "gaussian", "k": K, "covarianceType": "full"},
        "fit": {"maxIter": MAX_ITER, "tol": 0.0, "nInit": 1, "seed": SEED},
        "output": {"modelPath": str(model), "overwrite": True},
    }
    path = root / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(root: Path, config: Path, fault_dir: Path, *fault: str) -> list[str]:
    return [
        *_submit("local[2]", root),
        str(FAULTS / "train_with_faults.py"),
        "--fault-dir",
        str(fault_dir),
        *fault,
        "--config",
        str(config),
    ]


def _ckpt(sequence: int) -> str:
    return f"ckpt-{sequence:010d}.emck"


def _ckpt_dir(checkpoints: Path, run_id: str) -> Path:
    return checkpoints / run_id / "checkpoints"


def _load_model(path: Path):
    from em_spark.api import load_model

    return load_model(path.as_uri())


def _assert_same_model(model, reference) -> None:
    """Bit-identical parameters and likelihood history."""
    assert set(model.arrays) == set(reference.arrays)
    for name, value in reference.arrays.items():
        assert np.array_equal(model.arrays[name], value), f"{name} differs from the uninterrupted run"
    assert model.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    assert model.summary.numIter == reference.summary.numIter == MAX_ITER


def _fit_results(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{name}.npz") as npz:
        return {key: npz[key] for key in npz.files}


def _assert_same_fit(fit: dict, reference: dict) -> None:
    params = sorted(k for k in reference if k.startswith("param."))
    assert params and params == sorted(k for k in fit if k.startswith("param."))
    for key in params:
        assert np.array_equal(fit[key], reference[key]), f"{key} is not bit-identical to the fault-free fit"
    assert np.array_equal(fit["history"], reference["history"])
    # Every iteration's statistics cover each row exactly once: no partition lost or counted twice.
    assert fit["counts"].tolist() == [float(ROWS)] * MAX_ITER
    assert fit["weights"].tolist() == [float(ROWS)] * MAX_ITER


def _marker(fault_dir: Path, pattern: str) -> dict:
    found = sorted(fault_dir.glob(pattern))
    assert len(found) == 1, f"expected one marker {pattern} in {fault_dir}, found {found}"
    return json.loads(found[0].read_text())


# --- the applications, run in the background -------------------------------------------------


class Scenario:
    """What the jobs share: where they write, the data, the running apps."""

    def __init__(self, root: Path, registry: _Registry):
        self.root = root
        self.registry = registry
        self.data = root / "data"
        _write_data(self.data)
        self.futures: dict[str, Future] = {}

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def app(self, args: list[str], log_name: str, cwd: Path) -> App:
        return self.registry.launch(args, cwd / log_name, cwd)

    def result(self, name: str, timeout: float = 6 * APP_TIMEOUT):
        return self.futures[name].result(timeout=timeout)


def _fit_faults_app(s: Scenario, name: str, master: str, fits: list[str], *conf: str) -> dict:
    """spark-submit faults/fit_faults.py on ``master`` with the given fits; wait for it (an
    application timeout for every two fits: each source's fault-free and faulted fits)."""
    work, out, faults = s.dir(name), s.dir(f"{name}/out"), s.dir(f"{name}/markers")
    app = s.app(
        [
            *_submit(master, work, *conf),
            str(FAULTS / "fit_faults.py"),
            "--data",
            s.data.as_uri(),
            "--out",
            str(out),
            "--fault-dir",
            str(faults),
            "--max-iter",
            str(MAX_ITER),
            *fits,
        ],
        "app.log",
        work,
    )
    rc = app.wait(timeout=APP_TIMEOUT * max(1, len(fits) // 2))
    return {"rc": rc, "log": app.log, "out": out, "faults": faults, "seconds": app.seconds}


def job_task_faults(s: Scenario) -> dict:
    """local[2,4]: a fault-free fit, a fit whose task raises once, one whose worker dies once;
    through the RDD source, then the DataFrame source (another partition and iteration each)."""
    return _fit_faults_app(
        s,
        "task-faults",
        "local[2,4]",
        [
            "reference:none",
            "raised:raise:3:0",
            "crashed:exit:5:1",
            "df-reference:none:3:0:dataframe",
            "df-raised:raise:4:1:dataframe",
            "df-crashed:exit:6:0:dataframe",
        ],
    )


def job_executor_kill(s: Scenario) -> dict:
    """local-cluster: a fault-free fit, then one whose executor JVM is SIGKILLed mid-E-step;
    through the RDD source, then the DataFrame source."""
    return _fit_faults_app(
        s,
        "executor-kill",
        "local-cluster[2,1,1024]",
        [
            "reference:none",
            "killed:kill-executor:3:0",
            "df-reference:none:3:0:dataframe",
            "df-killed:kill-executor:4:1:dataframe",
        ],
        "spark.executor.memory=768m",
    )


def job_reference(s: Scenario) -> dict:
    """The train job, uninterrupted."""
    work = s.dir("reference")
    config = _train_config(work, s.data, "reference", work / "checkpoints", work / "model")
    app = s.app(_train(work, config, s.dir("reference/markers")), "train.log", work)
    rc = app.wait()
    return {
        "rc": rc,
        "log": app.log,
        "model": work / "model",
        "checkpoints": work / "checkpoints",
        "seconds": app.seconds,
    }


KILL_AFTER = 3


def job_driver_kill(s: Scenario) -> dict:
    """SIGKILL the driver's process group once checkpoint KILL_AFTER exists; run the command again."""
    work, faults = s.dir("driver-kill"), s.dir("driver-kill/markers")
    config = _train_config(work, s.data, "killed", work / "checkpoints", work / "model")
    command = _train(work, config, faults, "--pause-after", str(KILL_AFTER))
    ckpts = _ckpt_dir(work / "checkpoints", "killed")
    first = s.app(command, "first.log", work)
    target = ckpts / _ckpt(KILL_AFTER)
    deadline = time.monotonic() + APP_TIMEOUT
    while not target.exists():
        if not first.alive() or time.monotonic() > deadline:
            first.kill_group()
            raise AssertionError(f"checkpoint {KILL_AFTER} never appeared:\n{first.log[-3000:]}")
        time.sleep(0.02)
    seen_at_kill = sorted(p.name for p in ckpts.glob("ckpt-*"))
    first.kill_group()
    rc_first = first.wait()
    deadline = time.monotonic() + 15
    while process_group_members(first.pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = process_group_members(first.pgid)
    left = sorted(p.name for p in ckpts.glob("ckpt-*"))
    again = s.app(command, "again.log", work)
    rc_again = again.wait()
    return {
        "rc_first": rc_first,
        "rc_again": rc_again,
        "first_log": first.log,
        "again_log": again.log,
        "seen_at_kill": seen_at_kill,
        "left": left,
        "survivors": survivors,
        "model": work / "model",
        "seconds": (first.seconds, again.seconds),
    }


TORN_AT = 4


def job_torn_commit(s: Scenario) -> dict:
    """The driver writes half of checkpoint TORN_AT under its final name and dies; run the command again."""
    work, faults = s.dir("torn"), s.dir("torn/markers")
    config = _train_config(work, s.data, "torn", work / "checkpoints", work / "model")
    command = _train(work, config, faults, "--torn-at", str(TORN_AT))
    ckpts = _ckpt_dir(work / "checkpoints", "torn")
    first = s.app(command, "first.log", work)
    rc_first = first.wait()
    torn = ckpts / _ckpt(TORN_AT)
    torn_size = torn.stat().st_size if torn.exists() else None
    left = sorted(p.name for p in ckpts.glob("ckpt-*"))
    again = s.app(command, "again.log", work)
    rc_again = again.wait()
    return {
        "rc_first": rc_first,
        "rc_again": rc_again,
        "first_log": first.log,
        "again_log": again.log,
        "left": left,
        "torn_size": torn_size,
        "model": work / "model",
        "seconds": (first.seconds, again.seconds),
        "after": sorted(p.name for p in ckpts.glob("ckpt-*")),
    }


def job_corrupt_latest(s: Scenario) -> dict:
    """A finished run's checkpoints, newest truncated and the one before bit-flipped; resume."""
    reference = s.result("reference")
    assert reference["rc"] == 0, reference["log"][-3000:]
    work = s.dir("corrupt")
    # The same run id in another checkpoint root: a copy of the finished run.
    shutil.copytree(reference["checkpoints"] / "reference", work / "checkpoints" / "reference")
    config = _train_config(work, s.data, "reference", work / "checkpoints", work / "model")
    ckpts = _ckpt_dir(work / "checkpoints", "reference")
    names = sorted(p.name for p in ckpts.glob("ckpt-*"))
    newest, previous = ckpts / names[-1], ckpts / names[-2]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) - 100])  # truncated
    data = bytearray(previous.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    previous.write_bytes(bytes(data))
    app = s.app(_train(work, config, s.dir("corrupt/markers")), "resume.log", work)
    rc = app.wait()
    return {
        "rc": rc,
        "log": app.log,
        "names": names,
        "model": work / "model",
        "seconds": app.seconds,
        "after": sorted(p.name for p in ckpts.glob("ckpt-*")),
    }


# name: (job, the jobs it waits for). Submitted in this order (longest first).
JOBS = {
    "executor_kill": (job_executor_kill, ()),
    "reference": (job_reference, ()),
    "driver_kill": (job_driver_kill, ("reference",)),
    "torn_commit": (job_torn_commit, ("reference",)),
    "task_faults": (job_task_faults, ()),
    "corrupt_latest": (job_corrupt_latest, ("reference",)),
}


def needs(*jobs: str):
    """Declare which background jobs a test reads."""

    def mark(test):
        test.needs_jobs = jobs
        return test

    return mark


@pytest.fixture(scope="module")
def scenario(request, tmp_path_factory):
    selected = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    wanted: set[str] = set()
    for item in selected:
        for name in getattr(item.function, "needs_jobs", ()):
            wanted |= {name, *JOBS[name][1]}
    registry = _Registry()
    s = Scenario(tmp_path_factory.mktemp("faults"), registry)
    pool = ThreadPoolExecutor(max_workers=PARALLEL_APPS, thread_name_prefix="spark-app")
    try:
        for name, (job, _) in JOBS.items():
            if name in wanted:
                s.futures[name] = pool.submit(job, s)
        yield s
    finally:
        registry.end_all()
        pool.shutdown(wait=True, cancel_futures=True)


def _report(what: str, **numbers) -> None:
    print(
        f"[faults] {what}: "
        + ", ".join(f"{k}={v:.1f}s" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    )


# --- 4. the driver is killed ---------------------------------------------------------------


@needs("driver_kill")
def test_driver_sigkilled_after_an_iteration_resumes_at_the_next_one_and_ends_bit_identical(scenario):
    r = scenario.result("driver_kill")
    assert r["rc_first"] == -signal.SIGKILL, r["first_log"][-3000:]
    assert r["survivors"] == [], f"processes of the killed driver's group survived: {r['survivors']}"
    # Killed after checkpoint KILL_AFTER was committed and before the next one.
    assert _ckpt(KILL_AFTER) in r["seen_at_kill"] and _ckpt(KILL_AFTER + 1) not in r["seen_at_kill"]
    assert r["left"][-1] == _ckpt(KILL_AFTER)
    assert f"iter={KILL_AFTER + 1}/{MAX_ITER}" not in r["first_log"]
    assert r["rc_again"] == 0, r["again_log"][-3000:]
    log = r["again_log"]
    assert re.search(
        rf"resuming from \S+/killed/checkpoints/{_ckpt(KILL_AFTER)}: restart 1/1, iteration {KILL_AFTER}\b", log
    ), log[-3000:]
    # Only the missing iterations ran.
    assert f"iter={KILL_AFTER}/{MAX_ITER}" not in log and f"iter={KILL_AFTER + 1}/{MAX_ITER}" in log
    reference = scenario.result("reference")
    assert reference["rc"] == 0, reference["log"][-3000:]
    _assert_same_model(_load_model(r["model"]), _load_model(reference["model"]))
    _report("driver SIGKILL", killed_run=r["seconds"][0], resume=r["seconds"][1])


@needs("torn_commit")
def test_driver_dying_mid_commit_leaves_a_torn_checkpoint_that_the_resume_replaces(scenario):
    r = scenario.result("torn_commit")
    torn = re.search(rf"FAULT tore checkpoint {TORN_AT}: wrote (\d+) of (\d+) bytes", r["first_log"])
    assert r["rc_first"] != 0 and torn, r["first_log"][-3000:]
    assert f"iter={TORN_AT}/{MAX_ITER}" not in r["first_log"]  # it died inside iteration TORN_AT's commit
    # The torn object is there, under its final name, with half the bytes.
    assert r["left"][-1] == _ckpt(TORN_AT)
    assert r["torn_size"] == int(torn.group(1)) == int(torn.group(2)) // 2 > 0
    assert r["rc_again"] == 0, r["again_log"][-3000:]
    log = r["again_log"]
    assert re.search(rf"checkpoint \S+/{_ckpt(TORN_AT)} is corrupt \(.+\); fell back to sequence {TORN_AT - 1}", log), (
        log[-3000:]
    )
    assert re.search(rf"resuming from \S+/{_ckpt(TORN_AT - 1)}: restart 1/1, iteration {TORN_AT - 1}\b", log)
    assert re.search(rf"replacing corrupt checkpoint \S+/{_ckpt(TORN_AT)}", log)
    assert f"iter={TORN_AT - 1}/{MAX_ITER}" not in log and f"iter={TORN_AT}/{MAX_ITER}" in log
    assert r["after"][-1] == _ckpt(MAX_ITER + 1)  # finished; the torn object was replaced, then pruned
    reference = scenario.result("reference")
    assert reference["rc"] == 0, reference["log"][-3000:]
    _assert_same_model(_load_model(r["model"]), _load_model(reference["model"]))
    _report("torn commit", torn_run=r["seconds"][0], resume=r["seconds"][1])


# --- 5. corrupted checkpoints ---------------------------------------------------------------


@needs("corrupt_latest")
def test_truncated_and_bit_flipped_newest_checkpoints_fall_back_to_the_last_intact_iteration(scenario):
    r = scenario.result("corrupt_latest")
    assert r["rc"] == 0, r["log"][-3000:]
    done, last, intact = r["names"][-1], r["names"][-2], r["names"][-3]
    assert (done, last, intact) == (_ckpt(MAX_ITER + 1), _ckpt(MAX_ITER), _ckpt(MAX_ITER - 1))
    log = r["log"]
    for damaged in (done, last):  # found by their checksums, logged, skipped
        assert re.search(
            rf"checkpoint \S+/{damaged} is corrupt \(.*(checksum|truncat).*\); fell back to sequence {MAX_ITER - 1}",
            log,
        ), log[-3000:]
    assert re.search(rf"resuming from \S+/{intact}: restart 1/1, iteration {MAX_ITER - 1}\b", log)
    assert f"iter={MAX_ITER}/{MAX_ITER}" in log and f"iter={MAX_ITER - 1}/{MAX_ITER}" not in log
    for damaged in (last, done):  # both are rewritten, not left behind
        assert re.search(rf"replacing corrupt checkpoint \S+/{damaged}", log)
    assert r["after"][-1] == done
    reference = scenario.result("reference")
    _assert_same_model(_load_model(r["model"]), _load_model(reference["model"]))
    _report("corrupt checkpoints", resume=r["seconds"])


# --- 1, 2. task failures on local[2,4] ------------------------------------------------------

# (transport, faulted fit, its fault-free reference, partition, iteration of the fault)
RAISED = [("rdd", "raised", "reference", 0, 3), ("dataframe", "df-raised", "df-reference", 1, 4)]
CRASHED = [("rdd", "crashed", "reference", 1, 5), ("dataframe", "df-crashed", "df-reference", 0, 6)]
KILLED = [("rdd", "killed", "reference", 0, 3), ("dataframe", "df-killed", "df-reference", 1, 4)]


def _ids(cases):
    return [case[0] for case in cases]


@needs("task_faults")
@pytest.mark.parametrize("transport, name, reference, partition, iteration", RAISED, ids=_ids(RAISED))
def test_task_raising_on_its_first_attempt_is_retried_and_the_fit_is_bit_identical(
    scenario, transport, name, reference, partition, iteration
):
    r = scenario.result("task_faults")
    assert r["rc"] == 0, r["log"][-3000:]
    marker = _marker(r["faults"], f"raise-p{partition}-i{iteration}.json")
    assert (marker["partition"], marker["iteration"], marker["attempt"]) == (partition, iteration, 0)
    assert f"RuntimeError: injected fault: first attempt of partition {partition}, iteration {iteration}" in r["log"]
    assert re.search(
        rf"Lost task {partition}\.0 in stage {marker['stage']}\.0 \(TID {marker['taskAttemptId']}\)", r["log"]
    )
    fit = _fit_results(r["out"], name)
    _assert_same_fit(fit, _fit_results(r["out"], reference))
    assert fit["fallbacks"][-1] == 0  # the retried task read its block file: no fallback needed
    if transport == "dataframe":  # and the two sources agree bit for bit
        _assert_same_fit(_fit_results(r["out"], reference), _fit_results(r["out"], "reference"))
    _report(f"task raise ({transport})", app=r["seconds"])


@needs("task_faults")
@pytest.mark.parametrize("transport, name, reference, partition, iteration", CRASHED, ids=_ids(CRASHED))
def test_python_worker_dying_mid_e_step_is_retried_and_the_fit_is_bit_identical(
    scenario, transport, name, reference, partition, iteration
):
    r = scenario.result("task_faults")
    assert r["rc"] == 0, r["log"][-3000:]
    marker = _marker(r["faults"], f"exit-p{partition}-i{iteration}.json")
    assert (marker["partition"], marker["iteration"], marker["attempt"]) == (partition, iteration, 0)
    assert re.search(
        rf"Lost task {partition}\.0 in stage {marker['stage']}\.0 \(TID {marker['taskAttemptId']}\).*"
        r"Python worker exited unexpectedly \(crashed\)",
        r["log"],
    )
    fit = _fit_results(r["out"], name)
    _assert_same_fit(fit, _fit_results(r["out"], reference))
    assert fit["fallbacks"][-1] == 0


# --- 3. an executor JVM is killed -----------------------------------------------------------


@needs("executor_kill")
@pytest.mark.parametrize("transport, name, reference, partition, iteration", KILLED, ids=_ids(KILLED))
def test_executor_jvm_sigkilled_mid_e_step_recovers_without_double_counting(
    scenario, transport, name, reference, partition, iteration
):
    r = scenario.result("executor_kill")
    assert r["rc"] == 0, r["log"][-3000:]
    marker = _marker(r["faults"], f"kill-executor-p{partition}-i{iteration}.json")
    assert (marker["partition"], marker["iteration"], marker["attempt"]) == (partition, iteration, 0)
    assert not _is_executor(marker["executor_pid"]), "the executor JVM the fault killed is still running"
    assert re.search(r"Lost executor \d+ on \S+: Command exited with code 137", r["log"]), r["log"][-3000:]
    assert re.search(
        rf"Lost task {partition}\.0 in stage {marker['stage']}\.0 \(TID {marker['taskAttemptId']}\) .*"
        r"ExecutorLostFailure",
        r["log"],
    )
    fit = _fit_results(r["out"], name)
    # Lost cached data are recomputed from lineage (the RDD source's handles rewrite the local
    # block file where the retried task runs; the DataFrame source reads Spark's copy of the
    # blocks, recomputed where it was lost), and the statistics are reduced in partition order:
    # the result is bit-identical, not merely close.
    _assert_same_fit(fit, _fit_results(r["out"], reference))
    fallbacks = int(fit["fallbacks"][-1])
    warned = re.findall(
        rf"run={name} restart=1/1 iter=\d+: (?:a local block file was missing|the block files could not be read)"
        r".*(?:computing (?:this iteration )?from|this and later iterations read) Spark's copy",
        r["log"],
    )
    assert len(warned) == fallbacks  # each fallback to Spark's copy is logged
    if transport == "dataframe":
        # The handles (a local checkpoint) died with the executor: from the faulted iteration
        # on, the DataFrame source reads Spark's copy of the blocks, and stops trying the files.
        assert fallbacks == 1
    seconds = fit["finished"] - fit["started"]
    faulted = marker["iteration"] - 1
    normal = float(np.median(np.delete(seconds, faulted)))
    _report(
        f"executor SIGKILL ({transport})",
        app=r["seconds"],
        faulted_iteration=float(seconds[faulted]),
        median_iteration=normal,
        recovery=float(seconds[faulted]) - normal,
        kill_to_iteration_end=float(fit["finished"][faulted] - marker["time"]),
        fallbacks=fallbacks,
    )
