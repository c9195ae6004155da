#!/usr/bin/env bash
# The GPU run: one prepared command for one device call (at most 9 minutes), every figure as JSON
# under $OUT. See CONTRIBUTING.md ("GPU checks") for the exact call and docs/performance.md for
# where the figures go.
#
#   bash benchmarks/gpu_run.sh              # on the device machine: needs .device/cifar10-jpeg.tgz and CUDA
#   bash benchmarks/gpu_run.sh --dry-run    # anywhere (CPU): tiny sizes, same steps, same JSON layout
#   DRY_RUN=1 bash benchmarks/gpu_run.sh    # the same
#
# Steps: unpack the carried data -> install the project offline (and any wheels carried in
# .device/wheels) -> check packages and the GPU (env.json) -> timed from-scratch training with the
# default recipe, test accuracy every epoch (train.json) -> the benchmark suite on CUDA at batch
# 512, one pytest run per group (bench_train_step.json, bench_loader.json, bench_inference.json)
# -> the goals judged from those files (goals.json). Everything printed also lands in run.log.
# Training runs first: it holds the figures that matter most. Each step has a time limit taken
# from what is left of GPU_RUN_BUDGET_S, so the command ends inside the device call's limit.
#
# Settings (environment): GPU_RUN_BUDGET_S (default 540), GPU_RUN_EPOCHS (default 30, the
# default preset's), GPU_RUN_PRESET (default "default"), GPU_RUN_LOADER (auto|tensor|dali; auto =
# DALI when it imports), GPU_RUN_SKIP_TRAIN=1, GPU_RUN_SKIP_BENCH=1 (training gets the whole
# budget), GPU_RUN_CHECKPOINT_DIR (write checkpoints there and resume from them: a long run over
# consecutive calls), RESNET_CIFAR_TEST_DATA (the dry run's data, default
# ../shared/data/cifar10-jpeg), PYTHON (default python3).
# Exit status: 0 when every step succeeded, 1 when a step failed (later steps still ran), 2 for a
# bad argument or missing input, 3 when a needed package or the GPU is missing.
set -uo pipefail

usage="usage: bash benchmarks/gpu_run.sh [--dry-run]"
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
PYTHON=${PYTHON:-python3}
budget=${GPU_RUN_BUDGET_S:-540}
epochs=${GPU_RUN_EPOCHS:-30}
preset=${GPU_RUN_PRESET:-default}
loader=${GPU_RUN_LOADER:-auto}
for number in "$budget" "$epochs"; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPU_RUN_BUDGET_S and GPU_RUN_EPOCHS must be positive integers, got '$number'" >&2; exit 2; }
done
data_tgz=.device/cifar10-jpeg.tgz

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
SECONDS=0
failed=0

log() { echo "[gpu_run +${SECONDS}s] $*" | tee -a "$OUT/run.log"; }
left() { echo $((budget - SECONDS)); }
# run_step NAME LIMIT_SECONDS COMMAND...: SIGINT at the limit (pytest and the trainer stop cleanly
# and keep what they measured), SIGKILL 15 s later; output to the console and run.log.
run_step() {
  local name=$1 limit=$2
  shift 2
  if [ "$limit" -lt 20 ]; then
    log "SKIPPED $name: only ${limit}s of the budget left"
    failed=1
    return
  fi
  log "$name (limit ${limit}s): $*"
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/run.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    log "FAILED $name (exit $status$([ "$status" -eq 124 ] && echo ', time limit'))"
    failed=1
  else
    log "done $name"
  fi
}
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

log "mode: $([ "$dry" = 1 ] && echo 'dry run (CPU, tiny sizes)' || echo 'GPU run'); OUT=$OUT; budget ${budget}s"

