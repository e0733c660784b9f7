"""Turn what the load pass counted into one clear error, before iteration 1."""

from __future__ import annotations

import numpy as np

from em_spark.engine.load_summary import LoadSummary

__all__ = ["DataValidationError", "check_loaded"]


class DataValidationError(ValueError):
    """The input cannot be fitted as given; the message names the problem and the fix."""


def check_loaded(
    summary: LoadSummary,
    k: int,
    features: str,
    weight_col: str | None,
    label_col: str | None = None,
    allow_missing: bool = False,
) -> None:
    """Raise :class:`DataValidationError` unless the loaded data can be fitted with k components.

    ``features`` describes the feature column(s) for the message.
    """
    problems = []
    dropped = summary.problems  # rows (or sequences) the load pass could not convert, by reason
    unit = "sequence(s)" if summary.sequences else "row(s)"
    if dropped.null_rows:
        what = "a null or empty sequence" if summary.sequences else "a null feature vector"
        problems.append(
            f"{dropped.null_rows} {unit} have {what} in {features}; drop them first (df.dropna(subset=[...]))"
        )
    if dropped.ragged_rows or len(summary.n_features) > 1:
        lengths = sorted(summary.n_features)
        vectors = "the steps' feature vectors" if summary.sequences else "feature vectors"
        problems.append(
            f"{vectors} in {features} do not all have the same non-zero length "
            f"({dropped.ragged_rows} {unit} differ; lengths seen: {lengths}); every row needs the same number of features"
        )
    if dropped.nonfinite_rows:
        if allow_missing:
            problems.append(
                f"{dropped.nonfinite_rows} {unit} contain infinite feature values in {features}; missing values "
                "(null or NaN) are modelled, but infinities are not: replace them with null or drop those rows"
            )
        else:
            problems.append(
                f"{dropped.nonfinite_rows} {unit} contain NaN, infinite or null feature values in {features}; "
                "drop or impute them before fitting"
                + (
                    ", or marginalize missing steps (handleMissing='model' for an HMM)"
                    if summary.sequences
                    else ", or model missing values (handleMissing='model' for a Gaussian mixture)"
                )
            )
    if dropped.overflow_rows:
        problems.append(
            f"{dropped.overflow_rows} {unit} have a feature value in {features} that overflows float32 "
            f"(|x| > {float(np.finfo(np.float32).max):.3g}); use dtype='float64' or rescale the features"
        )
    if dropped.bad_index_rows:
        problems.append(
            f"{dropped.bad_index_rows} {unit} hold a sparse vector in {features} whose indices are not strictly "
            "increasing within 0..size-1 (or do not match its values); rebuild them with "
            "pyspark.ml.linalg.Vectors.sparse, which sorts and checks them"
        )
    if dropped.noncount_rows:
        problems.append(
            f"{dropped.noncount_rows} {unit} have a negative or non-integer value in {features}; this model needs "
            "non-negative integer counts: drop or round those rows (give fractional importance through "
            "weightCol, not fractional counts)"
        )
    if dropped.bad_weight_rows:
        problems.append(
            f"{dropped.bad_weight_rows} {unit} have a null, negative, NaN or infinite weight in weightCol "
            f"{weight_col!r}; weights must be finite and >= 0"
        )
    if dropped.label_length_rows:
        problems.append(
            f"{dropped.label_length_rows} {unit} have a list of step labels in labelCol {label_col!r} whose length "
            "is not the sequence's; give one known state per step (null or -1 where it is unknown), or a null list"
        )
    if dropped.bad_label_rows:
        what = "a state label" if summary.sequences else "a label"
        ids = "state ids" if summary.sequences else "component ids"
        problems.append(
            f"{dropped.bad_label_rows} {unit} have {what} >= k={k} in labelCol {label_col!r}; labels must be "
            f"{ids} 0..{k - 1}, or null / -1 for unknown"
        )
    if problems:
        raise DataValidationError("cannot fit: " + "; ".join(problems) + ".")
    if summary.rows == 0:
        raise DataValidationError(
            f"cannot fit: the input has no rows ({features}); check the input path, filters or date partition."
        )
    if summary.sequences:
        if summary.observations < k:
            raise DataValidationError(
                f"cannot fit: the input has {summary.observations} observation(s) in all, fewer than k={k} states; "
                "decrease k or add data."
            )
    elif summary.rows < k:
        raise DataValidationError(
            f"cannot fit: the input has {summary.rows} row(s), fewer than k={k} components; decrease k or add data."
        )
    if not summary.weight_sum > 0:
        raise DataValidationError(
            f"cannot fit: the weights in weightCol {weight_col!r} sum to {summary.weight_sum}; "
            "at least some rows need a positive weight."
        )
