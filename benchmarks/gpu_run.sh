#!/usr/bin/env bash
# The GPU run: the plan of benchmarks/gpu_plan.py, one budget for the whole of it, every figure as
# JSON under $OUT. CONTRIBUTING.md ("GPU checks") gives the exact device calls; docs/performance.md
# says where the figures go.
#
#   bash benchmarks/gpu_prepare.sh                    # here, first: fills .device/ (data archive, wheels)
#   bash benchmarks/gpu_run.sh --dry-run              # here: the rehearsal, the device run on the CPU
#   GPU_RUN_CALL=1 bash benchmarks/gpu_run.sh         # on the device: call 1, then GPU_RUN_CALL=2
#
# Each call, on the device and in the rehearsal alike: unpack the carried data archive -> install
# the carried wheels (.device/wheels, offline) and the project from this working tree (no
# dependencies, not editable) into folders on PYTHONPATH -> check every step's packages and the GPU
# (gpu_report.py env: env.json, exit 3 if a step's need is missing) -> the plan's steps within the
# budget, goals.json at the end (gpu_plan.py). `python3` is the one on PATH, as on the device.
# The rehearsal differs only where a CPU must: the same steps at tiny sizes, eager, on a few real
# images per class, and an import fence (benchmarks/fence/) that refuses any third-party module
# that is neither on the device's package list nor carried, naming the module and the step.
#
# Settings (environment):
#   GPU_RUN_BUDGET_S  the plan's wall time in seconds, set-up included, across its calls (device:
#                     630, the two calls' timeout_s less margins; dry run: 900)
#   GPU_RUN_CALL      1 or 2 on the device (which call this is), or all: the whole plan in this call,
#                     within GPU_RUN_BUDGET_S (the dry run's default; on the device the budget must be set)
#   GPU_RUN_STEPS     only these steps (e.g. "loader dali"); the others are recorded as not selected
#   GPU_RUN_KEEP      the plan's state and files across calls (device: /tmp/resnet-cifar-gpu-run,
#                     which the warm machine keeps; dry run: a temporary folder unless set)
#   GPU_RUN_DEVICE_DIR  what gpu_prepare.sh filled (default .device)
#   RESNET_CIFAR_TEST_DATA  the dry run's source of images (default ../shared/data/cifar10-jpeg)
# Exit status: 0 every step that ran succeeded, 1 a step failed or was cut at its limit, 2 a bad
# argument or missing input, 3 a failed install, a step's missing package or no GPU, 130/143 stopped.
set -uo pipefail

GPU_RUN_STARTED=$(date +%s.%N)
export GPU_RUN_STARTED
usage="usage: bash benchmarks/gpu_run.sh [--dry-run]   (settings: GPU_RUN_CALL, GPU_RUN_BUDGET_S, GPU_RUN_STEPS, GPU_RUN_KEEP)"
dry=${DRY_RUN:-0}
for argument in "$@"; do
  case "$argument" in
    --dry-run) dry=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) echo "error: unknown argument '$argument'; $usage" >&2; exit 2 ;;
  esac
done
case "$dry" in
  0 | 1) ;;
  *) echo "error: DRY_RUN must be 0 or 1, got '$dry'" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
device_dir=${GPU_RUN_DEVICE_DIR:-.device}
call=${GPU_RUN_CALL:-all}
case "$call" in
  1 | 2) ;;
  all)
    # One call for the whole plan: on the device its budget must be set, inside the call's timeout_s.
    if [ "$dry" = 0 ] && [ -z "${GPU_RUN_BUDGET_S:-}" ]; then
      echo "error: on the device set GPU_RUN_CALL=1 or 2, or GPU_RUN_CALL=all with GPU_RUN_BUDGET_S (CONTRIBUTING.md, GPU checks)" >&2
      exit 2
    fi
    ;;
  *) echo "error: GPU_RUN_CALL must be 1, 2 or all, got '$call'" >&2; exit 2 ;;
