"""The README's promises: its Python example runs, and CI runs its test command."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quickstart_holds_exactly_two_commands_and_ci_runs_the_second():
    quickstart = README.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "em-spark train" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def _run(example: str) -> dict:
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.spark
def test_gaussian_mixture_example_runs_as_written(spark):
    (example,) = [code for code in _fenced("python") if "GaussianMixture(" in code]
    namespace = _run(example)
    model, same = namespace["model"], namespace["same"]
    assert model.summary.numIter >= 1 and same.means.shape == (3, 2)
    assert {"prediction", "probability", "logLikelihood"} <= set(namespace["scored"].columns)


@pytest.mark.spark
def test_kmeans_example_runs_as_written(spark):
    (example,) = [code for code in _fenced("python") if "KMeans(" in code]
    namespace = _run(example)
    assert namespace["km"].centers.shape == (3, 2) and namespace["labels"].count() == 3000


def test_every_python_example_in_the_readme_is_run_by_a_test():
    examples = _fenced("python")
    assert len(examples) == 2, "a new README example needs a test that runs it"
