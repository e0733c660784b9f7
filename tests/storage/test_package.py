"""The storage layer's boundaries: what it exports and what it must not import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from em_spark import storage


def test_public_names_resolve():
    for name in storage.__all__:
        assert getattr(storage, name) is not None, name


def test_storage_imports_neither_spark_nor_models():
    code = (
        "import sys, em_spark.storage; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark' or m.startswith('em_spark.models')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
