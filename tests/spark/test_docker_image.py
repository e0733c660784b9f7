"""The image's install, replayed without Docker: the Dockerfile's own pip command in a clean
virtualenv (no test extras, nothing from the test environment), then the compose job's spark-submit
with that interpreter on local-cluster executors against the S3 test server.

The static checks (tests/test_docker_compose.py) and the local-cluster run in test_s3_jobs.py use
the test virtualenv, where the test extras bring boto3 and every other test dependency, so neither
sees a dependency the image lacks. Here the interpreter has only what the image's pip install gave
it: a missing runtime dependency fails the job, and this test.

Slow: a fresh virtualenv with pyspark is about 450 MB (minutes even with pip's cache warm), built
once per module. ``EM_SPARK_IMAGE_PYTHON`` names the interpreter that creates it (default: the one
running the tests); the image's own python3 is Ubuntu 22.04's 3.10.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_docker_compose import (
    COMPOSE_FILE,
    CONFIG_FILE,
    IMAGE_REPO,
    JOB,
    ROOT,
    command,
    environment,
    image_copies,
    install_commands,
    s3_buckets,
)

from em_spark import GaussianMixtureModel
from em_spark.app.config import load_config
from em_spark.storage import CheckpointStore

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.s3]

# What a clean interpreter must not inherit from the test process: its virtualenv, its Spark,
# its Python path, the user's site-packages.
_INHERITED = (
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "SPARK_HOME",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "PYSPARK_SUBMIT_ARGS",
    "CONDA_PREFIX",
)
# pip flags that change only how the image layer is built, not what is installed.
_LAYER_ONLY_FLAGS = {"--no-cache-dir"}  # here pip's cache makes a repeat run fast


def _compose_services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def _dockerfile() -> Path:
    build = _compose_services()[JOB]["build"]
    return (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def _copy_like_docker(context: Path, dockerfile: Path, repo: Path) -> None:
    """The COPY instructions into IMAGE_REPO, with ``repo`` standing for IMAGE_REPO."""
    for sources, dest in image_copies(dockerfile):
        target = repo / os.path.relpath(dest, IMAGE_REPO)
        into_directory = dest.endswith("/") or len(sources) > 1
        for source in sources:
            path = context / source
            if path.is_dir():  # Docker copies a directory's contents to the destination
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                destination = target / path.name if into_directory else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


def _clean_env(venv: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONNOUSERSITE="1", SPARK_LOCAL_IP="127.0.0.1"
    )
    env.update(extra or {})
    return env


def _in_image(word: str, repo: Path) -> str:
    if word == IMAGE_REPO or word.startswith((IMAGE_REPO + "/", IMAGE_REPO + "[")):
        return str(repo) + word[len(IMAGE_REPO) :]
    return word


_SPARK_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|DEBUG) ")


def _digest(result: subprocess.CompletedProcess) -> str:
    """stdout, and stderr without Spark's INFO lines (they bury em_spark's own error)."""
    errors = "\n".join(line for line in result.stderr.splitlines() if not _SPARK_LOG_LINE.match(line))
    return f"--- stdout\n{result.stdout[-4000:]}\n--- stderr (no Spark INFO lines)\n{errors[-8000:]}"


def _run(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    print(f"{what}: {time.monotonic() - started:.0f} s")  # shown with -s or on failure
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}): {argv}\n{_digest(result)}", pytrace=False)
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, Path]:
    """(python, repo): a virtualenv holding exactly what the Dockerfile's install puts into the
    image's python3, and the copy of the files the Dockerfile COPYs that it was installed from."""
    dockerfile = _dockerfile()
    work = tmp_path_factory.mktemp("image")
    repo = work / "opt-em_spark"  # IMAGE_REPO
    repo.mkdir()
    _copy_like_docker(ROOT, dockerfile, repo)
    venv = work / "venv"
    base = os.environ.get("EM_SPARK_IMAGE_PYTHON") or sys.executable
    _run([base, "-m", "venv", str(venv)], "python -m venv", timeout=300)
    python = venv / "bin" / "python"
    env = _clean_env(venv)
    # The RUN's python3 commands in order: the pip install, then the image's own import check.
    for words in install_commands(dockerfile):
        argv = [str(python)] + [_in_image(w, repo) for w in words[1:] if w not in _LAYER_ONLY_FLAGS]
        _run(
            argv,
            " ".join(words[:4]) if words[1:2] == ["-m"] else " ".join(words[:2]) + " (the image's check)",
            env=env,
            cwd=repo,
            timeout=1800,
        )
    return python, repo


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}``: the variable from this environment, else the default."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or m.group(2) or "", value)


