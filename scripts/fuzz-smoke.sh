#!/usr/bin/env bash
# Build the fuzz targets in fuzz/ and run each one for a bounded time over its committed corpus
# (fuzz/corpus/<target>/), failing on the first crash, timeout or out-of-memory. The stable
# toolchain is enough: the targets are built with plain cargo and the coverage flags that
# `cargo fuzz build --release --debug-assertions --sanitizer none` passes (no cargo-fuzz needed,
# nothing to install besides the C++ compiler libfuzzer-sys builds libFuzzer with).
#
#   scripts/fuzz-smoke.sh                 # every target, FUZZ_SECONDS (default 30) each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh http_bodies
#
# New inputs found during the run go to a scratch folder, not the corpus: the committed corpus
# only changes by hand (scripts/fuzz-smoke.sh --merge adds what a run found, minimized).
# A crashing input is written to fuzz/artifacts/<target>/ and printed as base64.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-30}
RSS_MB=${FUZZ_RSS_MB:-2048}
TIMEOUT_S=${FUZZ_TIMEOUT:-10}
MERGE=0
if [[ ${1:-} == --merge ]]; then
    MERGE=1
    shift
fi
ALL=(safetensors_header pytorch_zip config_resolution http_bodies)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# As cargo-fuzz 0.13 sets them; `--target` keeps them off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
cargo build --manifest-path fuzz/Cargo.toml --locked --release --target "$TRIPLE" "${bins[@]}"

status=0
for t in "${TARGETS[@]}"; do
    bin=${CARGO_TARGET_DIR:-fuzz/target}/$TRIPLE/release/$t
    corpus=fuzz/corpus/$t
    scratch=$(mktemp -d)
    mkdir -p "fuzz/artifacts/$t"
    echo "== $t: ${SECONDS_EACH}s over $(find "$corpus" -type f | wc -l) corpus inputs"
    if ! "$bin" "$scratch" "$corpus" -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_MB" \
        -timeout="$TIMEOUT_S" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        2>"$scratch.log"; then
        status=1
        grep -m1 -A1 'panicked at' "$scratch.log" || true
        grep -v -E '^ +(at |[0-9]+: )' "$scratch.log" | tail -n 15
        for a in "fuzz/artifacts/$t"/*; do
            [[ -f $a ]] || continue
            echo "-- $a (base64):"
            base64 -w 0 "$a" | head -c 4096
            echo
        done
    else
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)' \
            "$scratch.log" || true
    fi
    if [[ $MERGE == 1 ]]; then
        "$bin" -merge=1 "$corpus" "$scratch" -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT_S" \
            2>/dev/null
    fi
    rm -rf "$scratch" "$scratch.log"
done
if [[ $status != 0 ]]; then
    echo "fuzz smoke: a target crashed (inputs in fuzz/artifacts/)" >&2
fi
exit $status
