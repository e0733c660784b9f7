"""Every ``em-spark`` command the runbooks in docs/runbooks show is run, as an operator would run it.

One workspace is built by real runs of the nightly job (the real CLI in a subprocess): two
finished nights (the second a forced retrain, so production is version 2 and a rollback has a
version 1 to go to), a third night whose driver was killed mid-fit (``kill -9``: its checkpoints,
its ``status: running`` metrics and its lease stay behind), a night whose input lost a column,
and one whose input has NaN rows. Each page then runs its commands in its own copy of that
workspace, in the page's order, with the placeholders filled in for the situation it describes,
and each command's exit code and key output are checked against what the page says it does.
Every ``nightly`` runs in a subprocess; ``registry`` and ``report``, which never start Spark, run
the same ``main`` in this process (tests/test_registry_cli.py and tests/test_report.py run them
as subprocesses): a subprocess each was seconds of imports, about 30 times in this file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clitools import NO_SPARK_COMMANDS, run_cli, run_cli_here

from em_spark.app.config import load_config
from em_spark.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "docs" / "runbooks"
MODEL = "demo-gmm"
FIRST, DONE, KILLED, SCHEMA, NAN = "2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25"
CONFIG = f"""\
run: {{keepCheckpoints: 3, logFormat: text}}
spark: {{master: 'local[2]', appName: em_spark-runbooks,
        conf: {{spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '2', spark.default.parallelism: '2'}}}}
input: {{format: parquet, features: [x0, x1]}}
registry: {{uri: registry, modelName: {MODEL}}}
nightly: {{inputPath: 'events/date={{date}}', holdoutFraction: 0.2, driftThreshold: 0.05,
          promotionTolerance: 0.01, freshRestarts: 0}}
