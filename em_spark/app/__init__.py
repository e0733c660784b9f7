"""The commands: one module per command, what they share in :mod:`em_spark.app.common`.

``config`` (the YAML job config, a value), ``common`` (logging, paths, the session, reading
the input, an estimator from a config, a saved model), ``train``, ``score`` (score and
impute), ``outputs`` (their output checks and staged writes), ``select``, ``nightly``,
``report``, ``registry`` (the registry sub-commands), ``metrics`` (metrics.json and the
Pushgateway) and ``demo_data``. :mod:`em_spark.cli` parses arguments and dispatches here;
``jobs/*.py`` are thin spark-submit shims over it. Nothing below ``app`` imports it.
"""
