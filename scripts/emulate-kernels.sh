#!/usr/bin/env bash
# Build the CUDA kernels (kernels/*.cu) for the host with the emulator in kernels/emu and check
# every kernel against its CPU reference (kernels/emu/check.cpp): one line per case, then
# `N passed, M failed`; exits non-zero on any failure. Needs only a C++17 compiler (g++ or
# $CXX); no GPU, no CUDA toolkit. `cargo test` runs it (tests/emulate.rs).
#
#   scripts/emulate-kernels.sh [check options: --filter SUBSTR ... --seed N --quick]
#   scripts/emulate-kernels.sh --mutants    # each mutant kernel must fail its check
#
# EMU_THREADS: host threads that run blocks (default: all cores); EMU_SEED: replay a seed
# (default: a fresh one per run, printed); EMU_MUTANT_SEED: the mutants' seed (default 1);
# EMU_BUILD_DIR: where objects go (default: target/emulator).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
BUILD=${EMU_BUILD_DIR:-${CARGO_TARGET_DIR:-target}/emulator}
mkdir -p "$BUILD"
FLAGS=(-std=c++17 -O2 -g -Wall -Wno-unknown-pragmas -fno-strict-aliasing -fno-extern-tls-init
  -U_FORTIFY_SOURCE -DDEBERTA_EMULATE -Ikernels/emu -Ikernels)
