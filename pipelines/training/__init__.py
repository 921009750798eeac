"""The training DAG (docs/training.md): compact → attribution → batch views → embeddings and
recall index → ranker → evaluate → quality gate → promote → notify serving, with a run record
per run under `<state_dir>/training/runs/`. `recsys train run` and `recsys scheduler` call
`pipelines.training.dag.run_training`."""