# --- data -----------------------------------------------------------------------------------------
if [ "$dry" = 1 ]; then
  source_root=${RESNET_CIFAR_TEST_DATA:-$repo/../shared/data/cifar10-jpeg}
  if [ ! -d "$source_root/train" ] || [ ! -d "$source_root/test" ]; then
    echo "error: no CIFAR-10 image folders at $source_root (set RESNET_CIFAR_TEST_DATA)" >&2
    exit 2
  fi
  [ -f "$data_tgz" ] || log "note: a GPU run needs $data_tgz; make it with: tar czf $data_tgz -C ../shared/data cifar10-jpeg"
  # A few real images per class, linked (not copied) into a scratch folder of the same layout.
  data_root=$scratch/cifar10-jpeg
  for split_and_count in train:20 test:10; do
    split=${split_and_count%%:*}
    count=${split_and_count##*:}
    for class_dir in "$source_root/$split"/*/; do
      class=$(basename "$class_dir")
      mkdir -p "$data_root/$split/$class"
      find "$class_dir" -maxdepth 1 -type f -name '*.jpg' | sort | head -n "$count" |
        while read -r file; do ln -s "$file" "$data_root/$split/$class/"; done
    done
  done
  log "data: $(find "$data_root" -name '*.jpg' | wc -l) images linked from $source_root"
else
  if [ ! -f "$data_tgz" ]; then
    echo "error: $data_tgz is missing; make it with: tar czf $data_tgz -C ../shared/data cifar10-jpeg, and carry .device" >&2
    exit 2
  fi
  data_parent=/tmp/resnet-cifar-data
  data_root=$data_parent/cifar10-jpeg
  if [ ! -d "$data_root/test" ]; then  # a still-warm machine keeps it from an earlier call
    mkdir -p "$data_parent" && tar xzf "$data_tgz" -C "$data_parent" || { echo "error: cannot unpack $data_tgz" >&2; exit 2; }
  fi
  log "data: $(find "$data_root" -name '*.jpg' | wc -l) images in $data_root"
fi

# --- install (offline) ----------------------------------------------------------------------------
if compgen -G ".device/wheels/*.whl" > /dev/null; then
  site=/tmp/resnet-cifar-site
  if [ "$dry" = 1 ]; then
    log "wheels carried (a GPU run installs them into $site): $(ls .device/wheels)"
  else
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .device/wheels/*.whl \
      && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" && log "wheels installed into $site"
  fi
fi
if [ "$dry" = 0 ]; then
  if ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tee -a "$OUT/run.log"; then
    log "pip install -e . failed; using the checkout on PYTHONPATH (the library, not the CLI)"
  fi
fi
if ! "$PYTHON" -c "import resnet_cifar" 2> /dev/null; then
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- environment ----------------------------------------------------------------------------------
env_args=(--out "$OUT")
[ "$dry" = 0 ] && env_args+=(--require-cuda)
"$PYTHON" benchmarks/gpu_report.py env "${env_args[@]}" 2>&1 | tee -a "$OUT/run.log"
env_status=${PIPESTATUS[0]}
[ "$env_status" -eq 0 ] || { log "environment check failed (exit $env_status)"; exit "$env_status"; }
dali=0
"$PYTHON" -c "import nvidia.dali" 2> /dev/null && dali=1

# --- training ---------------------------------------------------------------------------------------
if [ "${GPU_RUN_SKIP_TRAIN:-0}" != 1 ]; then
  train_args=(--data-dir "$data_root" --out-json "$OUT/train.json" --preset "$preset" --loader "$loader")
  if [ "$dry" = 1 ]; then
    train_args+=(--device cpu --no-compile --epochs 2 --batch-size 16 --eval-batch-size 64 --limit-train 32 --limit-val 20 --warmup-steps 2)
    train_limit=$(min 120 "$(left)")
  else
    train_args+=(--device cuda --epochs "$epochs" --cache-dir /tmp/resnet-cifar-cache)
    if [ "${GPU_RUN_SKIP_BENCH:-0}" = 1 ]; then
      train_limit=$(($(left) - 20))
    else
      train_limit=$(min 300 $(($(left) - 150)))  # leave the benchmarks at least 150 s
    fi
    # A run split over consecutive calls (the long preset) keeps its checkpoints outside the
    # repository, where a carried path cannot replace them, and resumes from them.
    [ -n "${GPU_RUN_CHECKPOINT_DIR:-}" ] && train_args+=(--checkpoint-dir "$GPU_RUN_CHECKPOINT_DIR")
  fi
  # A clean stop (after the current step) 30 s before the hard limit.
  train_args+=(--max-wall-seconds $((train_limit > 60 ? train_limit - 30 : train_limit)))
  run_step "training" "$train_limit" "$PYTHON" benchmarks/gpu_train.py "${train_args[@]}"
fi

# --- benchmarks -------------------------------------------------------------------------------------
if [ "${GPU_RUN_SKIP_BENCH:-0}" != 1 ]; then
  export RESNET_CIFAR_TEST_DATA=$data_root
  pytest_args=(--benchmark-only -p no:cacheprovider -o addopts= -q)
  if [ "$dry" = 1 ]; then
    # Tiny and eager; the loader group needs all 50,000 images and is left out.
    export RESNET_CIFAR_BENCH_TRAIN_BATCH=2 RESNET_CIFAR_BENCH_INFER_BATCH=2 RESNET_CIFAR_BENCH_ROUNDS=2
    export RESNET_CIFAR_BENCH_SKIP_COMPILE=1
    groups=("train_step:test_train_step.py:baseline or amp_bf16_channels_last:90"
            "inference:test_inference.py:baseline or best:60")
  else
    loader_filter=""
    [ "$dali" = 1 ] || loader_filter="not dali"  # no DALI on the device unless carried in parts
    # The onnxruntime CPU benchmark is a CPU figure, and the device has no onnxruntime.
    groups=("train_step:test_train_step.py::240" "loader:test_loader.py:$loader_filter:120" "inference:test_inference.py:not onnxruntime:120")
  fi
  for entry in "${groups[@]}"; do
    IFS=: read -r group file filter cap <<< "$entry"
    select=()
    [ -n "$filter" ] && select=(-k "$filter")
    run_step "benchmarks: $group" "$(min "$cap" $(($(left) - 15)))" \
      "$PYTHON" -m pytest "benchmarks/$file" "${pytest_args[@]}" "${select[@]}" --benchmark-json "$OUT/bench_$group.json"
  done
fi

# --- goals ----------------------------------------------------------------------------------------
"$PYTHON" benchmarks/gpu_report.py goals --out "$OUT" 2>&1 | tee -a "$OUT/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
log "finished in ${SECONDS}s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$failed"