esac
budget_args=()
if [ -n "${GPU_RUN_BUDGET_S:-}" ]; then
  [[ "$GPU_RUN_BUDGET_S" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPU_RUN_BUDGET_S must be a positive integer, got '$GPU_RUN_BUDGET_S'" >&2; exit 2; }
  budget_args=(--budget "$GPU_RUN_BUDGET_S")
fi
if [ -z "${OUT:-}" ]; then
  if [ "$dry" = 1 ]; then
    OUT=$(mktemp -d -t resnet-cifar-gpu-run-XXXXXX)
  else
    echo "error: OUT is not set (the device call sets it); for a local check use --dry-run" >&2
    exit 2
  fi
fi
mkdir -p "$OUT" || exit 2
export OUT
scratch=$(mktemp -d -t resnet-cifar-gpu-scratch-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
if [ "$dry" = 1 ]; then
  keep=${GPU_RUN_KEEP:-$scratch/keep}
else
  keep=${GPU_RUN_KEEP:-/tmp/resnet-cifar-gpu-run}
fi
mkdir -p "$keep" || exit 2

log() { echo "[gpu_run +$(($(date +%s) - ${GPU_RUN_STARTED%.*}))s] $*" | tee -a "$OUT/run.log"; }
log "mode: $([ "$dry" = 1 ] && echo 'dry run (CPU, tiny sizes)' || echo 'GPU run'); call $call; OUT=$OUT; KEEP=$keep; python3 $(command -v python3)"

# --- data: the carried archive ---------------------------------------------------------------------
data_tgz=$device_dir/cifar10-jpeg.tgz
if [ ! -f "$data_tgz" ]; then
  echo "error: $data_tgz is missing; run: bash benchmarks/gpu_prepare.sh (and carry $device_dir)" >&2
  exit 2
fi
if [ "$dry" = 1 ]; then
  # A few real images per class from the archive (20 train, 10 test), in the same layout:
  # unpacking all 60,000 files would take longer than the rest of the set-up.
  data_parent=$scratch/data
  members=$scratch/members.txt
  tar tzf "$data_tgz" | grep -E '^cifar10-jpeg/(train|test)/[^/]+/[^/]+\.jpg$' | sort |
    awk -F/ '{ key = $2 "/" $3; n[key]++; if (n[key] <= ($2 == "train" ? 20 : 10)) print }' > "$members"
  mkdir -p "$data_parent" && tar xzf "$data_tgz" -C "$data_parent" -T "$members" ||
    { echo "error: cannot unpack $data_tgz" >&2; exit 2; }
else
  data_parent=/tmp/resnet-cifar-data  # a warm machine keeps it from the call before
  if [ ! -d "$data_parent/cifar10-jpeg/test" ]; then
    mkdir -p "$data_parent" && tar xzf "$data_tgz" -C "$data_parent" || { echo "error: cannot unpack $data_tgz" >&2; exit 2; }
  fi
fi
data_root=$data_parent/cifar10-jpeg
[ -d "$data_root/train" ] && [ -d "$data_root/test" ] || { echo "error: $data_tgz holds no cifar10-jpeg/train and test folders" >&2; exit 2; }
log "data: $(find -L "$data_root" -name '*.jpg' | wc -l) images in $data_root"

# --- install, offline: the carried wheels, then the project from this working tree -----------------
site=$scratch/site
project=$scratch/project
if compgen -G "$device_dir/wheels/*.whl" > /dev/null; then
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$device_dir"/wheels/*.whl 2>&1 | tee -a "$OUT/run.log"; then
    echo "error: the carried wheels in $device_dir/wheels did not install (see run.log)" >&2
    exit 3
  fi
  log "wheels installed into $site: $(cd "$device_dir/wheels" && ls | tr '\n' ' ')"
fi
mkdir -p "$scratch/source" && cp -r pyproject.toml README.md resnet_cifar cli "$scratch/source/" || exit 2
if ! python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$project" "$scratch/source" 2>&1 | tee -a "$OUT/run.log"; then
  echo "error: the project did not install from the working tree (python3 -m pip install --no-deps --target; see run.log)" >&2
  exit 3
fi
export PYTHONPATH="$project:$site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$project/bin:$PATH"
# From outside the checkout, as every step runs: its own resnet_cifar/ must not shadow the install.
if ! installed=$(cd "$scratch" && python3 -c "import resnet_cifar.cli.main, resnet_cifar; print(resnet_cifar.__file__)" 2>&1) ||
  [[ "$installed" != "$project"/* ]]; then
  echo "error: the installed project does not import from $project: $installed" >&2
  exit 3
fi
log "project installed into $project (resnet-cifar: $(command -v resnet-cifar))"

# --- the import fence (dry run) ---------------------------------------------------------------------
fence_args=()
if [ "$dry" = 1 ]; then
  fence_table=$scratch/fence.json
  python3 benchmarks/device_env.py fence-table --out "$fence_table" --wheels "$device_dir/wheels" || exit 3
  export GPU_RUN_FENCE=$fence_table
  export PYTHONPATH="$repo/benchmarks/fence:$PYTHONPATH"
  fence_args=(--fence-log "$fence_table.log")
  log "import fence on: only the device list's packages, the carried wheels and the project import"
fi

# --- the environment: every step's packages, and the GPU --------------------------------------------
env_args=(--out "$OUT")
[ "$dry" = 0 ] && env_args+=(--require-cuda)
GPU_RUN_STEP=environment python3 benchmarks/gpu_report.py env "${env_args[@]}" 2> "$scratch/env.err" | tee -a "$OUT/run.log"
env_status=${PIPESTATUS[0]}
cat "$scratch/env.err" >&2  # its one-line refusal stays on stderr
cat "$scratch/env.err" >> "$OUT/run.log"
if [ "$env_status" -ne 0 ]; then
  log "environment check failed (exit $env_status)"
  exit "$env_status"
fi

# --- the plan -------------------------------------------------------------------------------------
[ "$dry" = 0 ] && export RESNET_CIFAR_CACHE=${RESNET_CIFAR_CACHE:-/tmp/resnet-cifar-cache}  # kept between calls
plan_args=(--out "$OUT" --keep "$keep" --work "$scratch/work" --data-dir "$data_root" --call "$call"
  --started "$GPU_RUN_STARTED" --steps "${GPU_RUN_STEPS:-}" "${budget_args[@]}" "${fence_args[@]}")
[ "$dry" = 1 ] && plan_args+=(--dry-run)
# Not exec'd, so that the EXIT trap removes the scratch folder afterwards: bash passes SIGINT and
# SIGTERM on to the runner, which stops its step, writes the files and exits 130/143.
runner=
trap '[ -n "$runner" ] && kill -TERM "$runner" 2>/dev/null' TERM
trap '[ -n "$runner" ] && kill -INT "$runner" 2>/dev/null' INT
GPU_RUN_STEP=plan python3 benchmarks/gpu_plan.py "${plan_args[@]}" &
runner=$!
wait "$runner"
status=$?
while kill -0 "$runner" 2>/dev/null; do  # a signal ended the wait, not the runner
  wait "$runner"
  status=$?
done
exit "$status"
