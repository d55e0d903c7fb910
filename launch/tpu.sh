#!/usr/bin/env bash
# Cloud TPU launcher for mxq_jax: create a slice, install this checkout on every worker, train,
# sample, evaluate, read logs, delete. Run from any machine with `gcloud` (launch/README.md).
#
# The launcher runs `gcloud` here; launch/on_worker.sh (copied with the checkout) runs on each
# TPU VM, as big_vision's run_tpu.sh does: venv + `pip install jax[tpu]` + `python -m ...`.
# Like maxtext's multihost_runner.py, it ships a tarball of the code to every worker and starts
# the same command on all of them at once, one log per worker.
#
# Every command is printed before it runs ("+ gcloud ..."); DRY_RUN=1 prints them and runs none.
set -euo pipefail

PROG="tpu.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where setup puts things on each worker (on_worker.sh uses the same defaults). The tildes are
# meant literally: they expand in the worker's shell, not here.
# shellcheck disable=SC2088
REMOTE_ROOT="~/mxq_jax"
# shellcheck disable=SC2088
REMOTE_LOGS="~/mxq_jax_logs"

usage() {
  cat <<'EOF'
usage: launch/tpu.sh COMMAND --name=NAME --zone=ZONE [--type=TYPE] [flags] [--config.X=Y ...] [-- ARGS]

commands:
  create    create the TPU VM slice (tpu-vm create), or a queued resource with --queued
  setup     copy this checkout (git HEAD) to every worker and install it into a venv with jax[tpu]
  train     AOT fit check on worker 0 (python -m mxq_jax.aot), then python -m mxq_jax.main on
            every worker at once, detached; each worker logs to ~/mxq_jax_logs/worker-N.log,
            copied to WORKDIR/logs/worker-N.log. The same command resumes a preempted run.
  sample    python -m mxq_jax.sample --workdir=WORKDIR (default --outdir=WORKDIR/generated)
  evaluate  python -m mxq_jax.evaluate --workdir=WORKDIR (default --samples=WORKDIR/generated)
  logs      follow a worker's training log (--worker=N, default 0)
  ssh       a shell on a worker (--worker=N, default 0), or run --command=CMD (--worker=all too)
  delete    delete the slice (the queued resource and its slice with --queued)

flags:
  --name=NAME          TPU (node) name; with --queued also the queued resource's name
  --zone=ZONE          e.g. us-west4-a (v5e), us-east5-b (v6e); see launch/README.md
  --type=TYPE          accelerator type as gcloud names it: v4-8, v5litepod-8, v5litepod-16,
                       v5p-8, v6e-8, ... (needed by create, setup, train, sample, evaluate)
  --project=PROJECT    GCP project (default: gcloud config's)
  --spot               create: a Spot slice (cheaper; may be preempted at any time)
  --queued             create/delete: through a queued resource (waits for capacity)
  --version=VERSION    create: TPU software version (default: by generation, see below)
  --config=FILE        train: experiment config, relative to the checkout (configs/cub.py)
  --workdir=DIR        train/sample/evaluate: gs://BUCKET/PATH (required on multi-host slices);
                       compiled programs are then cached in gs://BUCKET/jax_compilation_cache
  --data_dir=DIR       train: TFDS data directory, passed as --config.data.data_dir
  --skip_fit_check     train: do not run python -m mxq_jax.aot first
  --worker=N           logs/ssh/sample/evaluate: which worker (0, 1, ..., or all for ssh)
  --command=CMD        ssh: run CMD instead of opening a shell
  --quiet              delete: ask nothing
  --config.X=Y         passed to mxq_jax (train: to mxq_jax.aot and mxq_jax.main)
  -- ARGS              everything after -- is passed unchanged to the mxq_jax module
  -h, --help           this text

environment: DRY_RUN=1 prints every command without running any.
default TPU software versions: v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e (https://cloud.google.com/tpu/docs/runtimes).
EOF
}

# A bad invocation: one line on stderr, exit status 2.
usage_error() {
  echo "${PROG}: error: $*" >&2
  exit 2
}

die() {
  echo "${PROG}: error: $*" >&2
  exit 1
}

# An argument as a shell would need it: bare when safe, else single-quoted (only the value of
# a --flag=value, so that "--command='...'" reads as typed).
shell_quote() {
  local arg="$1" prefix=""
  if [[ "${arg}" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix="${BASH_REMATCH[1]}"
    arg="${BASH_REMATCH[2]}"
  fi
  if [[ -n "${arg}" && "${arg}" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ && "${arg}" != "~"* ]]; then
    printf '%s%s' "${prefix}" "${arg}"
  else
    printf "%s'%s'" "${prefix}" "${arg//\'/\'\\\'\'}"
  fi
}

# Prints "+ CMD ARGS" (readably quoted) on stderr, then runs it unless DRY_RUN=1.
run() {
  local line="+" arg
  for arg in "$@"; do
    line+=" $(shell_quote "${arg}")"
  done
  echo "${line}" >&2
  if [[ "${DRY_RUN:-0}" != "1" ]]; then
    "$@"
  fi
}

# --- What the accelerator type implies ------------------------------------------------------

# Sets GENERATION, CHIPS, HOSTS and DEFAULT_VERSION for TYPE, or exits 2.
# Chips: v2/v3/v4/v5p types count TensorCores (2 a chip), v5litepod/v6e types count chips.
# Hosts: one TPU VM holds up to 4 chips on v2-v5p (8 cores), and up to 8 chips on v5e/v6e
# single-host slices (1, 4 or 8 chips); larger v5e/v6e slices use 4-chip VMs
# (https://cloud.google.com/tpu/docs/v5e, https://cloud.google.com/tpu/docs/v6e).
# Software versions: "TPU software versions", https://cloud.google.com/tpu/docs/runtimes
# (page updated 2025-08-11): v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
# v4 and older tpu-ubuntu2204-base.
parse_type() {
  local type="$1" count
  if [[ ! "${type}" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)$ ]]; then
    usage_error "--type=${type} is not an accelerator type this script knows; use one of v4-N, v5litepod-N, v5p-N, v6e-N (gcloud's names, e.g. v5litepod-8)"
  fi
  GENERATION="${BASH_REMATCH[1]}"
  count="${BASH_REMATCH[2]}"
  case "${GENERATION}" in
    v2|v3|v4|v5p)
      CHIPS=$(( count / 2 ))
      HOSTS=$(( CHIPS <= 4 ? 1 : CHIPS / 4 ))
      ;;
    v5litepod|v6e)
      CHIPS="${count}"
      HOSTS=$(( CHIPS <= 8 ? 1 : CHIPS / 4 ))
      ;;
  esac
  case "${GENERATION}" in
    v2|v3|v4) DEFAULT_VERSION="tpu-ubuntu2204-base" ;;
    v5litepod) DEFAULT_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p) DEFAULT_VERSION="v2-alpha-tpuv5" ;;
    v6e) DEFAULT_VERSION="v2-alpha-tpuv6e" ;;
  esac
}

