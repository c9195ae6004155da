#!/usr/bin/env bash
# Fills the git-ignored .device/ with everything the GPU run's device calls carry (run it here,
# where the package registries answer; the device reaches none):
#
#   .device/cifar10-jpeg.tgz   the real images (tar czf of ../shared/data/cifar10-jpeg, ~20 MB)
#   .device/wheels/*.whl       CPython 3.12 manylinux x86_64 wheels of every runtime dependency of
#                              the plan's steps that the device lacks, and of what those need
#
# Which wheels: pyproject's dependencies as they resolve on the device, less those no step imports,
# plus the benchmarks' own (benchmarks/device_env.py), against the device's package list
# (benchmarks/device_packages.txt, with its source and date). Then the wheels' own requirements,
# until nothing the device lacks is left out. Everything must fit what one call carries with the
# tree: 64 MiB.
#
#   bash benchmarks/gpu_prepare.sh
# Settings: GPU_RUN_DEVICE_DIR (default .device), RESNET_CIFAR_TEST_DATA (the images, default
# ../shared/data/cifar10-jpeg). Exit status: 0 ready, 1 a download failed or it is too big, 2 no images.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
device_dir=${GPU_RUN_DEVICE_DIR:-.device}
source=${RESNET_CIFAR_TEST_DATA:-$repo/../shared/data/cifar10-jpeg}
limit_bytes=$((64 * 1024 * 1024))
if [ ! -d "$source/train" ] || [ ! -d "$source/test" ]; then
  echo "error: no CIFAR-10 image folders (train/, test/) at $source (set RESNET_CIFAR_TEST_DATA)" >&2
  exit 2
fi
mkdir -p "$device_dir" || exit 1

# --- the data archive: its top folder is cifar10-jpeg, whatever the source folder is called ----------
archive=$device_dir/cifar10-jpeg.tgz
if [ ! -f "$archive" ] || [ -n "$(find -L "$source" -newer "$archive" -print -quit)" ]; then
  source_parent=$(cd "$source/.." && pwd)
  name=$(basename "$source")
  echo "packing $source into $archive"
  # -h: a folder of links (a test's subset) packs the images themselves.
  if ! tar czhf "$archive.tmp" -C "$source_parent" --transform "s,^$name,cifar10-jpeg," "$name"; then
    rm -f "$archive.tmp"
    echo "error: could not pack $source into $archive" >&2
    exit 1
  fi
  mv "$archive.tmp" "$archive"
fi

# --- the wheels -----------------------------------------------------------------------------------
wheels=$device_dir/wheels
rm -rf "$wheels" && mkdir -p "$wheels" || exit 1
download() {  # NAME[SPECIFIER]: the newest matching wheel for the device's interpreter and platform
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$wheels" "$1"
}
wanted=$(python3 benchmarks/device_env.py missing) || exit 1
for round in 1 2 3 4 5; do
  [ -n "$wanted" ] || break
  while read -r requirement; do
    echo "wheel for $requirement (the device lacks it)"
    download "$requirement" || { echo "error: no CPython 3.12 manylinux x86_64 wheel of $requirement" >&2; exit 1; }
  done <<< "$wanted"
  # What the downloaded wheels need that neither the device nor the wheels have.
  wanted=$(python3 benchmarks/device_env.py closure "$wheels"/*.whl) || exit 1
  [ "$round" -lt 5 ] || { echo "error: the wheels' requirements did not close after 5 rounds: $wanted" >&2; exit 1; }
done

# --- what a call carries --------------------------------------------------------------------------
device_bytes=$(du -sbL "$device_dir" | cut -f1)
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard 2>/dev/null || true) | xargs -0 -r du -cbL 2>/dev/null | tail -n 1 | cut -f1)
total=$((device_bytes + ${tree_bytes:-0}))
echo "$device_dir: $(ls "$wheels" | wc -l) wheel(s) [$(ls "$wheels" | tr '\n' ' ')], archive $(du -h "$archive" | cut -f1); with the tree $((total / 1024 / 1024)) MiB of 64"
if [ "$total" -gt "$limit_bytes" ]; then
  echo "error: $device_dir and the tree come to $total bytes, over the 64 MiB a device call carries" >&2
  exit 1
fi
