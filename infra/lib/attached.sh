# Sourced by infra/spark/submit.sh and infra/flink/run.sh.
#
# run_attached CMD [ARGS...]: run CMD as a child that this script's SIGTERM and SIGINT reach, wait
# until it has exited, and return its status. A foreground child would get neither: bash runs a
# trap only after the foreground command returns (a container's PID 1 ignores an untrapped
# SIGTERM outright), so the `flink run` client kept its job running and a restart submitted a
# second copy. The child gets SIGTERM for both: a background child of a script ignores SIGINT.
# After passing a signal on, it waits again, so the child's shutdown (the Flink job's cancel) has
# finished before the caller's EXIT trap removes what the child uses.
run_attached() {
  _attached_child=
  _attached_signalled=
  trap '_attached_signalled=1; _attached_forward' TERM INT  # before the child starts: no gap
  "$@" &
  _attached_child=$!
  [[ -z $_attached_signalled ]] || _attached_forward  # a signal came before its pid was known
  local status=0
  wait "$_attached_child" || status=$?
  while [[ -n $_attached_signalled ]]; do  # `wait` returned on the signal, not on the child's exit
    _attached_signalled=
    status=0
    wait "$_attached_child" || status=$?
  done
  trap - TERM INT
  return "$status"
}

_attached_forward() {
  [[ -z $_attached_child ]] || kill -s TERM "$_attached_child" 2>/dev/null || true
}
