#!/usr/bin/env bash
# Submit one batch job to a Spark cluster: infra/spark/submit.sh <job> (jobs take no arguments:
# they read the RECSYS_* settings, or RECSYS_CONFIG). `recsys batch all` is the first six in this
# order, one call each; random_walks only for `recsys train embeddings --walks`.
# Jobs: compact, attribution, sequences, item_graph, batch_features, ranking_samples, random_walks (pipelines/spark/jobs/).
# Paths come from the same settings as a local run: set RECSYS_BATCH__OUTPUT_URI,
# RECSYS_BATCH__EVENTS_URI and RECSYS_BATCH__CATALOG_URI to shared storage (hdfs://, s3a://).
# The driver's Python is PYSPARK_DRIVER_PYTHON, else PYSPARK_PYTHON, else python3 (spark-submit's
# own choice), with the project's dependencies.
set -euo pipefail
job=${1:?usage: submit.sh <job>}; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
script="$root/pipelines/spark/jobs/$job.py"
[[ -f $script ]] || { echo "error: no such job: $job (see pipelines/spark/jobs/)" >&2; exit 2; }
master=${SPARK_MASTER:?set SPARK_MASTER, e.g. spark://host:7077 or yarn}
python=${PYSPARK_DRIVER_PYTHON:-${PYSPARK_PYTHON:-python3}}
# spark-submit starts the driver's JVM before the job builds its SparkSession, so the session's
# driver memory and driver Java options (pipelines/spark/session.py: settings, then extra_conf) would
# come too late: they are read here, from the same settings, and passed on the command line.
driver=$(PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -c '
from feature_store.settings import Settings
from pipelines.spark.session import BASE_CONF
spark = Settings().spark
conf = {**BASE_CONF, "spark.driver.memory": spark.driver_memory, **spark.extra_conf}
print(conf["spark.driver.memory"])
print(conf["spark.driver.extraJavaOptions"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && zip -qr "$work/recsys.zip" feature_store models pipelines -x '*__pycache__*')
spark-submit \
  --master "$master" \
  --deploy-mode "${SPARK_DEPLOY_MODE:-client}" \
  --driver-memory "${driver%%$'\n'*}" \
  --driver-java-options "${driver#*$'\n'}" \
  --py-files "$work/recsys.zip" \
  --conf spark.sql.session.timeZone=UTC \
  "$script" "$@"
