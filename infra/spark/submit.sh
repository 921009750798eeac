#!/usr/bin/env bash
# Submit one batch job to a Spark cluster: infra/spark/submit.sh <job> (jobs take no arguments:
# they read the RECSYS_* settings, or RECSYS_CONFIG). `recsys batch all` is the first six in this
# order, one call each; random_walks only for `recsys train embeddings --walks`.
# Jobs: compact, attribution, sequences, item_graph, batch_features, ranking_samples, random_walks (pipelines/spark/jobs/).
# Paths come from the same settings as a local run: RECSYS_BATCH__EVENTS_URI may be any URI Spark
# reads (hdfs://, s3a://); RECSYS_BATCH__OUTPUT_URI and RECSYS_BATCH__CATALOG_URI are paths on a
# filesystem every process mounts (the DAG, the API and the learner read them as files).
# The driver's Python is PYSPARK_DRIVER_PYTHON, else PYSPARK_PYTHON, else python3 (spark-submit's
# own choice), with the project's dependencies.
# SIGTERM or SIGINT to this script reaches spark-submit (as SIGTERM); the script exits when
# spark-submit has, with its status (infra/lib/attached.sh).
set -euo pipefail
job=${1:?usage: submit.sh <job>}; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/infra/lib/attached.sh"
script="$root/pipelines/spark/jobs/$job.py"
[[ -f $script ]] || { echo "error: no such job: $job (see pipelines/spark/jobs/)" >&2; exit 2; }
master=${SPARK_MASTER:?set SPARK_MASTER, e.g. spark://host:7077 or yarn}
python=${PYSPARK_DRIVER_PYTHON:-${PYSPARK_PYTHON:-python3}}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# spark-submit starts the driver's JVM before the job builds its SparkSession, so whatever the
# JVM needs at start (driver memory and Java options, spark.jars, spark.jars.packages,
# spark.driver.extraClassPath: a connector such as hadoop-aws) would come too late from the
# session builder. The session's whole conf (pipelines/spark/session.py's `session_conf`) is read
# here from the same settings and passed as --conf, one NUL-ended key=value per entry so that
# values keep their spaces and quotes.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -c '
import sys
from feature_store.settings import Settings
from pipelines.spark.session import session_conf
sys.stdout.write("".join(f"{key}={value}\0" for key, value in session_conf(Settings()).items()))' > "$work/conf"
confs=()
while IFS= read -r -d '' entry; do confs+=(--conf "$entry"); done < "$work/conf"
(cd "$root" && zip -qr "$work/recsys.zip" feature_store models pipelines -x '*__pycache__*')
run_attached spark-submit \
  --master "$master" \
  --deploy-mode "${SPARK_DEPLOY_MODE:-client}" \
  "${confs[@]}" \
  --py-files "$work/recsys.zip" \
  "$script" "$@"
