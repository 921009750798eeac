#!/usr/bin/env bash
# Submit the speed layer to a Flink cluster: infra/flink/run.sh [job args...]
# The same job runs in a local mini-cluster with `recsys stream run`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
archive=$(mktemp -d)/recsys.zip
(cd "$root" && zip -qr "$archive" feature_store models pipelines -x '*__pycache__*')
exec flink run \
  --python "$root/pipelines/flink/job.py" \
  --pyFiles "$archive" \
  "$@"
