"""The test data sets, written as Parquet with pyarrow (no Spark), so that a classic session
and a Connect session read the same files into the same partitions."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Spark settings both the Connect server and the classic reference run use: the input's
#: partitioning and the Arrow batch size decide the blocks, and so the last bits of the fit.
SPARK_CONF = {
    "spark.default.parallelism": "2",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
}

#: family -> (estimator class name, estimator params, data set); the same fits on both sessions
FITS = {
    "gaussian": (
        "GaussianMixture",
        dict(k=3, featuresCol=["a", "b", "c"], seed=1, nInit=2, maxIter=15, tol=0.0),
        "rows",
    ),
    "kmeans": ("KMeans", dict(k=3, featuresCol=["a", "b", "c"], seed=2, maxIter=10, tol=0.0), "rows"),
    "categorical": (
        "CategoricalMixture",
        dict(k=2, featuresCol=["u", "v"], nCategories=[3, 4], seed=3, maxIter=10, tol=0.0),
        "symbols",
    ),
    "gaussian_hmm": ("GaussianHMM", dict(k=2, featuresCol="seq", seed=4, maxIter=8, tol=0.0), "sequences"),
    "categorical_hmm": (
        "CategoricalHMM",
        dict(k=2, featuresCol="sym", nCategories=3, seed=5, maxIter=8, tol=0.0),
        "symbol_sequences",
    ),
    "missing": (
        "GaussianMixture",
        dict(k=2, featuresCol="x", handleMissing="model", seed=6, maxIter=10, tol=0.0),
        "missing",
    ),
    # online EM: each step's slices are chosen from (partition, block, slice), which both sessions
    # share, so the mini-batches and the fit are the same bit for bit
    "online": (
        "GaussianMixture",
        dict(k=3, featuresCol=["a", "b", "c"], seed=1, optimizer="online", miniBatchFraction=0.5, maxIter=12, tol=0.0),
        "rows",
    ),
    # a SparseVector column (word counts over a 5,000-word vocabulary): sparse blocks on both sessions
    "multinomial_sparse": (
        "CategoricalMixture",
        dict(k=3, kind="multinomial", featuresCol="counts", seed=7, nInit=2, maxIter=8, tol=0.0),
        "sparse_counts",
    ),
}


#: the data sets write_all writes, each a directory of that name
DATASETS = ("rows", "symbols", "sequences", "symbol_sequences", "missing", "sparse_counts")

#: Spark's schema of a Parquet file, in its footer: how a pyarrow-written struct reads back as a Vector
SPARK_ROW_METADATA = b"org.apache.spark.sql.parquet.row.metadata"


def vector_table(name: str, rows: list[tuple[int, list[int], list[float]]]) -> pa.Table:
    """One Vector column ``name`` of SparseVectors (size, indices, values), as Spark writes it to
    Parquet: the VectorUDT's SQL struct, with Spark's schema in the metadata so it reads as a Vector."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import StructField, StructType

    struct = pa.struct(
        [
            pa.field("type", pa.int8(), nullable=False),
            pa.field("size", pa.int32()),
            pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
            pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
        ]
    )
    column = pa.array(
        [{"type": 0, "size": size, "indices": indices, "values": values} for size, indices, values in rows], struct
    )
    spark_schema = StructType([StructField(name, VectorUDT())]).json().encode()
    return pa.table({name: column}).replace_schema_metadata({SPARK_ROW_METADATA: spark_schema})


def _write(table: pa.Table, directory: str, files: int) -> str:
    os.makedirs(directory, exist_ok=True)
    rows = table.num_rows
    for i in range(files):
        part = table.slice(i * rows // files, (i + 1) * rows // files - i * rows // files)
        pq.write_table(part, os.path.join(directory, f"part-{i}.parquet"), row_group_size=1500)
    return directory


def write_all(root: str) -> dict[str, str]:
    """Every data set under ``root``: name -> directory of Parquet files."""
    rng = np.random.default_rng(2024)
    out = {}
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 7.0, 4.0]])
    z = rng.integers(0, 3, 6000)
    X = centers[z] + rng.normal(size=(6000, 3)) * np.array([1.0, 0.5, 2.0])
    out["rows"] = _write(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}), f"{root}/rows", 3)

    z = rng.integers(0, 2, 4000)
    u = np.where(z == 0, rng.choice(3, 4000, p=[0.7, 0.2, 0.1]), rng.choice(3, 4000, p=[0.1, 0.2, 0.7]))
    v = np.where(z == 0, rng.choice(4, 4000, p=[0.4, 0.4, 0.1, 0.1]), rng.choice(4, 4000, p=[0.1, 0.1, 0.4, 0.4]))
    out["symbols"] = _write(pa.table({"u": u.astype(np.int32), "v": v.astype(np.int32)}), f"{root}/symbols", 2)

    seqs, syms = [], []
    for _ in range(300):
        n = int(rng.integers(5, 30))
        state = np.cumsum(rng.random(n) < 0.2) % 2
        steps = np.stack([state * 4.0, -state * 2.0], axis=1) + rng.normal(size=(n, 2))
        seqs.append(steps.tolist())
        syms.append(
            np.where(state == 0, rng.choice(3, n, p=[0.8, 0.1, 0.1]), rng.choice(3, n, p=[0.1, 0.1, 0.8])).tolist()
        )
    seq_type = pa.list_(pa.list_(pa.float64()))
    out["sequences"] = _write(pa.table({"seq": pa.array(seqs, seq_type)}), f"{root}/sequences", 2)
    out["symbol_sequences"] = _write(
        pa.table({"sym": pa.array([[float(s) for s in q] for q in syms], pa.list_(pa.float64()))}),
        f"{root}/symbol_sequences",
        2,
    )

    z = rng.integers(0, 2, 3000)
    M = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, -5.0]])[z] + rng.normal(size=(3000, 3))
    M[rng.random(M.shape) < 0.1] = np.nan
    out["missing"] = _write(pa.table({"x": pa.array(M.tolist(), pa.list_(pa.float64()))}), f"{root}/missing", 2)

    vocabulary = 5000
    topics = rng.dirichlet(np.full(vocabulary, 0.02), size=3)
    documents = []
    for j in rng.integers(0, 3, 3000):
        counts = rng.multinomial(int(rng.integers(5, 60)), topics[j])
        words = np.flatnonzero(counts)
        documents.append((vocabulary, words.tolist(), counts[words].astype(float).tolist()))
    out["sparse_counts"] = _write(vector_table("counts", documents), f"{root}/sparse_counts", 2)
    return out
