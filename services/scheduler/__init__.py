"""`recsys scheduler`: runs the training DAG on a cron schedule under a Redis lock (docs/training.md)."""