HEADERS=(kernels/*.cuh kernels/emu/*.h)

# compile SRC into OBJ unless OBJ is newer than SRC, every header and this script
compile() {
  local src=$1 obj=$2 lang=${3:-c++} dep
  if [[ -f $obj ]]; then
    local stale=0
    for dep in "$src" "${HEADERS[@]}" "$0"; do [[ $dep -nt $obj ]] && stale=1; done
    [[ $stale == 0 ]] && return 0
  fi
  "$CXX" "${FLAGS[@]}" -x "$lang" -c "$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj"
}

KERNELS=()
for f in kernels/*.cu; do KERNELS+=("$(basename "$f" .cu)"); done

build() {
  local pids=() k
  compile kernels/emu/runtime.cpp "$BUILD/runtime.o" & pids+=($!)
  compile kernels/emu/check.cpp "$BUILD/check.o" & pids+=($!)
  for k in "${KERNELS[@]}"; do
    compile "kernels/$k.cu" "$BUILD/k_$k.o" & pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [[ $failed == 0 ]] || { echo "emulator build failed" >&2; exit 2; }
  local objs=("$BUILD/runtime.o" "$BUILD/check.o")
  for k in "${KERNELS[@]}"; do objs+=("$BUILD/k_$k.o"); done
  "$CXX" -o "$BUILD/check" "${objs[@]}" -pthread
}

# Mutants: NAME | FILE | OLD (exact text, must occur) | NEW | --filter of the cases to run.
# Each is the real source with one textual change, rebuilt and checked: it must fail.
MUTANTS=(
  "gemm_tc_no_barrier|gemm.cu|    __syncthreads();  // stage kt visible to all|    // (barrier removed)|gemm_bf16_f32_k8"
  "gemm_tc_cp_async_wait_one_stage_late|gemm.cu|cp_async_wait<STAGES - 2>();|cp_async_wait<STAGES - 1>();|gemm_f16_f16_k8"
  "gemm_tc_next_stage_copied_before_barrier|gemm.cu|    __syncthreads();  // stage kt visible to all; stage kt-1 fully consumed by all
    const int nxt = kt + STAGES - 1;
    if (nxt < nk) {
      tc_load_tile<T, K8, BM, THREADS>(As + (nxt % STAGES) * BM * TC_LD, A, M, K, bm, nxt * TC_BK);
      tc_load_tile<T, K8, BN, THREADS>(Bs + (nxt % STAGES) * BN * TC_LD, W, N, K, bn, nxt * TC_BK);
    }|    const int nxt = kt + STAGES - 1;
    if (nxt < nk) {
      tc_load_tile<T, K8, BM, THREADS>(As + (nxt % STAGES) * BM * TC_LD, A, M, K, bm, nxt * TC_BK);
      tc_load_tile<T, K8, BN, THREADS>(Bs + (nxt % STAGES) * BN * TC_LD, W, N, K, bn, nxt * TC_BK);
    }
    __syncthreads();  // (moved below the copies into stage kt-1's buffer)|gemm_f16_f16_k8"
  "gemm_simt_no_second_barrier|gemm.cu|acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();|acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }|gemm_simt_f32"
  "attention_v1_band_index_shifted|attention.cu|const int b = il - jl + (ATT_BKV - 1);|const int b = il - jl + ATT_BKV;|attention_f32_dpl2"
  "attention_v1_no_tile_barrier|attention.cu|    __syncthreads();  // the previous key tile is consumed|    // (barrier removed)|attention_f16_dpl1"
  "attention_v2_c2p_gather_shifted|attention_tc.cu|v += Cw[rl * A2_LDC + (rl - cl + A2_BKV - 1)];|v += Cw[rl * A2_LDC + (rl - cl + A2_BKV)];|attention_tc_f16"
  "attention_v2_no_scratch_barrier|attention_tc.cu|    __syncthreads();  // P (and C) written|    // (barrier removed)|attention_tc_bf16"
  "attention_v2_rows_not_16_byte_aligned|constants.cuh|#define A2_LDH 72|#define A2_LDH 68|attention_tc_f16"
  "attention_v2_async_no_end_barrier|attention_tc.cu|      __syncthreads();     // ... everyone's, and this tile's C, P, K, V reads are done|      // (barrier removed)|attention_tc_async_f16"
  "attention_v2_async_band_not_waited|attention_tc.cu|      cp_async_wait<0>();  // the next tile's|      cp_async_wait<1>();  // the next tile's|attention_tc_async_bf16"
  "attention_v2_async_kv_into_current_buffer|attention_tc.cu|T* Kn = Ks + ((it + 1) % NBUF) * A2_BKV * A2_LDH;|T* Kn = Ks + (it % NBUF) * A2_BKV * A2_LDH;|attention_tc_async_f16"
  "block_sum_no_reuse_barrier|common.cuh|  __syncthreads();  // scratch may still be read by a previous call|  // (barrier removed)|layernorm_f32"
  "pool_last_token_off_by_one|pooling.cu|case POOL_LAST: v = xs[(size_t)(n - 1) * H]; break;|case POOL_LAST: v = xs[(size_t)(n - 2) * H]; break;|pool"
)

run_mutants() {
  local missed=0 spec name file old new filter dir k objs out
  for spec in "${MUTANTS[@]}"; do
    IFS='|' read -r -d '' name file old new filter < <(printf '%s\0' "$spec") || true
    filter=${filter%$'\n'}
    dir="$BUILD/mutants/$name"
    rm -rf "$dir" && mkdir -p "$dir"
    cp kernels/*.cu kernels/*.cuh "$dir/"
    if ! OLD="$old" NEW="$new" python3 - "$dir/$file" <<'PY'
import os, sys
p = sys.argv[1]
s = open(p).read()
old, new = os.environ["OLD"], os.environ["NEW"]
if s.count(old) != 1:
    sys.exit(f"mutation text occurs {s.count(old)} times in {p} (expected once)")
open(p, "w").write(s.replace(old, new))
PY
    then
      echo "mutant $name: does not apply to kernels/$file (update MUTANTS)"; missed=$((missed + 1)); continue
    fi
    objs=("$BUILD/runtime.o" "$BUILD/check.o")
    for k in "${KERNELS[@]}"; do
      # the mutated kernel is rebuilt from the mutant directory, and every kernel when a header
      # is mutated (each includes common.cuh, which includes constants.cuh)
      if [[ $file == "$k.cu" || $file == *.cuh ]]; then
        local mflags=() f
        for f in "${FLAGS[@]}"; do [[ $f == -Ikernels ]] && mflags+=("-I$dir") || mflags+=("$f"); done
        "$CXX" "${mflags[@]}" -x c++ -c "$dir/$k.cu" -o "$dir/k_$k.o"
        objs+=("$dir/k_$k.o")
      else
        objs+=("$BUILD/k_$k.o")
      fi
    done
    "$CXX" -o "$dir/check" "${objs[@]}" -pthread
    out=$("$dir/check" --quick --stop-at-failure --seed "${EMU_MUTANT_SEED:-1}" --filter "$filter" 2>&1 || true)
    if grep -q '^FAIL' <<<"$out"; then
      echo "mutant $name: caught ($(tail -1 <<<"$out"))"
    else
      echo "mutant $name: MISSED ($(tail -1 <<<"$out"))"; missed=$((missed + 1))
    fi
  done
  echo "${#MUTANTS[@]} mutants, $missed missed"
  [[ $missed == 0 ]]
}

build
if [[ ${1:-} == --mutants ]]; then
  run_mutants
else
  exec "$BUILD/check" "$@"
fi
