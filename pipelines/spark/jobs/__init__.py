"""One module per batch job: `extract → transform → load`, `run(spark, settings)` and a spark-submit `main`."""
