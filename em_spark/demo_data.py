"""Synthetic Gaussian blobs for the demo job and tests, written with pyarrow (no Spark)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["make_blobs", "write_blobs"]


def make_blobs(rows: int, features: int, components: int, separation: float = 6.0, seed: int = 42):
    """Rows from a mixture of ``components`` Gaussians with random covariances.

    Returns
    -------
    X : ndarray (rows, features); labels : ndarray (rows,); truth : dict of weights, means, covariances
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 5.0))
    means = rng.normal(scale=separation, size=(components, features))
    covariances = []
    for _ in range(components):
        A = rng.normal(size=(features, features)) / np.sqrt(features)
        covariances.append(A @ A.T + 0.5 * np.eye(features))
    covariances = np.array(covariances)
    labels = rng.choice(components, size=rows, p=weights)
    chol = np.linalg.cholesky(covariances)
    z = rng.standard_normal((rows, features))
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
    return X, labels, {"weights": weights, "means": means, "covariances": covariances}


def write_blobs(uri: str, rows: int, features: int, components: int, separation: float = 6.0, seed: int = 42,
                s3_endpoint: str | None = None) -> None:
    """Write blobs as Parquet columns x0..x{d-1} plus the true ``component`` to ``uri``/part-0.parquet."""
    from em_spark.storage.fs import resolve

    X, labels, _ = make_blobs(rows, features, components, separation, seed)
    table = pa.table({**{f"x{j}": X[:, j] for j in range(features)}, "component": labels.astype(np.int32)})
    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/.part-0.parquet.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, f"{path}/part-0.parquet")
