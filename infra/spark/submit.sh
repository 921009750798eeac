#!/usr/bin/env bash
# Submit one batch job to a Spark cluster: infra/spark/submit.sh <job> (jobs take no arguments:
# they read the RECSYS_* settings, or RECSYS_CONFIG). `recsys batch all` is the first six in this
# order, one call each; random_walks only for `recsys train embeddings --walks`.
# Jobs: compact, attribution, sequences, item_graph, batch_features, ranking_samples, random_walks (pipelines/spark/jobs/).
# Paths come from the same settings as a local run: set RECSYS_BATCH__OUTPUT_URI,
# RECSYS_BATCH__EVENTS_URI and RECSYS_BATCH__CATALOG_URI to shared storage (hdfs://, s3a://).
set -euo pipefail
job=${1:?usage: submit.sh <job>}; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
script="$root/pipelines/spark/jobs/$job.py"
[[ -f $script ]] || { echo "error: no such job: $job (see pipelines/spark/jobs/)" >&2; exit 2; }
archive=$(mktemp -d)/recsys.zip
(cd "$root" && zip -qr "$archive" feature_store models pipelines -x '*__pycache__*')
exec spark-submit \
  --master "${SPARK_MASTER:?set SPARK_MASTER, e.g. spark://host:7077 or yarn}" \
  --deploy-mode "${SPARK_DEPLOY_MODE:-client}" \
  --py-files "$archive" \
  --conf spark.sql.session.timeZone=UTC \
  "$script" "$@"
