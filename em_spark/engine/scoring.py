"""Scoring a DataFrame under fitted parameters: vectorized per Arrow batch, lazily.

Rows whose features cannot be scored (null, wrong length, NaN) get null outputs
rather than failing the whole job; callers that need all rows scored count them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from em_spark.engine.blocks import FEATURES_FIELD, convert_arrow
from em_spark.engine.spark_source import feature_array
from em_spark.models.base import EMFamily, Params

__all__ = ["score_frame"]

_SCORE_TYPE = "prediction int, probability array<double>, logLikelihood double"


def _score_batch(family: EMFamily, params: Params, n_features: int, features: pa.Array) -> pa.Array:
    batch = pa.RecordBatch.from_arrays([features], names=[FEATURES_FIELD])
    block, kept, _, _ = convert_arrow(batch, expected_features=n_features)
    n = len(features)
    k = family.k
    scores = family.score(block, params) if block.n_rows else {
        "log_resp": np.empty((0, k)), "loglik": np.empty(0)
    }
    log_resp, loglik = scores["log_resp"], scores["loglik"]
    prediction = np.zeros(n, np.int32)
    prediction[kept] = np.argmax(log_resp, axis=1)
    probability = np.zeros((n, k))
    probability[kept] = np.exp(log_resp)
    row_loglik = np.zeros(n)
    row_loglik[kept] = loglik
    missing = pa.array(~kept)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    prob_list = pa.ListArray.from_arrays(offsets, pa.array(probability.ravel()), mask=missing)
    return pa.StructArray.from_arrays(
        [pa.array(prediction, mask=~kept), prob_list, pa.array(row_loglik, mask=~kept)],
        names=["prediction", "probability", "logLikelihood"],
    )


def score_frame(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    features: str | Sequence[str],
    *,
    prediction_col: str = "prediction",
    probability_col: str = "probability",
    loglik_col: str | None = "logLikelihood",
) -> DataFrame:
    """``df`` with prediction (int), probability (Vector) and per-row log-likelihood added."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql.functions import arrow_udf

    params_bc = df.sparkSession.sparkContext.broadcast(params)

    @arrow_udf(_SCORE_TYPE)
    def score(x: pa.Array) -> pa.Array:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return _score_batch(family, params_bc.value, n_features, x)

    tmp = "__em_score"
    out = df.withColumn(tmp, score(feature_array(df, features)))
    out = out.withColumn(prediction_col, F.col(f"{tmp}.prediction"))
    probability = F.col(f"{tmp}.probability")
    # array_to_vector fails on null, so unscorable rows keep a null probability.
    out = out.withColumn(probability_col, F.when(probability.isNotNull(), array_to_vector(probability)))
    if loglik_col:
        out = out.withColumn(loglik_col, F.col(f"{tmp}.logLikelihood"))
    return out.drop(tmp)
