#!/usr/bin/env bash
# Short fuzzing runs of every target in fuzz/ (cargo fuzz, libFuzzer): the
# cookie parser, the update-header parser with the session rules, the
# config loader and the HTTP/1 request framing check. Fails on the first
# crash, leak, timeout or out-of-memory, and says where the reproducer is.
# Runs on a clean clone; installs the nightly toolchain and cargo-fuzz when
# they are missing.
#
#   bash .ci/fuzz.sh                   10 s per target
#   FUZZ_SECONDS=300 bash .ci/fuzz.sh  longer, by hand
#   bash .ci/fuzz.sh cookie_header     one target
#
# The committed seeds in fuzz/corpus/<target>/ are read, never written: new
# inputs go to a scratch directory, so a run leaves the tree clean. To keep
# an input worth seeding with, copy it into fuzz/corpus/<target>/ by hand
# (small files, a few dozen per target at most).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

SECONDS_PER_TARGET=${FUZZ_SECONDS:-10}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
# Outside the clone, so that fresh CI clones on one machine reuse the
# sanitizer build of the whole dependency tree (minutes, cold).
TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/sessionward/fuzz-target}

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: $TOOLCHAIN"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
rustup run "$TOOLCHAIN" rustc --version

step "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$TOOLCHAIN" fuzz list --fuzz-dir fuzz)
fi

step "build ${targets[*]}"
build_start=$SECONDS
for target in "${targets[@]}"; do
  cargo "+$TOOLCHAIN" fuzz build --fuzz-dir fuzz --target-dir "$TARGET_DIR" "$target"
done
echo "built in $((SECONDS - build_start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  step "fuzz $target for ${SECONDS_PER_TARGET} s"
  seeds="fuzz/corpus/$target"
  [[ -d "$seeds" ]] || { echo "FAIL: no seed corpus $seeds" >&2; exit 1; }
  mkdir -p "$scratch/$target"
  dict=()
  [[ -f "fuzz/dict/$target.dict" ]] && dict=("-dict=fuzz/dict/$target.dict")
  # The first corpus directory receives new inputs; the committed seeds
  # come second and are only read.
  if ! cargo "+$TOOLCHAIN" fuzz run --fuzz-dir fuzz --target-dir "$TARGET_DIR" "$target" "$scratch/$target" "$seeds" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 "${dict[@]}"; then
    echo "FAIL: fuzz target $target crashed; the reproducer is in fuzz/artifacts/$target/" >&2
    echo "      replay it with: cargo +$TOOLCHAIN fuzz run --fuzz-dir fuzz $target fuzz/artifacts/$target/<file>" >&2
    exit 1
  fi
done

step "PASS: ${targets[*]} (${SECONDS_PER_TARGET} s each, $SECONDS s in all)"
