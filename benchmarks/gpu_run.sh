#!/usr/bin/env bash
# The GPU run, in parts: each part is one device call of at most 8 minutes (GPU_RUN_BUDGET_S,
# default 480 s), every figure as JSON under $OUT. See CONTRIBUTING.md ("GPU checks") for the
# exact calls and docs/performance.md for the method and where the figures go.
#
#   GPU_RUN_PART=train bash benchmarks/gpu_run.sh    # on the device machine: needs .device/cifar10-jpeg.tgz and CUDA
#   GPU_RUN_PART=bench bash benchmarks/gpu_run.sh    # next, on the still-warm machine
#   GPU_RUN_PART=dali  bash benchmarks/gpu_run.sh    # if time is left and DALI was carried
#   GPU_RUN_PART=train bash benchmarks/gpu_run.sh --dry-run   # anywhere (CPU): tiny sizes, same steps, same JSON
#
# Every part: unpack the carried data -> install the project offline (and any wheels carried in
# .device/wheels) -> check packages and the GPU (env.json) -> its own step -> the goals judged from
# this call's files and the earlier parts' (goals.json). Everything printed also lands in run.log.
#   train: benchmarks/gpu_train.py times the user's command, `resnet-cifar train --amp --compile`
#          with the tensor loader, checkpoints and validation as a user gets them: --preset fast
#          --target-acc 0.94, the sync probe, then the default preset for what the budget allows
#          (train.json, sync_warnings.log). The training clock starts after compilation.
#   bench: the benchmark groups of GPU_RUN_GROUPS (default "train_step loader inference"), one
#          pytest run each at batch 512 (bench_<group>.json); the fp32 compiled train step is left
#          out on CUDA (its compilation costs the budget, and the goals compare with eager fp32).
#   dali:  the fast run again with --loader dali (train_dali.json); skipped without DALI's plugin.
# Each part copies its files to GPU_RUN_KEEP (default /tmp/resnet-cifar-gpu-run, which a warm
# machine keeps between calls), where the goals step of a later part finds them.
#
# Settings (environment): GPU_RUN_PART (required), GPU_RUN_BUDGET_S, GPU_RUN_GROUPS, GPU_RUN_KEEP
# (the dry run keeps nothing unless it is set), RESNET_CIFAR_TEST_DATA (the dry run's data,
# default ../shared/data/cifar10-jpeg), PYTHON (default python3).
# Exit status: 0 when every step succeeded, 1 when a step failed (later steps still ran), 2 for a
# bad argument or missing input, 3 when a needed package or the GPU is missing.
set -uo pipefail

usage="usage: GPU_RUN_PART=train|bench|dali bash benchmarks/gpu_run.sh [--dry-run]"
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
budget=${GPU_RUN_BUDGET_S:-480}
part=${GPU_RUN_PART:-}
[[ "$budget" =~ ^[1-9][0-9]*$ ]] || { echo "error: GPU_RUN_BUDGET_S must be a positive integer, got '$budget'" >&2; exit 2; }
case "$part" in
  train | bench | dali) ;;
  *) echo "error: GPU_RUN_PART must be train, bench or dali, got '$part'; $usage" >&2; exit 2 ;;
esac
if [ "$dry" = 1 ]; then
  # Tiny and eager; the loader group needs all 50,000 images and is left out unless asked for.
  groups_requested=${GPU_RUN_GROUPS:-train_step inference}
  keep=${GPU_RUN_KEEP:-}
else
  groups_requested=${GPU_RUN_GROUPS:-train_step loader inference}
  keep=${GPU_RUN_KEEP:-/tmp/resnet-cifar-gpu-run}
fi
for group in $groups_requested; do
  case "$group" in
    train_step | loader | inference) ;;
    *) echo "error: GPU_RUN_GROUPS takes train_step, loader and inference, got '$group'" >&2; exit 2 ;;
  esac
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

