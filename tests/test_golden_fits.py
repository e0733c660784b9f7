"""Bit-identical golden fits: refactoring the models must not change one bit of any fit.

``tests/golden/make_golden.py`` recorded, at a reference commit, fixed small fits of every
family (each covariance type, missing values, labels, re-seeding, restarts; numpy path and
through Spark) with their inputs. Here each is refitted from the stored inputs and every
fitted parameter array, the log-likelihood history and the scored outputs must be
``np.array_equal`` to the recording (NaN-free; shapes and dtypes included). Regenerate the
files only for a deliberate change of numerics, and say so in the commit.

Bit for bit on the machine the recordings were made for (``tests/golden/machines/<signature>/``,
see ``make_golden.py``); on another CPU within a rounding tolerance. The recordings pin the numpy kernels (``EM_SPARK_KERNEL=numpy``), the reference; the
compiled Gaussian E-step agrees with numpy to rounding, not bit for bit (its vector width
depends on the CPU), so its fits are compared with the recordings within a tolerance.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from em_spark.models.compiled import KERNEL_ENV

_spec = importlib.util.spec_from_file_location("make_golden", Path(__file__).parent / "golden" / "make_golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

INPUTS = golden.load_inputs()
NUMPY_CASES = golden.numpy_cases(INPUTS)
SPARK_CASE_NAMES = sorted(golden.spark_cases(INPUTS, spark=None))


#: recordings made on a machine of this one's numeric signature are compared bit for bit; on any other
#: CPU (numpy's SIMD kernels and OpenBLAS's differ by rounding) within this relative tolerance
OTHER_MACHINE_RTOL = 1e-9


def _mismatch(case: str, fitted: dict[str, np.ndarray], expected: dict[str, np.ndarray], exact: bool) -> str | None:
    """Why ``fitted`` differs from one recording (None when it matches): bit for bit when ``exact``,
    else within OTHER_MACHINE_RTOL of the largest recorded value (integer outputs always exactly)."""
    if sorted(fitted) != sorted(expected):
        return f"{case}: other outputs than recorded"
    for key, want in expected.items():
        got = np.asarray(fitted[key])
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{case} {key}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
        floating = np.issubdtype(want.dtype, np.floating)
        if np.array_equal(got, want, equal_nan=floating):
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if exact or not floating:
            return f"{case} {key}: not bit-identical to the golden fit (max abs difference {diff:.3g})"
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 0.0
        if not np.allclose(got, want, rtol=OTHER_MACHINE_RTOL, atol=OTHER_MACHINE_RTOL * scale):
            return f"{case} {key}: differs by up to {diff:.3g} (more than rounding)"
    return None


def _assert_identical(case: str, fitted: dict[str, np.ndarray]) -> None:
    """Bit for bit against this machine's recording; on a CPU without one, equal to some recorded
    machine's fit within rounding (a fit that hits a tie, such as k-means++ on integer codes, may
    follow one machine's rounding and not another's: it must still be one of the recorded fits)."""
    if golden.recorded_for_this_machine():
        problem = _mismatch(case, fitted, golden.load_golden(case), exact=True)
        if problem:
            pytest.fail(problem)
        return
    problems = []
    for machine, expected in golden.all_recordings(case):
        problem = _mismatch(case, fitted, expected, exact=False)
        if problem is None:
            return
        problems.append(f"{machine}: {problem}")
    pytest.fail(
        f"no recording for machine {golden.machine_signature()} and no recorded machine's fit matches within "
        f"rounding ({'; '.join(problems)}); record one with tests/golden/make_golden.py --machine at a commit "
        "whose numerics are the reference"
    )


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_fit_is_bit_identical_to_the_golden_fit(case, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "numpy")
    with threadpool_limits(limits=1):  # as recorded: one BLAS thread
        _assert_identical(case, NUMPY_CASES[case]())


@pytest.mark.parametrize("case", sorted(name for name in NUMPY_CASES if "gaussian" in name))
def test_compiled_kernel_fit_agrees_with_the_golden_fit(case, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "compiled")
    expected = golden.load_golden(case)
    fitted = NUMPY_CASES[case]()
    assert sorted(fitted) == sorted(expected)
    for key, want in expected.items():
        got = np.asarray(fitted[key])
        assert got.shape == want.shape, key
        if np.issubdtype(want.dtype, np.floating):
            finite = np.abs(want[np.isfinite(want)])
            scale = float(finite.max()) if finite.size else 0.0
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * scale, err_msg=f"{case} {key}")
        else:
            assert np.array_equal(got, want), f"{case} {key}"


@pytest.mark.spark
@pytest.mark.parametrize("case", SPARK_CASE_NAMES)
def test_spark_fit_is_bit_identical_to_the_golden_fit(spark, case):
    # the executors' Python workers take their environment from the context's
    environment = spark.sparkContext.environment
    before = environment.get(KERNEL_ENV)
    environment[KERNEL_ENV] = "numpy"
    try:
        _assert_identical(case, golden.spark_cases(INPUTS, spark)[case]())
    finally:
        if before is None:
            environment.pop(KERNEL_ENV, None)
        else:
            environment[KERNEL_ENV] = before
