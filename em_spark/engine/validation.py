"""Turn what the load pass counted into one clear error, before iteration 1."""

from __future__ import annotations

from em_spark.engine.blocks import LoadSummary

__all__ = ["DataValidationError", "check_loaded"]


class DataValidationError(ValueError):
    """The input cannot be fitted as given; the message names the problem and the fix."""


def check_loaded(summary: LoadSummary, k: int, features: str, weight_col: str | None) -> None:
    """Raise :class:`DataValidationError` unless the loaded data can be fitted with k components.

    ``features`` describes the feature column(s) for the message.
    """
    problems = []
    if summary.null_rows:
        problems.append(
            f"{summary.null_rows} row(s) have a null feature vector in {features}; "
            "drop them first (df.dropna(subset=[...]))"
        )
    if summary.ragged_rows or len(summary.n_features) > 1:
        lengths = sorted(summary.n_features)
        problems.append(
            f"feature vectors in {features} do not all have the same non-zero length "
            f"({summary.ragged_rows} row(s) differ; lengths seen: {lengths}); every row needs the same number of features"
        )
    if summary.nonfinite_rows:
        problems.append(
            f"{summary.nonfinite_rows} row(s) contain NaN, infinite or null feature values in {features}; "
            "drop or impute them before fitting"
        )
    if summary.bad_weight_rows:
        problems.append(
            f"{summary.bad_weight_rows} row(s) have a null, negative, NaN or infinite weight in weightCol "
            f"{weight_col!r}; weights must be finite and >= 0"
        )
    if problems:
        raise DataValidationError("cannot fit: " + "; ".join(problems) + ".")
    if summary.rows == 0:
        raise DataValidationError(
            f"cannot fit: the input has no rows ({features}); check the input path, filters or date partition."
        )
    if summary.rows < k:
        raise DataValidationError(
            f"cannot fit: the input has {summary.rows} row(s), fewer than k={k} components; decrease k or add data."
        )
    if not summary.weight_sum > 0:
        raise DataValidationError(
            f"cannot fit: the weights in weightCol {weight_col!r} sum to {summary.weight_sum}; "
            "at least some rows need a positive weight."
        )
