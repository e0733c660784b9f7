"""A picture of a run: ``report.png`` and ``report.html`` (the same PNG embedded as base64).

Panels: the average log-likelihood per iteration (every restart the metrics file holds,
the best one drawn bold; plain tick labels, no offset text); the component weights over the
best restart's iterations (or, without per-iteration weights, the final weights as bars);
the seconds each iteration took (when the metrics have them); and, given data with at most 3
features, a scatter of up to a few thousand rows colored by their most likely component.
Two features are drawn as they are, three by their first two principal components (PCA of
the plotted rows), one against a random vertical jitter. On the scatter, each Gaussian
component (mixture or HMM state, any covariance type) gets its 1 and 2 standard deviation
ellipses: its covariance in the plotted coordinates (projected on the two components for
3 features), eigen-decomposed as in scikit-learn's GMM covariance example.

``em-spark report`` (:func:`run_report`) finds the run from a run id, a metrics file or a
saved model. No Spark: models are read with :func:`em_spark.api.model_from_bytes`, data with pyarrow.
Matplotlib draws with its Agg canvas only (no pyplot, no display).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from em_spark.app.common import resolve_local
from em_spark.app.config import ConfigError, JobConfig

__all__ = [
    "Report",
    "build_report",
    "ellipse_geometry",
    "load_source",
    "read_points",
    "render",
    "run_report",
    "write_report",
]

PANEL_INCHES = (5.0, 4.2)
DPI = 100


ELLIPSE_STDS = (1.0, 2.0)  # the scatter's covariance ellipses, in standard deviations


@dataclass
class Report:
    png: bytes
    html: str
    panels: list[str]
    notes: list[str] = field(default_factory=list)
    figure: Any = None  # the drawn matplotlib Figure (its axes and artists, for inspection)


# --- inputs ----------------------------------------------------------------------------


def _load_model(uri: str, s3_endpoint: str | None) -> Any:
    from em_spark.api import model_from_bytes
    from em_spark.storage import get_sealed

    return model_from_bytes(get_sealed(uri, s3_endpoint=s3_endpoint), uri)


def load_source(source: str, s3_endpoint: str | None = None) -> tuple[dict[str, Any] | None, Any]:
    """(metrics, model) from a run's ``metrics.json``, a saved model (its directory or its
    ``model.emsp``), or a directory holding either. FileNotFoundError when there is neither."""
    from em_spark.api.base import MODEL_FILE
    from em_spark.app.metrics import METRICS_FILE, read_metrics
    from em_spark.storage.fs import exists, resolve

    base = source.split("?", 1)[0].rstrip("/")
    if base.endswith(".json"):
        return read_metrics(source, s3_endpoint), None
    if base.endswith(".emsp"):
        return None, _load_model(source, s3_endpoint)
    metrics = model = None
    for name in (METRICS_FILE, MODEL_FILE):
        uri = f"{base}/{name}"
        fs, path = resolve(uri, s3_endpoint=s3_endpoint)
        if exists(fs, path):
            if name == METRICS_FILE:
                metrics = read_metrics(uri, s3_endpoint)
            else:
                model = _load_model(uri, s3_endpoint)
    if metrics is None and model is None:
        raise FileNotFoundError(f"{source}: neither a run's {METRICS_FILE} nor a saved model ({MODEL_FILE}) is there")
    return metrics, model


def read_points(
    data: str, features: str | list[str], max_rows: int = 5000, s3_endpoint: str | None = None, sequences: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``max_rows`` rows of Parquet data as ``(X, lengths)``: ``X`` (n, d), ``features`` a
    list of numeric columns or one array column. Rows with a null or NaN entry are dropped.

    ``sequences``: the column holds one sequence per row (array<array<double>>, or array<number>
    of symbols); ``X`` holds the steps of whole sequences, at most ``max_rows`` of them, and
    ``lengths`` (n_sequences,) their lengths. Without it ``lengths`` is None."""
    import pyarrow.dataset as ds

    from em_spark.storage.fs import exists, redact_uri, resolve

    fs, path = resolve(data, s3_endpoint=s3_endpoint)
    columns = [features] if isinstance(features, str) else list(features)
    if not exists(fs, path):
        # A ValueError, not FileNotFoundError: the caller's "nothing found" is about the run, not the data.
        raise ValueError(f"--data {redact_uri(data)}: no data there; pass a Parquet file or directory that exists")
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{data} has no column(s) {missing}; its columns are {dataset.schema.names}")
    if sequences:
        if not isinstance(features, str):
            raise ValueError("a sequence model's --data needs one column holding a sequence per row (--features obs)")
        return _read_sequences(dataset, features, max_rows)
    table = dataset.head(max_rows, columns=columns)
    if isinstance(features, str):
        values = table.column(0).to_pylist()
        if values and not isinstance(values[0], (list, tuple)) and values[0] is not None:
            raise ValueError(f"column {features!r} is not an array column; name numeric columns with --features a,b")
        rows = [v for v in values if v is not None]
        X = np.array(rows, dtype=np.float64) if rows and _same_length(rows) else None
        if X is None or X.ndim != 2:
            raise ValueError(
                f"{data}: the rows of {features!r} are not all vectors of one length (a sequence column "
                "needs a sequence model: pass the HMM run or --model)"
            )
    else:
        X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns])
    return X[np.all(np.isfinite(X), axis=1)], None


