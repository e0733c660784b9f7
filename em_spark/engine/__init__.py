"""The Spark side: load/validate/cache blocks, the EM loop, scoring. Knows the model
protocol (``em_spark.models.base``), never a model family.

The load pass (once):
    arrow_input     Arrow record batches -> validated numpy blocks (InputSpec, column names); a
                    Vector column, for a family that accepts_sparse, -> CSR blocks, never densified
    block_codec     blocks as bytes on the way into the RDD; regrouping to a working size
    fingerprint     row hashing: the data fingerprint and the sample's random numbers
    sampling        the bounded, partition-independent sample for initialization
    load_summary    LoadSummary (+ RowProblems): what the pass learns, as a value with +
    validation      the summary -> one clear DataValidationError before iteration 1
    executor_files  each partition's blocks in a file on its executor, memory-mapped
    partition_tasks the task bodies both transports run: encode, assemble, E-step a partition
    spark_source    SparkBlockSource (RDDs, classic sessions): the pass, one Spark job per E-step;
                    load_blocks, which picks the transport by session type
    dataframe_source DataFrameBlockSource: the same through DataFrame APIs only (Spark Connect)
The fit:
    sources         the BlockSource protocol the loop sees, and the in-process LocalBlockSource
    reduce          the ordered tree reduce (partition order, bit-reproducible), on RDDs or collected
    loop            fit_em: restarts x iterations, convergence, checkpoint commits, resume
    state           the checkpoint state format: RunState (each restart's FitState), its bytes, the identity a resume matches
Afterwards:
    scoring         a fitted model applied to a DataFrame
"""