def test_the_image_install_runs_the_compose_job(image, s3_server, s3_bucket, tmp_path):
    python, repo = image
    endpoint, bucket = s3_server.endpoint, s3_bucket.removeprefix("s3://")
    job = _compose_services()[JOB]

    # The train service's own command, with local-cluster executors instead of the standalone
    # master, and the overrides of test_s3_jobs.py's local-cluster run: local input (Spark's S3A
    # needs Maven jars), the moto endpoint, a smaller fit. Every s3:// location of the config
    # moves to this test's fresh bucket.
    words = command(job)
    submit = [str(python.with_name("spark-submit")), *words[1:]]
    submit[submit.index("--master") + 1] = "local-cluster[2,1,1024]"
    script = next(i for i, w in enumerate(submit) if w.endswith(".py"))
    submit[script:script] = ["--conf", "spark.ui.enabled=false", "--conf", "spark.executor.memory=768m"]
    config = load_config(str(ROOT / CONFIG_FILE))
    sets = {
        "storage.s3Endpoint": endpoint,
        "input.path": (tmp_path / "data").as_uri(),
        "input.generate.rows": "20000",
        "fit.maxIter": "15",
    }
    for key in s3_buckets(config):
        if key != "input.path":
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            sets[key] = value.replace(f"s3://{value.split('/')[2]}", s3_bucket, 1)
    for key, value in sets.items():
        submit += ["--set", f"{key}={value}"]

    # The service's environment (its AWS_* variables, compose's defaults filled in), and the
    # clean interpreter for the driver and the executors, as the image's ENV sets python3.
    env = _clean_env(python.parent.parent, {k: _interpolate(v) for k, v in environment(job).items()})
    env.update(PYSPARK_PYTHON=str(python), PYSPARK_DRIVER_PYTHON=str(python))
    result = _run(submit, "spark-submit of the compose job", env=env, cwd=repo, timeout=900)
    out = result.stdout + result.stderr
    assert "em_spark fit: run docker-demo: gaussian, 20000 rows" in out, out[-4000:]
    assert "in 2 partitions" in out, out[-4000:]  # one per executor core

    keys = [
        o["Key"]
        for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    checkpoint_dir, model_path = sets["run.checkpointDir"], sets["output.modelPath"]
    prefix = f"s3://{bucket}/"
    assert any(k.startswith(checkpoint_dir.removeprefix(prefix) + "/docker-demo/") for k in keys), keys
    assert any(k.startswith(model_path.removeprefix(prefix) + "/") for k in keys), keys
    assert CheckpointStore(checkpoint_dir, "docker-demo", s3_endpoint=endpoint).latest() is not None
    model = GaussianMixtureModel.load(model_path, s3Endpoint=endpoint)
    assert model.weights.shape == (3,)

    # And the image's interpreter reads its own model back (what `score` in the image does first).
    check = (
        "import sys; from em_spark.api import load_model; "
        "m = load_model(sys.argv[1], s3Endpoint=sys.argv[2]); print(type(m).__name__, m.weights.shape)"
    )
    loaded = _run(
        [str(python), "-c", check, model_path, endpoint],
        "load the model in the image's python",
        env=env,
        cwd=repo,
        timeout=300,
    )
    assert loaded.stdout.split() == ["GaussianMixtureModel", "(3,)"], loaded.stdout