# --- Flags ---------------------------------------------------------------------------------

NAME="" ZONE="" TYPE="" PROJECT="" VERSION="" CONFIG="" WORKDIR="" DATA_DIR=""
WORKER="" COMMAND="" SPOT=0 QUEUED=0 QUIET=0 SKIP_FIT_CHECK=0
PASSTHROUGH=()

# The value of "--flag=value" or "--flag value"; sets VALUE and SHIFT (arguments consumed).
flag_value() {
  local flag="$1" arg="$2"
  if [[ "${arg}" == *=* ]]; then
    VALUE="${arg#*=}"
    SHIFT=1
  elif [[ $# -ge 3 ]]; then
    VALUE="$3"
    SHIFT=2
  else
    usage_error "${flag} needs a value (${flag}=VALUE); --help lists the flags"
  fi
}

parse_flags() {
  while [[ $# -gt 0 ]]; do
    local arg="$1"
    case "${arg}" in
      -h|--help) usage; exit 0 ;;
      --) shift; PASSTHROUGH+=("$@"); return ;;
      --spot) SPOT=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --quiet|-q) QUIET=1; shift ;;
      --skip_fit_check) SKIP_FIT_CHECK=1; shift ;;
      --config.*) PASSTHROUGH+=("${arg}"); shift ;;
      --name|--name=*|--zone|--zone=*|--type|--type=*|--project|--project=*|--version|--version=*|\
      --config|--config=*|--workdir|--workdir=*|--data_dir|--data_dir=*|--worker|--worker=*|\
      --command|--command=*)
        local flag="${arg%%=*}"
        flag_value "${flag}" "$@"
        case "${flag}" in
          --name) NAME="${VALUE}" ;;
          --zone) ZONE="${VALUE}" ;;
          --type) TYPE="${VALUE}" ;;
          --project) PROJECT="${VALUE}" ;;
          --version) VERSION="${VALUE}" ;;
          --config) CONFIG="${VALUE}" ;;
          --workdir) WORKDIR="${VALUE}" ;;
          --data_dir) DATA_DIR="${VALUE}" ;;
          --worker) WORKER="${VALUE}" ;;
          --command) COMMAND="${VALUE}" ;;
        esac
        shift "${SHIFT}"
        ;;
      *) usage_error "unknown flag ${arg}; --help lists the flags (pass mxq_jax's own after --)" ;;
    esac
  done
}

