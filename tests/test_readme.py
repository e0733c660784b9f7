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
    # em-spark alone has no PySpark (a runtime brings its own): the first command, on a fresh
    # machine, must install the extra that brings it
    assert re.search(r"""pip install (-q )?["']?\.\[spark\]["']? """, commands[0]), commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def _run(example: str) -> dict:
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.spark
def test_gaussian_mixture_example_runs_as_written(spark):
    (example,) = [code for code in _fenced("python") if "GaussianMixture(k=3, covarianceType" in code]
    namespace = _run(example)
    model, same = namespace["model"], namespace["same"]
    assert model.summary.numIter >= 1 and same.means.shape == (3, 2)
    assert {"prediction", "probability", "logLikelihood"} <= set(namespace["scored"].columns)
    drawn = namespace["drawn"]
    assert drawn.columns == ["features", "component"] and drawn.count() == 1000


@pytest.mark.spark
def test_kmeans_example_runs_as_written(spark):
    (example,) = [code for code in _fenced("python") if "KMeans(" in code]
    namespace = _run(example)
    assert namespace["km"].centers.shape == (3, 2) and namespace["labels"].count() == 3000


def _example(marker: str) -> str:
    (example,) = [code for code in _fenced("python") if marker in code]
    return example


@pytest.mark.spark
def test_categorical_mixture_example_recovers_the_two_coins(spark):
    namespace = _run(_example('kind="categorical"'))
    cm = namespace["cm"]
    heads = sorted(float(p[1]) for p in cm.featureProbs[0])  # P(heads) of each coin, first toss
    assert abs(heads[0] - 0.3) < 0.06 and abs(heads[1] - 0.8) < 0.06
    assert abs(sorted(cm.weights)[0] - 0.5) < 0.05


@pytest.mark.spark
def test_poisson_mixture_example_recovers_the_rates(spark):
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    namespace = _run(_example("PoissonMixture("))
    pm, truth = namespace["pm"], namespace["truth"]
    fitted = {"weights": pm.weights, "rates": pm.rates}
    _, order = linear_sum_assignment(pm._family.component_distances(truth, fitted))
    np.testing.assert_allclose(pm.rates[order], truth["rates"], rtol=0.1, atol=0.2)


@pytest.mark.spark
def test_student_t_example_finds_the_clusters_despite_the_outliers(spark):
    import numpy as np

    tm = _run(_example("StudentTMixture("))["tm"]
    means = tm.means[np.argsort(tm.means[:, 0])]
    np.testing.assert_allclose(means, [[0.0, 0.0], [8.0, 0.0]], atol=0.15)


@pytest.mark.spark
def test_sparse_count_vector_example_separates_the_two_topics(spark):
    namespace = _run(_example("Vectors.sparse("))
    topics, counts = namespace["topics"], namespace["counts"]
    assert topics.probs.shape == (2, 50_000)
    predicted = [r["prediction"] for r in topics.transform(counts).select("prediction").collect()]
    assert all(p != q for p, q in zip(predicted[::2], predicted[1::2]))  # documents alternate topics


@pytest.mark.spark
def test_lda_example_recovers_the_topics(spark):
    import numpy as np

    namespace = _run(_example("LDA("))
    lda, truth = namespace["lda"], namespace["topics"]
    # every true topic has a fitted topic close to it (Hellinger distance)
    distance = np.sqrt(0.5 * ((np.sqrt(lda.topics)[:, None] - np.sqrt(truth)[None]) ** 2).sum(axis=2))
    assert distance.min(axis=0).max() < 0.2
    assert namespace["shares"].count() == 500


@pytest.mark.spark
def test_hidden_markov_model_example_decodes_the_states(spark):
    import numpy as np

    namespace = _run(_example("GaussianHMM("))
    model, truth = namespace["model"], namespace["truth"]
    # states recovered: each fitted mean is near one true mean
    distance = np.linalg.norm(model.means[:, None] - truth["means"][None], axis=2)
    assert distance.min(axis=1).max() < 0.3
    row = namespace["decoded"].orderBy("id").first()
    assert len(row.prediction) == 40 and row.logLikelihood < 0