log "mode: $([ "$dry" = 1 ] && echo 'dry run (CPU, tiny sizes)' || echo 'GPU run'); part $part; OUT=$OUT; budget ${budget}s"

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

# --- the part's step ----------------------------------------------------------------------------
# The user's command writes a decoded-image cache; a warm machine keeps it in /tmp between parts.
[ "$dry" = 0 ] && export RESNET_CIFAR_CACHE=${RESNET_CIFAR_CACHE:-/tmp/resnet-cifar-cache}
train_args=(--data-dir "$data_root")
[ "$dry" = 1 ] && train_args+=(--dry-run --target-acc 0.1)  # tiny data: a target the plumbing can reach
case "$part" in
  train)
    limit=$(($(left) - 20))  # the goals step after it
    run_step "training (the user's command)" "$limit" "$PYTHON" benchmarks/gpu_train.py "${train_args[@]}" \
      --budget-s $((limit - 25)) --out-json "$OUT/train.json" --sync-log "$OUT/sync_warnings.log"
    ;;
  dali)
    limit=$(($(left) - 20))
    run_step "training with DALI (the user's command)" "$limit" "$PYTHON" benchmarks/gpu_train.py "${train_args[@]}" \
      --budget-s $((limit - 25)) --out-json "$OUT/train_dali.json" --runs fast --loader dali
    ;;
  bench)
    export RESNET_CIFAR_TEST_DATA=$data_root
    pytest_args=(--benchmark-only -p no:cacheprovider -o addopts= -q)
    if [ "$dry" = 1 ]; then
      export RESNET_CIFAR_BENCH_TRAIN_BATCH=2 RESNET_CIFAR_BENCH_INFER_BATCH=2 RESNET_CIFAR_BENCH_ROUNDS=2
      export RESNET_CIFAR_BENCH_SKIP_COMPILE=1
      train_step_filter="baseline or amp_bf16_channels_last"
      inference_filter="baseline or best"
      loader_filter="not dali"
      caps=(train_step:90 loader:120 inference:60)
    else
      # Every variant but the fp32 compiled one: "compile" without "amp" is that one alone.
      train_step_filter="not compile or amp"
      # onnxruntime's benchmark is a CPU figure, and the device has no onnxruntime.
      inference_filter="not onnxruntime"
      # The CPU baselines (ImageFolder, torchvision AutoAugment) are the CPU goals' references and
      # would take most of the group's time on the device: the GPU goal compares with training.
      loader_filter="not baseline and not torchvision_autoaugment"
      "$PYTHON" -c "from resnet_cifar.data.dali_loader import dali_available as a; raise SystemExit(0 if a() else 1)" \
        2> /dev/null || loader_filter="$loader_filter and not dali"
      caps=(train_step:210 loader:100 inference:120)
    fi
    for group in $groups_requested; do
      cap=120
      for entry in "${caps[@]}"; do [ "${entry%%:*}" = "$group" ] && cap=${entry##*:}; done
      filter_name=${group}_filter
      select=()
      [ -n "${!filter_name}" ] && select=(-k "${!filter_name}")
      run_step "benchmarks: $group" "$(min "$cap" $(($(left) - 20)))" \
        "$PYTHON" -m pytest "benchmarks/test_$group.py" "${pytest_args[@]}" "${select[@]}" --benchmark-json "$OUT/bench_$group.json"
    done
    ;;
esac

# --- keep this part's files for the later parts, then the goals ------------------------------------
earlier=()
if [ -n "$keep" ]; then
  mkdir -p "$keep" && for file in "$OUT"/train.json "$OUT"/train_dali.json "$OUT"/bench_*.json; do
    [ -f "$file" ] && cp "$file" "$keep/"
  done
  earlier=(--earlier "$keep")
fi
"$PYTHON" benchmarks/gpu_report.py goals --out "$OUT" "${earlier[@]}" 2>&1 | tee -a "$OUT/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
log "finished in ${SECONDS}s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$failed"