require() {  # require FLAG VALUE: the flag must be set for this command.
  if [[ -z "$2" ]]; then
    usage_error "${SUBCOMMAND} needs $1 (e.g. ${PROG} ${SUBCOMMAND} $1=$3); --help lists the flags"
  fi
}

# Multi-host slices share nothing but the bucket: their workdir and data must be gs://.
require_shared_paths() {
  if (( HOSTS > 1 )); then
    if [[ "${WORKDIR}" != gs://* ]]; then
      usage_error "--workdir=${WORKDIR}: ${TYPE} has ${HOSTS} hosts, which share only Cloud Storage; use --workdir=gs://BUCKET/PATH"
    fi
    if [[ -n "${DATA_DIR}" && "${DATA_DIR}" != gs://* ]]; then
      usage_error "--data_dir=${DATA_DIR}: ${TYPE} has ${HOSTS} hosts, which share only Cloud Storage; use --data_dir=gs://BUCKET/tfds"
    fi
  fi
}

# JAX's persistent compilation cache in the workdir's bucket, where the workdir is gs://: only
# process 0 writes the cache, and a slice recreated after a preemption starts with an empty
# ~/.cache, so every host of every launch reads it from there (README, "What a run does").
python_command() {  # python_command MODULE ARGS...: sets PYTHON_COMMAND, the worker's words.
  PYTHON_COMMAND=()
  if [[ "${WORKDIR}" == gs://* ]]; then
    local bucket="${WORKDIR#gs://}"
    PYTHON_COMMAND+=(env "JAX_COMPILATION_CACHE_DIR=gs://${bucket%%/*}/jax_compilation_cache")
  fi
  PYTHON_COMMAND+=(python -m "$@")
}

check_worker() {  # --worker is a number (or "all" where $1 allows it).
  if [[ ! "${WORKER}" =~ ^[0-9]+$ && ! ( "$1" == "all" && "${WORKER}" == "all" ) ]]; then
    usage_error "--worker=${WORKER}: use a worker number (0 is the first)${1:+ or all}"
  fi
}

# --- gcloud --------------------------------------------------------------------------------

gcloud_tpu() {  # gcloud compute tpus ARGS... --zone=ZONE [--project=PROJECT]
  if [[ -n "${PROJECT}" ]]; then
    run gcloud compute tpus "$@" "--zone=${ZONE}" "--project=${PROJECT}"
  else
    run gcloud compute tpus "$@" "--zone=${ZONE}"
  fi
}

# Runs CMD (one string) on the worker(s) through ssh.
on_workers() {
  local worker="$1" command="$2"
  gcloud_tpu tpu-vm ssh "${NAME}" "--worker=${worker}" "--command=${command}"
}

# "python -m MODULE ARGS..." run by on_worker.sh in the checkout's venv, as one quoted string.
worker_command() {
  local mode="$1" line
  shift
  line="bash ${REMOTE_ROOT}/launch/on_worker.sh ${mode}"
  local arg
  for arg in "$@"; do
    line+=" $(shell_quote "${arg}")"
  done
  printf '%s' "${line}"
}

has_flag() {  # has_flag --outdir ARGS...: whether ARGS set it.
  local flag="$1" arg
  shift
  for arg in "$@"; do
    if [[ "${arg}" == "${flag}" || "${arg}" == "${flag}="* ]]; then
      return 0
    fi
  done
  return 1
}

# --- Commands ------------------------------------------------------------------------------

cmd_create() {
  require --type "${TYPE}" v5litepod-8
  local version="${VERSION:-${DEFAULT_VERSION}}" spot=()
  if (( SPOT )); then
    spot=(--spot)
  fi
  if (( QUEUED )); then
    gcloud_tpu queued-resources create "${NAME}" "--accelerator-type=${TYPE}" \
      "--runtime-version=${version}" "--node-id=${NAME}" "${spot[@]}"
    echo "${PROG}: queued; 'gcloud compute tpus queued-resources describe ${NAME} --zone=${ZONE}' shows its state; run setup once it is ACTIVE" >&2
  else
    gcloud_tpu tpu-vm create "${NAME}" "--accelerator-type=${TYPE}" "--version=${version}" \
      "${spot[@]}"
  fi
}

cmd_setup() {
  require --type "${TYPE}" v5litepod-8
  SETUP_TMP="$(mktemp -d)"
  trap 'rm -rf "${SETUP_TMP}"' EXIT
  local tarball="${SETUP_TMP}/mxq_jax.tar.gz"
  # The committed HEAD of this checkout: uncommitted changes are not copied (a read-only
  # status query, not printed, says so).
  if [[ -n "$(git -C "${REPO_ROOT}" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    echo "${PROG}: note: uncommitted changes are not copied (setup copies git HEAD); commit them first to include them" >&2
  fi
  run git -C "${REPO_ROOT}" archive --format=tar.gz -o "${tarball}" HEAD
  gcloud_tpu tpu-vm scp "${tarball}" "${NAME}:mxq_jax.tar.gz" --worker=all
  on_workers all "rm -rf ${REMOTE_ROOT} && mkdir -p ${REMOTE_ROOT} && tar -xzf mxq_jax.tar.gz -C ${REMOTE_ROOT} && rm mxq_jax.tar.gz && bash ${REMOTE_ROOT}/launch/on_worker.sh install"
}

cmd_train() {
  require --type "${TYPE}" v5litepod-8
  require --config "${CONFIG}" configs/cub.py
  require --workdir "${WORKDIR}" gs://BUCKET/cub
  require_shared_paths
  local overrides=()
  if [[ -n "${DATA_DIR}" ]]; then
    overrides+=("--config.data.data_dir=${DATA_DIR}")
  fi
  overrides+=("${PASSTHROUGH[@]}")
  if (( SKIP_FIT_CHECK )); then
    echo "${PROG}: --skip_fit_check: not compiling for ${TYPE} first" >&2
  else
    # Issue 13's ahead-of-time fit check: compiles every program of the run for the slice's
    # topology and stops, with one line, if one does not fit in the chips' memory.
    if ! on_workers 0 "$(worker_command run -- python -m mxq_jax.aot "--config=${CONFIG}" \
        "--topology=${TYPE}" "${overrides[@]}")"; then
      die "the fit check (python -m mxq_jax.aot --topology=${TYPE}) failed on worker 0 (its output is above); change the config, or rerun with --skip_fit_check"
    fi
  fi
  python_command mxq_jax.main "--config=${CONFIG}" "--workdir=${WORKDIR}" "${overrides[@]}"
  on_workers all "$(worker_command start "${WORKDIR}" -- "${PYTHON_COMMAND[@]}")"
  echo "${PROG}: started on ${HOSTS} worker(s); '${PROG} logs --name=${NAME} --zone=${ZONE}' follows worker 0, every log is copied to ${WORKDIR}/logs/" >&2
}

# sample and evaluate: on worker 0 of a single-host slice; on every worker of a multi-host one
# (each process joins jax.distributed.initialize, so all of them must run; process 0 writes).
cmd_generate_or_evaluate() {
  local module="$1" default_flag="$2"
  require --type "${TYPE}" v5litepod-8
  require --workdir "${WORKDIR}" gs://BUCKET/cub
  require_shared_paths
  local args=("--workdir=${WORKDIR}")
  if ! has_flag "${default_flag}" "${PASSTHROUGH[@]}"; then
    args+=("${default_flag}=${WORKDIR}/generated")
  fi
  args+=("${PASSTHROUGH[@]}")
  local worker="${WORKER}"
  if (( HOSTS > 1 )); then
    if [[ -n "${worker}" && "${worker}" != "all" ]]; then
      usage_error "--worker=${worker}: ${TYPE} has ${HOSTS} hosts and ${module} runs on all of them; leave --worker out"
    fi
    worker=all
  else
    worker="${worker:-0}"
  fi
  python_command "${module}" "${args[@]}"
  on_workers "${worker}" "$(worker_command run -- "${PYTHON_COMMAND[@]}")"
}

cmd_logs() {
  WORKER="${WORKER:-0}"
  check_worker ""
  on_workers "${WORKER}" "tail -n 200 -F ${REMOTE_LOGS}/worker-${WORKER}.log"
}

cmd_ssh() {
  WORKER="${WORKER:-0}"
  check_worker all
  if [[ -n "${COMMAND}" ]]; then
    on_workers "${WORKER}" "${COMMAND}"
  elif [[ "${WORKER}" == "all" ]]; then
    usage_error "ssh --worker=all needs --command=CMD (a shell opens on one worker)"
  else
    gcloud_tpu tpu-vm ssh "${NAME}" "--worker=${WORKER}"
  fi
}

cmd_delete() {
  local quiet=()
  if (( QUIET )); then
    quiet=(--quiet)
  fi
  if (( QUEUED )); then
    # --force deletes the slice the queued resource holds, then the request itself.
    gcloud_tpu queued-resources delete "${NAME}" --force "${quiet[@]}"
  else
    gcloud_tpu tpu-vm delete "${NAME}" "${quiet[@]}"
  fi
}

main() {
  if [[ $# -eq 0 ]]; then
    usage_error "no command; use one of create, setup, train, sample, evaluate, logs, ssh, delete (--help)"
  fi
  SUBCOMMAND="$1"
  shift
  case "${SUBCOMMAND}" in
    -h|--help) usage; exit 0 ;;
    create|setup|train|sample|evaluate|logs|ssh|delete) ;;
    *) usage_error "unknown command '${SUBCOMMAND}'; use one of create, setup, train, sample, evaluate, logs, ssh, delete (--help)" ;;
  esac
  parse_flags "$@"
  require --name "${NAME}" my-tpu
  require --zone "${ZONE}" us-west4-a
  if [[ -n "${TYPE}" ]]; then
    parse_type "${TYPE}"
  fi
  if [[ ${#PASSTHROUGH[@]} -gt 0 && ! "${SUBCOMMAND}" =~ ^(train|sample|evaluate)$ ]]; then
    usage_error "${SUBCOMMAND} takes no mxq_jax arguments (${PASSTHROUGH[0]}); they go to train, sample or evaluate"
  fi
  if [[ -n "${WORKER}" && ! "${SUBCOMMAND}" =~ ^(logs|ssh|sample|evaluate)$ ]]; then
    usage_error "--worker is for logs, ssh, sample and evaluate; ${SUBCOMMAND} runs where it must"
  fi
  case "${SUBCOMMAND}" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    train) cmd_train ;;
    sample) cmd_generate_or_evaluate mxq_jax.sample --outdir ;;
    evaluate) cmd_generate_or_evaluate mxq_jax.evaluate --samples ;;
    logs) cmd_logs ;;
    ssh) cmd_ssh ;;
    delete) cmd_delete ;;
  esac
}

main "$@"