@pytest.mark.spark
def test_hmm_gaps_example_names_the_states_after_the_labels_and_fills_every_gap(spark):
    import numpy as np

    namespace = _run(_example("setHandleMissing("))
    model, truth = namespace["model"], namespace["truth"]
    # labelled: state j is the true state j (no permutation), means recovered despite the gaps
    np.testing.assert_allclose(model.means, truth["means"], atol=0.3)
    rows = namespace["filled"].orderBy("id").collect()
    X = namespace["X"]
    imputed = np.array([r.imputed for r in rows])
    assert imputed.shape == X.shape and not np.isnan(imputed).any()
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(imputed[observed], X[observed])


@pytest.mark.spark
def test_imputation_example_fills_every_missing_entry_and_keeps_the_observed_ones(spark):
    import numpy as np

    namespace = _run(_example("handleMissing="))
    rows = namespace["filled"].collect()
    X = namespace["X"]
    for row in rows[:200]:
        observed = [row.a, row.b, row.c]
        for j, value in enumerate(observed):
            if value is None:
                assert row.imputedStd[j] > 0 and np.isfinite(row.imputed[j])
            else:
                assert row.imputed[j] == value and row.imputedStd[j] == 0.0
    assert len(rows) == len(X)


@pytest.mark.spark
def test_semi_supervised_example_names_components_after_their_labels(spark):
    namespace = _run(_example("labelCol="))
    predicted = [r.prediction for r in namespace["predicted"].collect()]
    truth = namespace["truth"]
    accuracy = sum(int(p == t) for p, t in zip(predicted, truth)) / len(truth)
    assert accuracy > 0.8, accuracy


@pytest.mark.spark
def test_streaming_example_updates_nightly_and_per_micro_batch(spark):
    namespace = _run(_example("StreamingUpdate("))
    decay = 0.5 ** (1 / 7)
    assert namespace["nightly"].statistics.count == pytest.approx(decay * 2000 + 500)
    updater = namespace["updater"]
    assert updater.lastBatchId == 0  # one micro-batch: the 500 rows written to incoming
    assert updater.model.statistics.count == pytest.approx(0.5 ** (1 / 24) * (decay * 2000 + 500) + 500)


def test_every_python_example_in_the_readme_is_run_by_a_test():
    examples = _fenced("python")
    markers = [
        "GaussianMixture(k=3, covarianceType",
        "KMeans(",
        'kind="categorical"',
        "Vectors.sparse(",
        "PoissonMixture(",
        "StudentTMixture(",
        "LDA(",
        "GaussianHMM(",
        "setHandleMissing(",
        "handleMissing=",
        "labelCol=",
        "spark.addArtifacts(",  # tests/connect/test_executor_check.py
        'optimizer="online"',
        "StreamingUpdate(",
    ]
    assert len(examples) == len(markers), "a new README example needs a test that runs it"
    for marker in markers:
        assert sum(marker in code for code in examples) == 1, marker


def test_how_it_works_names_every_module_of_the_package():
    tree = README.split("## How it works", 1)[1].split("```", 2)[1]
    package = REPO / "em_spark"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and not re.search(rf"(?<![\w.]){re.escape(path.name)}\b", tree)
    ]
    assert not missing, f"README 'How it works' does not name: {missing}"
    folders = sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert all(f"  {name}/" in tree for name in folders), folders


@pytest.mark.spark
def test_online_em_example_runs_as_written_and_lands_near_batch_em(spark):
    import numpy as np

    from em_spark import GaussianMixture

    namespace = _run(_example('optimizer="online"'))
    online, rows = namespace["online"], namespace["rows"]
    summary = online.summary
    assert summary.optimizer == "online" and summary.stoppedBy in ("heldOut", "maxIter")
    assert summary.epochs == pytest.approx(summary.numIter * 0.1)
    assert summary.heldOutLogLikelihoodHistory
    batch = GaussianMixture(k=3, featuresCol=["a", "b"], maxIter=200, tol=1e-8, seed=7).fit(rows)

    def avg(model):  # the average log-likelihood of all rows
        return model.transform(rows).agg({"logLikelihood": "avg"}).first()[0]

    # within 0.01 nats per row (the target) after ~2 epochs; the means (components 3-4
    # apart, overlapping) within 0.3 of batch EM's
    assert abs(avg(online) - avg(batch)) < 0.01
    order = np.argsort(batch.means[:, 0])
    np.testing.assert_allclose(online.means[np.argsort(online.means[:, 0])], batch.means[order], atol=0.3)
