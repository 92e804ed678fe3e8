#!/usr/bin/env bash
# Cross-build the LUTHAM kernel library and lutham_runner for aarch64 Linux with Debian's
# aarch64-linux-gnu-g++, against the executorch aarch64 wheel's C++ runtime. The same
# Makefile, sources and build_flags.txt as the native build; only the compiler and the
# executorch root change (the x86-64-v3 clones of kernel/simd.h are x86-only, so the hot
# loops compile once for armv8-a: NEON).
#
#   bash .ci/setup_aarch64                      # toolchain, qemu-user, the aarch64 runtime
#   bash lutham/cross/build_aarch64.sh [OUT]    # OUT: default lutham/build/aarch64 (git-ignored)
#   qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=$ET/lib:OUT \
#       OUT/lutham_runner model.pte input.txt
#
# EXECUTORCH_ROOT (the unpacked wheel's executorch/ directory) defaults to where
# .ci/setup_aarch64 puts it; CROSS_CXX defaults to aarch64-linux-gnu-g++. Prints the
# executorch root on the last line (the runner's RUNPATH points there too).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"      # lutham/
out="$(mkdir -p "${1:-$here/build/aarch64}" && cd "${1:-$here/build/aarch64}" && pwd)"
cxx="${CROSS_CXX:-aarch64-linux-gnu-g++}"
if [[ -z "${EXECUTORCH_ROOT:-}" ]]; then
    py="$here/../.venv/bin/python"
    [[ -x "$py" ]] || py=python3
    version="$("$py" -c 'from importlib import metadata; print(metadata.version("executorch"))' \
        2>/dev/null || echo 1.5.1)"
    home=~  # $HOME, or the password database's entry when HOME is unset
    EXECUTORCH_ROOT="${SHAREKAN_AARCH64_EXECUTORCH:-$home/.cache/sharekan/aarch64/executorch-$version}/executorch"
fi
if ! command -v "$cxx" >/dev/null 2>&1 || [[ ! -f "$EXECUTORCH_ROOT/lib/libexecutorch.so" ]]; then
    echo "build_aarch64: needs $cxx and the executorch aarch64 runtime at $EXECUTORCH_ROOT;" \
         "run: bash .ci/setup_aarch64" >&2
    exit 1
fi
# rebuilt every time (a few seconds): make's timestamps cannot tell a changed EXECUTORCH_ROOT
rm -f "$out/libsharekan_lutham.so" "$out/lutham_runner"
make -s -C "$here" CXX="$cxx" EXECUTORCH_ROOT="$EXECUTORCH_ROOT" BUILD="$out" \
    "$out/libsharekan_lutham.so" "$out/lutham_runner"
echo "$EXECUTORCH_ROOT"