def _same_length(rows: list) -> bool:
    return all(
        isinstance(r, (list, tuple)) and len(r) == len(rows[0]) and all(not isinstance(v, (list, tuple)) for v in r)
        for r in rows
    )


def _read_sequences(dataset: Any, column: str, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole sequences of ``column`` until ``max_steps`` steps: (steps (n, d), lengths)."""
    steps: list[np.ndarray] = []
    total = 0
    for batch in dataset.to_batches(columns=[column]):
        for sequence in batch.column(0).to_pylist():
            if not sequence:
                continue
            try:
                S = np.asarray(sequence, dtype=np.float64)
            except (TypeError, ValueError):  # ragged steps or nulls inside: not drawable
                continue
            S = S.reshape(len(sequence), -1)
            if S.shape[1] != (steps[0].shape[1] if steps else S.shape[1]) or not np.all(np.isfinite(S)):
                continue
            if steps and total + len(S) > max_steps:
                break
            steps.append(S)
            total += len(S)
        if total >= max_steps:
            break
    if not steps:
        return np.empty((0, 1)), np.empty(0, np.int64)
    return np.concatenate(steps), np.array([len(S) for S in steps], np.int64)


def _history_by_restart(metrics: dict[str, Any]) -> tuple[dict[int, tuple[list[int], list[float]]], int | None]:
    per = [r for r in metrics.get("perIteration") or [] if r.get("avgLogLik") is not None]
    curves: dict[int, tuple[list[int], list[float]]] = {}
    for r in per:
        xs, ys = curves.setdefault(int(r["restart"]), ([], []))
        xs.append(int(r["iteration"]))
        ys.append(float(r["avgLogLik"]))
    best = metrics.get("bestRestart")
    history = metrics.get("logLikelihoodHistory")
    if history and (best is None or len(curves.get(best, ([], []))[0]) < len(history)):
        # The summary's history is complete even when earlier attempts left no records.
        curves[best or 1] = (list(range(1, len(history) + 1)), [float(v) for v in history])
    return curves, best


def _plot_restarts(ax: Any, curves: dict[int, tuple[list[int], list[float]]], best: int | None) -> None:
    """One line per restart; the best one bold (all bold when there is only one)."""
    for restart in sorted(curves):
        xs, ys = curves[restart]
        is_best = restart == best or len(curves) == 1
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            linewidth=2.2 if is_best else 1.0,
            alpha=1.0 if is_best else 0.6,
            label=f"restart {restart}" + (" (best)" if restart == best and len(curves) > 1 else ""),
        )


def _plot_loglik(ax: Any, metrics: dict[str, Any]) -> None:
    curves, best = _history_by_restart(metrics)
    _plot_restarts(ax, curves, best)
    ax.set_title("Average log-likelihood per iteration")
    ax.set_xlabel("iteration")
    _integer_ticks(ax)
    ax.set_ylabel("avg log-likelihood per row")
    # Late iterations differ in the 5th digit: matplotlib would print an offset ("+1.234e3")
    # above the axis, over the title. Plain full labels instead.
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _seconds_by_restart(metrics: dict[str, Any]) -> dict[int, tuple[list[int], list[float]]]:
    """Each restart's (iterations, seconds) from the per-iteration records. Without records (a
    saved model) the summary's ``iterationSeconds`` under restart 0: which restart each
    belongs to is not known (a model's summary holds every iteration its process ran, in order)."""
    curves: dict[int, tuple[list[int], list[float]]] = {}
    for r in sorted(metrics.get("perIteration") or [], key=lambda r: (r["restart"], r["iteration"])):
        if r.get("seconds") is not None:
            xs, ys = curves.setdefault(int(r["restart"]), ([], []))
            xs.append(int(r["iteration"]))
            ys.append(float(r["seconds"]))
    seconds = metrics.get("iterationSeconds") or []
    if not curves and seconds:
        curves[0] = (list(range(1, len(seconds) + 1)), [float(v) for v in seconds])
    return curves


def _plot_seconds(ax: Any, metrics: dict[str, Any], curves: dict[int, tuple[list[int], list[float]]]) -> None:
    _plot_restarts(ax, curves, metrics.get("bestRestart"))
    ax.set_title("Seconds per iteration")
    ax.set_xlabel("iteration" if 0 not in curves else "iteration (every restart, in the order run)")
    _integer_ticks(ax)
    ax.set_ylabel("seconds (driver wall time)")
    ax.set_ylim(bottom=0)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_weights(ax: Any, metrics: dict[str, Any]) -> str:
    name = metrics.get("weightsName") or "weights"
    best = metrics.get("bestRestart") or max([r["restart"] for r in metrics.get("perIteration") or []], default=1)
    per = sorted(
        (r for r in metrics.get("perIteration") or [] if r.get("restart") == best and r.get("weights") is not None),
        key=lambda r: r["iteration"],
    )
    if per:
        xs = [r["iteration"] for r in per]
        W = np.array([r["weights"] for r in per], dtype=np.float64)
        for j in range(W.shape[1]):
            ax.plot(xs, W[:, j], marker="o", markersize=2, color=_color(j, W.shape[1]), label=f"component {j}")
        ax.set_title(
            f"Component {name} over iterations" + (f" (restart {best})" if (metrics.get("restarts") or 1) > 1 else "")
        )
        ax.set_xlabel("iteration")
        _integer_ticks(ax)
        if W.shape[1] <= 10:
            ax.legend(fontsize=7)
        what = "over iterations"
    else:
        weights = metrics.get("componentWeights") or []
        ax.bar(range(len(weights)), weights, color=[_color(j, len(weights)) for j in range(len(weights))])
        ax.set_title(f"Final component {name}")
        ax.set_xlabel("component")
        ax.set_xticks(range(len(weights)))
        what = "final"
    ax.set_ylabel(name)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return what


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _color(j: int, k: int) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return cmap(j % cmap.N)


def _projection(X: np.ndarray) -> tuple[Any, np.ndarray | None, tuple[str, str], str]:
    """A function mapping (n, d) rows to 2-D, the (2, d) linear part of it (None when the
    plot is not linear in the data: one feature against jitter), its axis labels, and how
    it was made."""
    d = X.shape[1]
    if d == 2:
        return (lambda A: A), np.eye(2), ("feature 0", "feature 1"), "the two features as they are"
    if d == 1:
        jitter = np.random.default_rng(0).uniform(-0.5, 0.5, size=len(X))

        def one(A: np.ndarray) -> np.ndarray:  # the rows get the jitter, the means sit at 0
            return np.column_stack([A[:, 0], jitter if A is X else np.zeros(len(A))])

        return one, None, ("feature 0", "random jitter"), "the one feature against a random jitter"
    center = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - center, full_matrices=False)
    share = s**2 / max(float(np.sum(s**2)), 1e-300)
    labels = (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")
    return (
        (lambda A: (A - center) @ vt[:2].T),
        vt[:2],
        labels,
        "the first two principal components of the 3 features (PCA of the plotted rows)",
    )


def _full_covariances(model: Any) -> np.ndarray | None:
    """(k, d, d) covariances of a Gaussian model (mixture or HMM emissions), or None for
    families without them (categorical, k-means)."""
    full = getattr(model.family, "full_covariances", None)
    if full is not None:
        return np.asarray(full(model.arrays), dtype=np.float64)
    public = model.public_params()
    cov, means = public.get("covariances"), public.get("means")
    if cov is None or means is None:
        return None
    cov = np.asarray(cov, dtype=np.float64)
    k, d = np.shape(means)
    kind = getattr(model.family, "covariance_type", "full")
    if kind == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    if kind == "diag":
        return np.einsum("ki,ij->kij", cov, np.eye(d))
    if kind == "spherical":
        return cov.reshape(k)[:, None, None] * np.eye(d)
    return cov.reshape(k, d, d)


def ellipse_geometry(covariance: np.ndarray, n_std: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the ``n_std`` standard deviation ellipse of a
    (2, 2) covariance: the eigenvectors give the axes, 2 n_std sqrt(eigenvalue) their
    lengths (scikit-learn's plot_gmm_covariances does the same with eigh)."""
    values, vectors = np.linalg.eigh(covariance)
    values = np.clip(values, 0.0, None)  # rounding can leave a tiny negative eigenvalue
    width, height = 2.0 * n_std * np.sqrt(values[1]), 2.0 * n_std * np.sqrt(values[0])
    angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
    return float(width), float(height), angle


def _draw_ellipses(ax: Any, centers: np.ndarray, covariances: np.ndarray, linear: np.ndarray) -> int:
    """The 1 and 2 standard deviation ellipses of each component at its plotted ``centers``
    (k, 2); ``covariances`` (k, d, d) are mapped to the plot by ``linear`` (2, d). Returns
    how many were drawn."""
    from matplotlib.patches import Ellipse

    drawn = 0
    for j, (center, cov) in enumerate(zip(centers, covariances)):
        plotted = linear @ cov @ linear.T
        if not np.all(np.isfinite(plotted)):
            continue
        for n_std in ELLIPSE_STDS:
            width, height, angle = ellipse_geometry(plotted, n_std)
            ax.add_patch(
                Ellipse(
                    (float(center[0]), float(center[1])),
                    width,
                    height,
                    angle=angle,
                    facecolor="none",
                    edgecolor=_color(j, len(centers)),
                    linewidth=1.5 if n_std == ELLIPSE_STDS[0] else 1.0,
                    linestyle="-" if n_std == ELLIPSE_STDS[0] else "--",
                    gid=f"ellipse component={j} sd={n_std:g}",  # (no label: the legend lists components once)
                )
            )
            drawn += 1
    return drawn


def _plot_scatter(ax: Any, model: Any, X: np.ndarray, lengths: np.ndarray | None = None) -> str:
    if lengths is None:
        labels = np.argmax(model.predict_numpy(X)["log_resp"], axis=1)
    else:  # the steps of sequences, colored by their Viterbi state
        labels = model.predict_numpy(X, lengths=lengths)["viterbi"]
    k = int(model.summary.k) if model.hasSummary else int(np.max(labels)) + 1
    project, linear, (xlabel, ylabel), how = _projection(X)
    P = project(X)
    for j in range(k):
        mask = labels == j
        if mask.any():
            ax.scatter(P[mask, 0], P[mask, 1], s=6, alpha=0.6, color=_color(j, k), label=f"component {j}")
    public = model.public_params()
    centers = public.get("means", public.get("centers"))
    if centers is not None and np.shape(centers)[-1] == X.shape[1]:
        C = project(np.asarray(centers, dtype=np.float64))
        ax.scatter(C[:, 0], C[:, 1], marker="x", s=80, color="black", linewidths=2, label="means")
        covariances = _full_covariances(model)
        if covariances is not None and linear is not None and _draw_ellipses(ax, C, covariances, linear):
            how += f"; ellipses at {' and '.join(f'{n:g}' for n in ELLIPSE_STDS)} standard deviations"
            ax.autoscale_view()
    ax.set_title(
        f"{len(X)} rows by most likely component"
        if lengths is None
        else f"{len(X)} steps of {len(lengths)} sequences by Viterbi state"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if k <= 10:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return how


def render(
    metrics: dict[str, Any], model: Any = None, points: np.ndarray | None = None, lengths: np.ndarray | None = None
) -> Report:
    """Draw the report. ``metrics`` is a metrics document (see :func:`em_spark.app.metrics.build_metrics`);
    ``model`` and ``points`` add the scatter when d <= 3: rows by component, or for a sequence
    model the steps of the sequences (``lengths``) by Viterbi state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes: list[str] = []
    scatter = False
    if points is not None:
        if model is None:
            notes.append("scatter skipped: it needs the model (pass --model)")
        elif model.family.sequential and lengths is None:
            notes.append(f"scatter skipped: {model.family.name} models sequences; give it a sequence column")
        elif points.shape[1] > 3:
            notes.append(f"scatter skipped: the data has {points.shape[1]} features; it is drawn for at most 3")
        elif points.shape[1] != model.numFeatures:
            notes.append(f"scatter skipped: the data has {points.shape[1]} features, the model {model.numFeatures}")
        elif len(points) == 0:
            notes.append("scatter skipped: no complete rows in the data")
        else:
            scatter = True
    seconds = _seconds_by_restart(metrics)
    panels = ["log-likelihood", "weights"] + (["seconds"] if seconds else []) + (["scatter"] if scatter else [])
    fig = Figure(figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = dict(zip(panels, fig.subplots(1, len(panels))))
    _plot_loglik(axes["log-likelihood"], metrics)
    if _plot_weights(axes["weights"], metrics) == "final":
        notes.append(
            "no per-iteration weights (a saved model keeps only the final ones; the run's metrics.json has them)"
        )
    if seconds:
        _plot_seconds(axes["seconds"], metrics, seconds)
        if 0 in seconds:
            notes.append(
                "seconds: every data pass the fit ran, each shared by all restarts still running (per restart in metrics.json)"
            )
    if scatter and points is not None:  # (scatter is set only with points)
        colors = "each row's most likely component" if lengths is None else "each step's state on its Viterbi path"
        notes.append(f"scatter: {_plot_scatter(axes['scatter'], model, points, lengths)}; colors are {colors}")
    fig.suptitle(_title(metrics))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    png = buffer.getvalue()
    return Report(png=png, html=_html(metrics, png, notes), panels=panels, notes=notes, figure=fig)


def _title(metrics: dict[str, Any]) -> str:
    parts = [f"run {metrics.get('runId') or '?'}"]
    if metrics.get("family"):
        parts.append(f"{metrics['family']} k={metrics.get('k')}")
    if metrics.get("status") == "running":
        parts.append(f"running (restart {metrics.get('restart')}, iteration {metrics.get('iteration')})")
    elif metrics.get("iterations") is not None:
        parts.append(
            f"{metrics['iterations']} iterations, {'converged' if metrics.get('converged') else 'not converged'}"
        )
    return "em_spark " + " · ".join(parts)


def _html(metrics: dict[str, Any], png: bytes, notes: list[str]) -> str:
    rows = [
        ("run id", metrics.get("runId")),
        ("status", metrics.get("status")),
        ("family", metrics.get("family")),
        ("k", metrics.get("k")),
        ("features", metrics.get("numFeatures")),
        ("rows", metrics.get("rows")),
        ("iterations", metrics.get("iterations")),
        ("converged", metrics.get("converged")),
        ("best restart", metrics.get("bestRestart")),
        ("average log-likelihood", metrics.get("averageLogLikelihood")),
        ("BIC (training)", (metrics.get("criteria") or {}).get("bic")),
        ("wall time (s)", metrics.get("wallSeconds")),
        ("model", metrics.get("modelPath")),
        ("updated", metrics.get("updatedAt")),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(_fmt(value))}</td></tr>"
        for name, value in rows
        if value is not None
    )
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    title = html.escape(_title(metrics))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}img{{max-width:100%}}</style>
</head><body>
<h1>{title}</h1>
<table>
{table}
</table>
<p><img alt="log-likelihood, component weights{" and scatter" if "scatter:" in " ".join(notes) else ""}" src="data:image/png;base64,{image}"></p>
<ul>{note_items}</ul>
</body></html>
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_report(report: Report, output_dir: str, s3_endpoint: str | None = None) -> tuple[str, str]:
    """Write ``report.png`` and ``report.html`` under ``output_dir`` (any pyarrow.fs URI); their URIs."""
    from em_spark.storage.fs import resolve, write_object

    base = output_dir.rstrip("/")
    written = []
    for name, data in (("report.png", report.png), ("report.html", report.html.encode())):
        uri = f"{base}/{name}"
        fs, path = resolve(uri, s3_endpoint=s3_endpoint)
        write_object(fs, path, data, overwrite=True)
        written.append(uri)
    return written[0], written[1]


def build_report(
    source: str,
    output_dir: str,
    *,
    data: str | None = None,
    features: str | list[str] | None = None,
    max_rows: int = 5000,
    model_path: str | None = None,
    s3_endpoint: str | None = None,
) -> tuple[Report, str, str]:
    """Read ``source`` (see :func:`load_source`), optionally ``data``, draw, and write the report.

    The scatter's model is ``model_path``, else the source's model, else the ``modelPath`` its
    metrics name; its features are ``features``, else the model's ``featuresCol``."""
    from em_spark.api.base import MODEL_FILE
    from em_spark.app.metrics import build_metrics

    metrics, model = load_source(source, s3_endpoint)
    if model_path:
        model = _load_model(_model_file(model_path, MODEL_FILE), s3_endpoint)
    elif model is None and data and metrics and metrics.get("modelPath"):
        model = _load_model(_model_file(metrics["modelPath"], MODEL_FILE), s3_endpoint)
    if metrics is None:
        if not model.hasSummary:
            raise ValueError(f"{source}: the model was saved without a training summary; there is nothing to draw")
        metrics = build_metrics(model.summary.runId, [], model)
    points = lengths = None
    if data:
        if features is None and model is not None:
            features = model.getOrDefault("featuresCol")
        if features is None:
            raise ValueError("--data needs --features (or a model whose featuresCol names the columns)")
        sequences = model is not None and model.family.sequential
        points, lengths = read_points(data, features, max_rows, s3_endpoint, sequences=sequences)
    report = render(metrics, model, points, lengths)
    png, page = write_report(report, output_dir, s3_endpoint)
    return report, png, page


def _model_file(path: str, model_file: str) -> str:
    base = path.split("?", 1)[0].rstrip("/")
    return path if base.endswith(".emsp") else f"{base}/{model_file}"


def run_report(
    config: JobConfig,
    source: str,
    output: str,
    data: str | None = None,
    features: str | None = None,
    rows: int = 5000,
    model: str | None = None,
) -> dict[str, Any]:
    """Draw a run (a run id, its metrics.json, or a saved model): report.png and report.html."""
    from pathlib import Path

    from em_spark.storage.fs import redact_uri

    if rows < 1:
        raise ConfigError(f"report: --rows must be >= 1, got {rows}")
    endpoint = config.storage.s3Endpoint
    uri = resolve_local(source)
    if "://" not in source and not Path(source).exists() and _is_name(source):
        from em_spark.app.metrics import metrics_uri

        found = metrics_uri(source, resolve_local(config.run.checkpointDir), resolve_local(config.run.metricsPath))
        if found is None:
            raise ConfigError(
                f"{source!r} is not a path; to find run {source!r} set run.checkpointDir or run.metricsPath"
            )
        uri = found
    try:
        report, png, page = build_report(
            uri,
            resolve_local(output),
            data=resolve_local(data),
            features=features.split(",") if features and "," in features else features,
            max_rows=rows,
            model_path=resolve_local(model),
            s3_endpoint=endpoint,
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"report: nothing found at {redact_uri(uri)}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise ConfigError(f"report: cannot read {redact_uri(uri)}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"report: {exc}") from None
    for note in report.notes:
        print(f"  note: {note}", flush=True)
    print(f"em_spark report: {', '.join(report.panels)} -> {png} and {page}", flush=True)
    return {"png": png, "html": page, "panels": report.panels, "notes": report.notes}


def _is_name(text: str) -> bool:
    from em_spark.storage import validate_name

    try:
        validate_name(text)
    except ValueError:
        return False
    return True
