#!/usr/bin/env bash
# Submit the speed layer to a Flink session cluster: infra/flink/run.sh [job args...]
#   e.g. RECSYS_REDIS__URL=redis+cluster://redis:6379/0 infra/flink/run.sh --state-dir /shared/recsys
# The cluster is the one FLINK_CONF_DIR's config.yaml names (rest.address, rest.port); `flink` is
# $FLINK_HOME/bin/flink, else the one on PATH, else the one in PYTHON's apache-flink package.
# PYTHON (default python3) runs the job's main on this machine, and the job tells the task
# managers to run their Python workers with the same path, so it must exist there too, with the
# project's dependencies. The project's own code travels with the job (--pyFiles zip).
# The client stays attached to the job; SIGTERM or SIGINT to this script reaches it (as SIGTERM), its
# job main then cancels the job, and the script exits when the client has, with its status
# (infra/lib/attached.sh).
# The same job runs in a local mini-cluster with `recsys stream run`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/infra/lib/attached.sh"
python=${PYTHON:-python3}
if [[ -n "${FLINK_HOME:-}" ]]; then
  flink="$FLINK_HOME/bin/flink"
elif command -v flink >/dev/null 2>&1; then
  flink=flink
else
  flink="$("$python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')/bin/flink"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && zip -qr "$work/recsys.zip" feature_store models pipelines -x '*__pycache__*')
run_attached "$flink" run \
  --python "$root/pipelines/flink/job.py" \
  --pyClientExecutable "$python" \
  --pyFiles "$work/recsys.zip" \
  "$@"
