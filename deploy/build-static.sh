#!/usr/bin/env bash
# Builds sessionward as a fully static Linux binary without Docker: the binary
# deploy/Dockerfile puts in its image (same target, same release profile,
# --locked), so CI can prove it builds, is static and runs.
#
#   deploy/build-static.sh                      # build; print the binary's path on stdout
#   deploy/build-static.sh run --config f.yaml  # build, then exec the binary with these arguments
#
# Cargo's output and every note go to stderr; stdout carries only the path (or
# whatever the binary prints when arguments are given).
#
# How (first that works, or SESSIONWARD_STATIC_METHOD=musl|gnu-static):
#   musl        <arch>-unknown-linux-musl, Rust's own static target and the one
#               the Dockerfile uses. Needs the target's std (`rustup target add`,
#               done here if missing) and a musl C compiler for the C parts
#               (bundled SQLite, ring, mimalloc): musl-gcc from Debian's
#               musl-tools, installed here with apt-get when run as root.
#               On a musl host (Alpine) the system cc is used as it is.
#   gnu-static  fallback: <arch>-unknown-linux-gnu with -C target-feature=+crt-static
#               (static glibc). It builds, links and runs, but it is NOT the
#               image's binary: static glibc resolves host names through NSS,
#               which needs glibc's shared libraries at run time, so upstream or
#               Redis *names* may not resolve in a scratch/distroless image.
#               Used only when the musl route is impossible; says so loudly.
#
# The target dir is cargo's usual one (CARGO_TARGET_DIR or ./target); the binary
# lands in <target-dir>/<triple>/release/sessionward. A cold build takes about
# 6 minutes on 2 cores (fat LTO, one codegen unit); a rebuild after a change to
# sessionward's own code about 2.
set -euo pipefail

caller_dir=$PWD # the binary runs from here (relative --config paths)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

note() { printf 'build-static: %s\n' "$*" >&2; }
die() { note "error: $*"; exit 1; }

command -v cargo >/dev/null || die "cargo not found"
arch=$(uname -m)
case "$arch" in
    x86_64 | aarch64) ;;
    *) die "unsupported architecture $arch (x86_64 and aarch64 only)" ;;
esac
musl_target="$arch-unknown-linux-musl"
gnu_target="$arch-unknown-linux-gnu"
host=$(rustc -vV | sed -n 's/^host: //p')

have_target() { # is the target's std installed?
    local sysroot
    sysroot=$(rustc --print sysroot)
    [[ -d "$sysroot/lib/rustlib/$1/lib" ]]
}

musl_cc() { # prints a C compiler for the musl target, or fails
    if [[ "$host" == *-linux-musl ]]; then
        echo "${CC:-cc}"
        return 0
    fi
    local c
    for c in "$arch-linux-musl-gcc" musl-gcc; do
        if command -v "$c" >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

try_musl() {
    if ! have_target "$musl_target"; then
        command -v rustup >/dev/null 2>&1 || { note "no $musl_target std and no rustup to add it"; return 1; }
        note "adding the $musl_target target: rustup target add $musl_target"
        rustup target add "$musl_target" >&2 || { note "rustup target add $musl_target failed"; return 1; }
    fi
    if ! musl_cc >/dev/null; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            note "no musl C compiler: apt-get install musl-tools"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y musl-tools >&2 ||
                { apt-get update >&2 && apt-get install -y musl-tools >&2; } ||
                { note "cannot install musl-tools"; return 1; }
        else
            note "no musl C compiler (musl-gcc): install musl-tools (Debian/Ubuntu) or musl-dev (Alpine)"
            return 1
        fi
    fi
    return 0
}

method=${SESSIONWARD_STATIC_METHOD:-auto}
case "$method" in
    auto)
        if try_musl; then
            method=musl
        else
            note "WARNING: the musl route is not available here; falling back to static glibc,"
            note "WARNING: which is NOT the binary the Dockerfile builds (see this script's header)"
            method=gnu-static
        fi
        ;;
    musl) try_musl || die "the musl route was asked for and is not available" ;;
    gnu-static) ;;
    *) die "SESSIONWARD_STATIC_METHOD must be auto, musl or gnu-static, not $method" ;;
esac

if [[ $method == musl ]]; then
    target=$musl_target
    cc=$(musl_cc)
    # cc-rs compiles the C parts with the musl compiler; the link is left to
    # rustc's default, which for the musl target adds Rust's own
    # self-contained crt objects and libc.a: the result is static-pie.
    tvar=${target//-/_}
    export "CC_$tvar=$cc"
    note "method: musl ($target, C compiler $cc)"
else
    target=$gnu_target
    have_target "$target" || die "no std for $target"
    # Per-target RUSTFLAGS: build scripts and proc macros (built for the host)
    # stay dynamic; only the final binary is crt-static.
    tvar=${target//-/_}
    export "CARGO_TARGET_${tvar^^}_RUSTFLAGS=-C target-feature=+crt-static"
    note "method: gnu-static ($target with -C target-feature=+crt-static; NOT the image's binary)"
fi

# A relative CARGO_TARGET_DIR means relative to where the script was started.
if [[ -n "${CARGO_TARGET_DIR:-}" && "$CARGO_TARGET_DIR" != /* ]]; then
    export CARGO_TARGET_DIR="$caller_dir/$CARGO_TARGET_DIR"
fi
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
note "cargo build --release --locked --target $target (target dir $target_dir)"
start=$(date +%s)
cargo build --release --locked --target "$target" >&2
note "built in $(($(date +%s) - start)) s"

bin="$target_dir/$target/release/sessionward"
[[ -x "$bin" ]] || die "no binary at $bin"
bin="$(cd "$(dirname "$bin")" && pwd)/sessionward"

# Static means: no program interpreter and no shared libraries needed.
static=no
if command -v readelf >/dev/null 2>&1; then
    if ! readelf -lW "$bin" | grep -q 'INTERP' && ! readelf -dW "$bin" | grep -q '(NEEDED)'; then
        static=yes
    fi
else
    ldd_out=$(ldd "$bin" 2>&1 || true)
    if grep -Eq 'not a dynamic executable|statically linked' <<<"$ldd_out"; then static=yes; fi
fi
[[ $static == yes ]] || die "$bin is not static: $(ldd "$bin" 2>&1 | head -5 | tr '\n' ' ')"
if command -v file >/dev/null 2>&1; then note "$(file -b "$bin")"; fi
note "static binary ($method): $bin, $(stat -c %s "$bin") bytes"

if [[ $# -gt 0 ]]; then
    cd "$caller_dir"
    exec "$bin" "$@"
fi
echo "$bin"