model: {{family: gaussian, k: 3, covarianceType: full, regCovar: 1.0e-6, initMode: k-means++}}
fit: {{maxIter: 12, tol: 1.0e-12, nInit: 1, seed: 7}}
"""


# --- the commands the pages show ------------------------------------------------------


def page_commands(text: str) -> list[str]:
    """The ``em-spark ...`` commands of a page in reading order: lines of ```sh blocks and inline code."""
    found = []
    for match in re.finditer(r"```sh\n(.*?)```|`(em-spark [^`]+)`", text, re.S):
        if match.group(1) is not None:
            found += [line.strip() for line in match.group(1).splitlines() if line.strip().startswith("em-spark ")]
        else:
            found.append(match.group(2))
    return found


PAGES = {p.name: page_commands(p.read_text()) for p in sorted(RUNBOOKS.glob("*.md")) if p.name != "README.md"}

# The night each page is about (its $DATE): a finished night, the killed one, or a broken input.
PAGE_NIGHT = {
    "collapsed-component.md": DONE,
    "drift.md": DONE,
    "model-error.md": DONE,
    "not-converged.md": DONE,
    "promotion-gate.md": DONE,
    "rollback.md": DONE,
    "nightly-failing.md": KILLED,
    "no-successful-run.md": KILLED,
    "run-too-long.md": KILLED,
    "out-of-memory.md": KILLED,
    "lost-executors.md": KILLED,
    "held-lease.md": KILLED,
    "schema-change.md": SCHEMA,
    "nan-underflow.md": NAN,
}


# promote --version N: the version the page means (production is 2; after a rollback, 1).
PAGE_VERSION = {"promotion-gate.md": "1", "rollback.md": "2"}


def fill(command: str, night: str, version: str = "1") -> list[str]:
    """A page's command with the placeholders of docs/runbooks/README.md set for ``night``."""
    values = {
        "$REGISTRY": "registry",
        "$MODEL": MODEL,
        "$DATE": night,
        "$CONFIG": "nightly.yaml",
        "$INPUT": f"events/date={night}",
        "N": version,
    }
    text = command
    for placeholder, value in values.items():
        text = re.sub(rf"(?<![\w$]){re.escape(placeholder)}(?!\w)", value, text)
    assert "<" not in text and "$" not in text, f"unfilled placeholder in {command!r}"
    return shlex.split(text)[1:]


def test_every_page_shows_commands_and_has_a_night():
    assert set(PAGES) == set(PAGE_NIGHT)
    assert all(PAGES.values()), [page for page, commands in PAGES.items() if not commands]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_each_runbook_command_parses_and_its_settings_are_valid_config(page):
    """Without Spark: every command is one the CLI accepts, with --set values the config accepts."""
    for command in PAGES[page]:
        argv = fill(command, PAGE_NIGHT[page])
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: em-spark does not accept {command!r}")
        if args.command != "registry":
            load_config(str(ROOT / "conf" / "nightly.yaml"), args.overrides)


# --- the workspace ---------------------------------------------------------------------


def _blobs(seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    centers[2] += shift  # tonight's third segment moved: drift
    return np.concatenate([rng.normal(size=(400, 2)) + c for c in centers])


def _write_night(ws: Path, night: str, columns: dict[str, np.ndarray]) -> None:
    (ws / "events" / f"date={night}").mkdir(parents=True)
    pq.write_table(pa.table(columns), ws / "events" / f"date={night}" / "part-0.parquet")


def _nightly(ws: Path, night: str, *extra: str):
    result = run_cli("nightly", "--config", "nightly.yaml", "--set", f"nightly.date={night}", *extra, cwd=ws)
    assert result.code == 0, result.err[-3000:]
    return result


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


def _kill_mid_fit(ws: Path, night: str) -> None:
    """Start the night's job and kill -9 its process group once two iterations are checkpointed."""
    metrics = ws / "registry" / MODEL / "checkpoints" / f"{MODEL}-{night}" / "metrics.json"
    env = _env()
    env.pop("PYSPARK_GATEWAY_PORT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "em_spark.cli", "nightly", "--config", "nightly.yaml", "--set", f"nightly.date={night}"],
        cwd=ws,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the kill reaches the JVM it started too
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the night finished before it could be killed"
            try:
                if json.loads(metrics.read_text()).get("iteration", 0) >= 2:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the night did not reach its 2nd iteration in 10 minutes")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("runbooks")
    (ws / "nightly.yaml").write_text(CONFIG)
    X = _blobs(1)
    for night in (FIRST, DONE):
        _write_night(ws, night, {"x0": X[:, 0], "x1": X[:, 1]})
    moved = _blobs(2, shift=3.0)
    _write_night(ws, KILLED, {"x0": moved[:, 0], "x1": moved[:, 1]})
    _write_night(ws, SCHEMA, {"x0": X[:, 0], "y1": X[:, 1]})  # x1 renamed upstream
    holes = X[:, 1].copy()
    holes[::40] = np.nan  # 30 rows with a NaN
    _write_night(ws, NAN, {"x0": X[:, 0], "x1": holes})

    assert "PROMOTED: no production model yet" in _nightly(ws, FIRST).err
    assert "PROMOTED" in _nightly(ws, DONE, "--set", "nightly.force=true").err  # version 2 is production
    _kill_mid_fit(ws, KILLED)
    return ws


# --- what each command must do ---------------------------------------------------------


class Held:
    """A live process holding a run's lease through the real lease code (em_spark.storage.RunLock)."""

    def __init__(self, ws: Path, run_id: str) -> None:
        script = (
            "import sys\n"
            "from em_spark.storage import RunLock\n"
            f"lock = RunLock({str(ws / 'registry' / MODEL / 'checkpoints')!r}, {run_id!r}, ttl_seconds=3600)\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "held\n"

    def kill(self) -> None:
        """Die without releasing (kill -9), as a crashed driver does."""
        self.proc.kill()
        self.proc.wait()


def _report_written(ws: Path, argv: list[str]) -> None:
    out = ws / argv[argv.index("--output") + 1]
    assert (out / "report.png").stat().st_size > 10_000 and (out / "report.html").is_file()


def _version(ws: Path, want: int) -> None:
    show = run_cli_here("registry", "show", "--registry", "registry", "--name", MODEL, cwd=ws)
    assert show.code == 0 and json.loads(show.out)["version"] == want, show.out + show.err


REPORT = (0, ["em_spark report: log-likelihood, weights, seconds ->"], _report_written)
SHOW_PRODUCTION = (0, ['"version": 2', '"production"', f'"run_id": "{MODEL}-{DONE}"'], None)
SHOW_LATEST = SHOW_PRODUCTION
LIST = (0, ["*2", f"{MODEL}-{FIRST}", f"{MODEL}-{DONE}", "(* = production)"], None)
ALREADY_DONE = (0, [f"nightly {MODEL}: the night {DONE} is already done (promoted)"], None)
RESUMED = (0, [f"run={MODEL}-{KILLED} resuming from", f"nightly {MODEL} {KILLED}: PROMOTED"], None)
KILLED_REPORT = (0, ["em_spark report: log-likelihood, weights, seconds ->"], _report_written)


def _resumed_and_recorded(ws: Path, argv: list[str]) -> None:
    report = json.loads((ws / "registry" / MODEL / "runs" / f"{MODEL}-{KILLED}" / "report.json").read_text())
    assert report["newVersion"] == 3 and report["retrainReasons"][0].startswith("drift")


RESUMED = (*RESUMED[:2], _resumed_and_recorded)

_RAN: dict[tuple[str, tuple[str, ...]], tuple] = {}

# page -> one (exit code, fragments of stdout + stderr, check of the workspace) per command, in order.
EXPECT = {
    "collapsed-component.md": [REPORT, ALREADY_DONE],
    "drift.md": [
        SHOW_LATEST,
        (
            0,
            [
                "em_spark report: log-likelihood, weights, seconds, scatter ->",
                "ellipses at 1 and 2 standard deviations",
            ],
            _report_written,
        ),
        ALREADY_DONE,
        (0, [f"model {MODEL}: production rolled back to version 1 (was 2)"], lambda ws, argv: _version(ws, 1)),
    ],
    "model-error.md": [REPORT, SHOW_PRODUCTION, ALREADY_DONE],
    "not-converged.md": [REPORT, ALREADY_DONE],
    "promotion-gate.md": [
        LIST,
        SHOW_LATEST,
        SHOW_PRODUCTION,
        REPORT,
        ALREADY_DONE,
        (0, [f"model {MODEL}: production -> version 1 (was 2)"], lambda ws, argv: _version(ws, 1)),
    ],
    "rollback.md": [
        LIST,
        SHOW_PRODUCTION,
        REPORT,
        (0, [f"model {MODEL}: production rolled back to version 1 (was 2)"], None),
        (0, ['"version": 1', '"production"', f'"run_id": "{MODEL}-{FIRST}"'], None),
        (0, [f"model {MODEL}: production -> version 2 (was 1)"], lambda ws, argv: _version(ws, 2)),
    ],
    # The killed night: its running metrics are drawn; the re-run resumes it.
    "nightly-failing.md": [SHOW_PRODUCTION, (0, ["*2", "(* = production)"], None), KILLED_REPORT, RESUMED],
    "no-successful-run.md": [LIST, RESUMED],
    "run-too-long.md": [KILLED_REPORT, RESUMED],
    "out-of-memory.md": [KILLED_REPORT, LIST, SHOW_PRODUCTION, RESUMED],
    "lost-executors.md": [KILLED_REPORT, RESUMED],
    "held-lease.md": [
        (2, [f"run {MODEL}-{KILLED} is already running (owner host", "lease until"], None),
        (0, [f"run {MODEL}-{KILLED}: took over the lease of host", "no longer exists on this machine"], None),
    ],
    "schema-change.md": [
        (
            2,
            ["em-spark: error: feature column 'x1' is not a column of the input; available columns: ['x0', 'y1']"],
            None,
        ),
        SHOW_PRODUCTION,
        (0, [f"nightly {MODEL} {SCHEMA}: KEPT"], None),
    ],
    "nan-underflow.md": [
        (
            2,
            [
                "em-spark: error: 30 row(s) of columns ['x0', 'x1'] cannot be scored (null, NaN or not 2 features); "
                "clean them before computing a criterion."
            ],
            None,
        ),
    ],
}


def test_every_page_has_an_expectation_for_each_of_its_commands():
    assert {page: len(commands) for page, commands in PAGES.items()} == {
        page: len(expected) for page, expected in EXPECT.items()
    }


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(PAGES))
def test_each_runbook_command_does_what_its_page_says(workspace, tmp_path, page):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    night = PAGE_NIGHT[page]
    holder = Held(ws, f"{MODEL}-{KILLED}") if page == "held-lease.md" else None
    try:
        for i, (command, (code, fragments, check)) in enumerate(zip(PAGES[page], EXPECT[page])):
            if holder is not None and i == 1:
                holder.kill()  # the page's fix: the holder is gone (stopped, or it died)
            argv = fill(command, night, PAGE_VERSION.get(page, "1"))
            key = (night, tuple(argv))
            # The killed night's re-run is the same command after only read-only ones (registry
            # list/show, report) on five pages: run once, its result checked on each page.
            shared = holder is None and night == KILLED and argv[0] == "nightly"
            if shared:
                assert all(fill(c, night)[0] in ("registry", "report") for c in PAGES[page][:i]), page
                assert all(a not in argv for a in ("promote", "rollback"))
            if shared and key in _RAN:
                result, ran_in = _RAN[key]
            else:
                run = run_cli_here if argv[0] in NO_SPARK_COMMANDS else run_cli
                result, ran_in = run(*argv, cwd=ws), ws
                if shared:
                    _RAN[key] = (result, ran_in)
            said = result.out + result.err
            where = f"{page} command {i + 1}: {command}"
            assert result.code == code, f"{where}: exit {result.code}\n{said[-3000:]}"
            assert "Traceback" not in said, f"{where}\n{said[-3000:]}"
            for fragment in fragments:
                assert fragment in said, f"{where}: {fragment!r} not in\n{said[-3000:]}"
            if holder is not None and i == 0:
                assert f"pid {holder.proc.pid}," in said  # it names the live holder
            if check is not None:
                check(ran_in, argv)
    finally:
        if holder is not None and holder.proc.poll() is None:
            holder.kill()
