#!/usr/bin/env bash
# The worker side of launch/tpu.sh: runs on each TPU VM, from the checkout that `tpu.sh setup`
# unpacked into ~/mxq_jax (big_vision's run_tpu.sh plays this part there).
#
#   on_worker.sh install                     venv with jax[tpu] and this checkout (pip -e)
#   on_worker.sh run -- CMD ...              CMD in the checkout, with the venv's python
#   on_worker.sh start WORKDIR -- CMD ...    CMD detached (setsid nohup), its output appended to
#                                            ~/mxq_jax_logs/worker-N.log, which is copied to
#                                            WORKDIR/logs/worker-N.log every minute and at exit
#
# N is the worker's number in the slice (TPU VM metadata `agent-worker-number`).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="${MXQ_JAX_ROOT:-$(cd "$(dirname "${SELF}")/.." && pwd)}"
VENV="${MXQ_JAX_VENV:-${HOME}/mxq_jax_venv}"
LOGS="${MXQ_JAX_LOGS:-${HOME}/mxq_jax_logs}"
SYNC_SECONDS="${MXQ_JAX_LOG_SYNC_SECONDS:-60}"

die() {
  echo "on_worker.sh: error: $*" >&2
  exit 1
}

worker_number() {
  if [[ -n "${MXQ_JAX_WORKER:-}" ]]; then
    echo "${MXQ_JAX_WORKER}"
    return
  fi
  local number
  number="$(curl -sf -m 2 -H 'Metadata-Flavor: Google' \
    'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number' \
    2>/dev/null || true)"
  if [[ ! "${number}" =~ ^[0-9]+$ ]]; then
    # TPU VM host names end in -w-N.
    number="$(hostname)"
    number="${number##*-w-}"
    [[ "${number}" =~ ^[0-9]+$ ]] || number=0
  fi
  echo "${number}"
}

use_venv() {
  [[ -x "${VENV}/bin/python" ]] || die "no venv at ${VENV}; run 'launch/tpu.sh setup' first"
  export VIRTUAL_ENV="${VENV}"
  export PATH="${VENV}/bin:${PATH}"
  cd "${ROOT}"
}

# The first Python >= 3.11 (setup.py's floor) on PATH; else Ubuntu's python3.11 is installed.
find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "${candidate}" >/dev/null 2>&1 &&
        "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "${candidate}"
      return 0
    fi
  done
  return 1
}

cmd_install() {
  local python
  if ! python="$(find_python)"; then
    echo "+ sudo apt-get install -y python3.11 python3.11-venv" >&2
    sudo apt-get update -q >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11 python3.11-venv >/dev/null
    python=python3.11
  fi
  if [[ ! -x "${VENV}/bin/python" ]]; then
    echo "+ ${python} -m venv ${VENV}" >&2
    if ! "${python}" -m venv "${VENV}" 2>/dev/null; then  # Ubuntu ships venv separately.
      rm -rf "${VENV}"
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${python}-venv" >/dev/null
      "${python}" -m venv "${VENV}"
    fi
  fi
  echo "+ ${VENV}/bin/pip install 'jax[tpu]>=0.10.0' -e ${ROOT}" >&2
  "${VENV}/bin/pip" install -q -U pip
  # jax[tpu] brings libtpu from PyPI; the bound is setup.py's.
  "${VENV}/bin/pip" install -q 'jax[tpu]>=0.10.0' -e "${ROOT}"
  use_venv
  # Every worker at once (tpu.sh runs this with --worker=all), as a multi-host run starts.
  python -c 'from mxq_jax import cli; cli.initialize_distributed(); import jax
print(f"worker {jax.process_index()}: {jax.local_device_count()} of {jax.device_count()} "
      f"{jax.devices()[0].device_kind} devices, jax {jax.__version__}")'
}

cmd_run() {
  use_venv
  exec "$@"
}

copy_log() {  # copy_log WORKDIR LOG NUMBER: the log into WORKDIR/logs/, best effort.
  local workdir="$1" log="$2" number="$3"
  local dest="${workdir}/logs/worker-${number}.log"
  if [[ "${workdir}" == gs://* ]]; then
    if command -v gcloud >/dev/null 2>&1; then
      gcloud storage cp --quiet "${log}" "${dest}" >/dev/null 2>&1 || true
    elif command -v gsutil >/dev/null 2>&1; then
      gsutil -q cp "${log}" "${dest}" >/dev/null 2>&1 || true
    fi
  else
    { mkdir -p "${workdir}/logs" && cp "${log}" "${dest}.tmp" && mv "${dest}.tmp" "${dest}"; } \
      2>/dev/null || true
  fi
}

cmd_start() {
  local workdir="$1"
  shift
  [[ "${1:-}" == "--" ]] && shift
  [[ $# -gt 0 ]] || die "start WORKDIR -- CMD: no command"
  use_venv
  local number log pidfile
  number="$(worker_number)"
  mkdir -p "${LOGS}"
  log="${LOGS}/worker-${number}.log"
  pidfile="${LOGS}/worker-${number}.pid"
  if [[ -f "${pidfile}" ]] && kill -0 "$(cat "${pidfile}")" 2>/dev/null; then
    die "worker ${number}: a run is already going (PID $(cat "${pidfile}"), log ${log}); stop it first (kill -TERM saves a checkpoint)"
  fi
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) worker ${number} ($(hostname)) starts: $*" >> "${log}"
  setsid nohup bash "${SELF}" _supervise "${workdir}" "${log}" "${number}" "$@" \
    > /dev/null 2>&1 < /dev/null &
  echo "$!" > "${pidfile}"
  echo "worker ${number}: started (PID $!); log ${log}, copied to ${workdir}/logs/worker-${number}.log"
}

# The detached part of start: runs CMD, forwards SIGTERM to it (the trainer then saves the step
# in flight), and copies the log while it runs and once it has exited.
cmd_supervise() {
  local workdir="$1" log="$2" number="$3"
  shift 3
  use_venv
  "$@" >> "${log}" 2>&1 < /dev/null &
  local child=$!
  trap 'kill -TERM "${child}" 2>/dev/null || true' TERM INT HUP
  while kill -0 "${child}" 2>/dev/null; do
    copy_log "${workdir}" "${log}" "${number}"
    sleep "${SYNC_SECONDS}" &
    wait "$!" || true
  done
  local status=0
  wait "${child}" || status=$?
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) worker ${number}: exited with status ${status}" >> "${log}"
  copy_log "${workdir}" "${log}" "${number}"
  exit "${status}"
}

main() {
  local command="${1:-}"
  shift || true
  case "${command}" in
    install) cmd_install ;;
    run) [[ "${1:-}" == "--" ]] && shift; cmd_run "$@" ;;
    start) [[ $# -ge 1 ]] || die "start needs WORKDIR"; cmd_start "$@" ;;
    _supervise) cmd_supervise "$@" ;;
    *) die "unknown command '${command}'; use install, run -- CMD, or start WORKDIR -- CMD" ;;
  esac
}

main "$@"
