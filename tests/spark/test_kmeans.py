"""KMeans on Spark: same engine, same persistence, agrees with scikit-learn."""

import numpy as np
import pytest

from em_spark import KMeans, KMeansModel
from em_spark.app.demo_data import make_blobs

pytestmark = pytest.mark.spark


def test_kmeans_fits_transforms_saves_and_matches_scikit_learn(spark, tmp_path):
    from sklearn.cluster import KMeans as SkKMeans

    X, _, _ = make_blobs(3000, 2, 3, seed=9)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b"])
    init = X[[0, 1000, 2000]]
    model = KMeans(k=3, maxIter=10, tol=0.0, featuresCol=["a", "b"], initialModel={"centers": init}).fit(df)
    sk = SkKMeans(3, init=init, n_init=1, max_iter=10, tol=0, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(model.centers, sk.cluster_centers_, rtol=1e-9)
    assert model.summary.numIter == 10
    rows = model.transform(df).select("a", "b", "prediction").collect()
    expected = sk.predict(np.array([[r.a, r.b] for r in rows]))
    assert [r.prediction for r in rows] == expected.tolist()
    model.save((tmp_path / "km").as_uri())
    np.testing.assert_array_equal(KMeansModel.load((tmp_path / "km").as_uri()).centers, model.centers)
