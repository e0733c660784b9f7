"""The Spark side: load/validate/cache blocks, the EM loop, scoring. Knows the model
protocol (``em_spark.models.base``), never a model family."""
