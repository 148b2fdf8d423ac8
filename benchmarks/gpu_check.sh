#!/usr/bin/env bash
# Everything a lent GPU is used for, in one call (see GPU.md / docs/benchmarks.md):
# versions and nvidia-smi, an in-place build of the extension for the card, a canary of the fused
# kernel's mechanisms no GPU has run (benchmarks/gpu_canary.py: one that fails is switched off for
# the rest of the run), the CUDA tests,
# the gpu-canonical preset (issue 3's targets), the fused kernel's A/B timings and Nsight Compute
# profiles with the stall reasons (the default build and an A/B build, GPU_CHECK_AB_ENV; then the
# forward's stall samples by source line) and, if time is left, a gradient-penalty step (the
# double backward, benchmarks/penalty.py), a frozen input's backward (benchmarks/frozen_input.py)
# and the Gram path against fused and fft (benchmarks/gram.py), both into log.txt, and the default
# grid on CUDA.
# $OUT gets at most 8 files (the device tool returns no more): log.txt (everything printed,
# tables included), tests.txt, gpu-canonical.json, ncu.txt
# (Nsight Compute on the fused kernel), penalty.json, grid-cuda.json and the grid's two plots.
#
#   bash benchmarks/gpu_check.sh
#
# Environment: OUT (default /tmp/gpu_check), PYTHON (default python3), TORCH_CUDA_ARCH_LIST
# (default 9.0), MAX_JOBS (default: all cores), COMPACT_BILINEAR_COMMIT (the commit to record
# when the tree travels without .git), GPU_CHECK_TEST_ARGS (default: tests -v -k "cuda and not bad
# and not in_place"; the bad-argument and in-place tests then run on their own),
# GPU_CHECK_BUDGET_S (default 420: later steps are skipped once this much time has passed),
# GPU_CHECK_AB_ENV (e.g. "COMPACT_BILINEAR_OUTLINE_FFT_PASSES=1": a second copy of the tree is built
# with these variables beside the first, and fused_ab.py and Nsight Compute run on both builds),
# GPU_CHECK_AB_TREE (a tar of another commit's tree, made with `git archive -o .ab/base.tar <commit>`
# in a folder the device tool carries: that tree is the second build instead, with
# GPU_CHECK_AB_ENV's variables if any).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
exec > >(tee -a "$OUT/log.txt") 2>&1
cd "$(dirname "$0")/.."
# The extension is built in place: scripts run from other folders must find the package here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() { echo; echo "=== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }
left() { echo $((BUDGET - SECONDS)); }
status=0

step "device and versions"
nvidia-smi || true
$PY - <<'EOF' || true
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as e:
    print("cupy: not importable:", e)
EOF
(nvcc --version | tail -2) || true

AB_TREE=${GPU_CHECK_AB_TREE:-}
AB_LABEL="${AB_TREE:+the tree of $AB_TREE}${AB_TREE:+${GPU_CHECK_AB_ENV:+, }}${GPU_CHECK_AB_ENV:-}"
AB=${AB_LABEL:+/tmp/cb_ab}
step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS${AB:+; and $AB_LABEL in $AB})"
if [ -n "$AB" ]; then
    rm -rf "$AB" && mkdir -p "$AB"
    if [ -n "$AB_TREE" ]; then
        tar -x -f "$AB_TREE" -C "$AB" || { echo "cannot unpack GPU_CHECK_AB_TREE=$AB_TREE"; exit 1; }
    else
        tar -c --exclude=./build --exclude=./.git . | tar -x -C "$AB"
    fi
    # shellcheck disable=SC2086
    (cd "$AB" && env ${GPU_CHECK_AB_ENV:-} timeout 330 $PY setup.py build_ext --inplace >/tmp/gpu_check_build_ab.txt 2>&1) &
    ab_build=$!
fi
if ! timeout 330 $PY setup.py build_ext --inplace >/tmp/gpu_check_build.txt 2>&1; then
    # The compiler's errors, not just the Python traceback that ends the log.
    grep -A6 -E "error( |:)" /tmp/gpu_check_build.txt | head -80
    tail -5 /tmp/gpu_check_build.txt
    echo "BUILD FAILED"
    exit 1
fi
tail -3 /tmp/gpu_check_build.txt
$PY -c "import compact_bilinear as cb; print('compact_bilinear', cb.__version__, 'imported')" \
    || { echo "IMPORT FAILED"; exit 1; }
echo "built in ${SECONDS}s"

step "toolchain: compiler, the library's dependencies, libstdc++ code inside it"
$PY -c "import sysconfig as s; print('CXX', s.get_config_var('CXX'), '| LDSHARED', s.get_config_var('LDSHARED'))"
readelf -d compact_bilinear/_C*.so 2>/dev/null | grep NEEDED
echo "exported std::ostream/std::locale symbols (0 expected): $(nm -D --defined-only compact_bilinear/_C*.so 2>/dev/null | grep -cE '_ZNSo|_ZNSt6locale')"

step "exceptions raised by the extension, each case in its own process"
cat > /tmp/cb_raise.py <<'PYEOF'
# cpu: a CPU raise with CUDA untouched; cpu-after-cuda: the same after CUDA is initialised;
# cuda: the raise on CUDA tensors. A crash prints its native stack (torch's fatal-signal handler).
import sys, torch, compact_bilinear as cb
from compact_bilinear.reference import random_hashes
torch._C._set_print_stack_traces_on_fatal_signal(True)
mode = sys.argv[1]
if mode == "cpu-after-cuda":
    torch.ones(1, device="cuda").sum().item()
dev = "cuda" if mode == "cuda" else "cpu"
hs, ss = random_hashes((4, 6), 16, device=dev)
x, v = torch.randn(2, 4, device=dev), torch.randn(2, 6, device=dev)
bad = hs[0].clone()
bad[0] = 99
for what, hashes in (("hash length", [hs[0], hs[1][:-1]]), ("hash index out of range", [bad, hs[1]])):
    try:
        cb.compact_bilinear_pooling([x, v], hashes, ss, 16)
    except ValueError as e:
        print(mode, what, "-> ValueError raised cleanly:", str(e)[:100])
try:
    torch.ones(2, device=dev) + torch.ones(3, device=dev)  # an exception thrown by torch itself
except RuntimeError:
    print(mode, "torch's own RuntimeError raised cleanly")
PYEOF
crashed=0
for mode in cpu cpu-after-cuda cuda; do
    timeout 60 $PY /tmp/cb_raise.py $mode 2>&1 | head -40
    rc=$?; echo "exit status $rc on $mode"; [ "$rc" -ge 128 ] && crashed=1
done
# A crash gets a native backtrace (cuda-gdb debugs host code too; plain gdb is often missing).
GDB=$(command -v gdb || command -v cuda-gdb || true)
if [ "$crashed" = 1 ] && [ -n "$GDB" ]; then
    timeout 120 "$GDB" -q -batch -ex run -ex bt --args $PY /tmp/cb_raise.py cuda 2>&1 | grep -E "^#|signal|SIG" | head -40
fi

step "canary: the fused kernel's mechanisms no GPU has run yet, each on its own (benchmarks/gpu_canary.py)"
# One that hangs, crashes or computes wrong values is named, and its switch stays off for the rest
# of the run (the tests that assert it then fail too), so the tests and timings still come back.
timeout 240 $PY benchmarks/gpu_canary.py --env-out /tmp/gpu_canary.env || status=1
if [ -s /tmp/gpu_canary.env ]; then
    # shellcheck disable=SC1091
    . /tmp/gpu_canary.env
    echo "CANARY: the rest of this run goes without: $(sed 's/^export //' /tmp/gpu_canary.env | tr '\n' ' ')"
fi

step "CUDA tests"
# shellcheck disable=SC2086
# The whole log goes to $OUT (a crash's faulthandler trace names the test); the tail to the terminal.
# Bad-argument tests run last and on their own, so a crash there cannot hide the others.
timeout 150 $PY -m pytest ${GPU_CHECK_TEST_ARGS:-tests -v -k "cuda and not bad and not in_place"} >"$OUT/tests.txt" 2>&1
rc=$?
timeout 60 $PY -m pytest tests -v -k "cuda and (bad or in_place)" >>"$OUT/tests.txt" 2>&1 || rc=$?
tail -30 "$OUT/tests.txt"
if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then echo "TESTS FAILED (rc=$rc)"; status=1; fi

# The A/B build went on beside the checks and tests above (their steps time nothing); the timings
# below wait for it, so no compiler shares the CPUs with them.
if [ -n "$AB" ]; then
    if wait "$ab_build"; then
        echo "A/B build ($AB_LABEL), ready at ${SECONDS}s: $(tail -1 /tmp/gpu_check_build_ab.txt | cut -c1-100)"
    else
        grep -A6 -E "error( |:)" /tmp/gpu_check_build_ab.txt | head -40
        echo "A/B BUILD FAILED ($AB_LABEL)"
        AB=
    fi
fi

step "host time per call at a tiny size (benchmarks/host_overhead.py)"
timeout 60 $PY benchmarks/host_overhead.py --device cuda

step "per-kernel device time (torch.profiler)"
timeout 90 $PY benchmarks/profile_kernels.py 2>&1 | grep -v Warning

step "benchmark: gpu-canonical"
timeout 180 $PY -m benchmarks --preset gpu-canonical --no-progress \
    --results-dir /tmp/gpu_check_canonical --out "$OUT/gpu-canonical.json" \
    || { echo "gpu-canonical FAILED"; status=1; }

step "A/B: the fused kernel's schedules side by side (benchmarks/fused_ab.py)"
timeout 120 $PY benchmarks/fused_ab.py || { echo "fused_ab FAILED"; status=1; }
if [ -n "$AB" ]; then
    echo "--- the same, A/B build: $AB_LABEL"
    PYTHONPATH="$AB" timeout 120 $PY "$AB/benchmarks/fused_ab.py" || { echo "fused_ab (A/B build) FAILED"; status=1; }
fi

step "Nsight Compute: the fused kernel's six canonical launches (benchmarks/ncu_cases.py)"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
    # --clock-control none: measure the card as found (never lock its clocks). The default build,
    # then the A/B build if there is one; then the default build's stall reasons (raw metrics of
    # the warp-state section: cycles per issued instruction spent in each stall).
    profile=("$NCU" --clock-control none -k regex:fused_kernel)
    ncu_sections() {
        timeout 150 "${profile[@]}" -c 6 \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
            --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section MemoryWorkloadAnalysis_Tables \
            --metrics l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,smsp__inst_executed_op_shared_ld.sum,smsp__inst_executed_op_shared_st.sum,smsp__inst_executed_op_local_ld.sum,smsp__inst_executed_op_local_st.sum,smsp__inst_executed.sum \
            $PY "$1/benchmarks/ncu_cases.py" >>"$OUT/ncu.txt" 2>&1 || echo "ncu exited $?"
    }
    echo "##### default build" >>"$OUT/ncu.txt"
    ncu_sections .
    if [ "$(left)" -gt 40 ]; then
        # The backward with an NCHW gradient and NCHW maps, their rows read 8 at a time by clusters
        # of blocks and the maps' gradients written so; the maps' rows one by one; the gradients'
        # writes one by one; all one by one (no clusters): kernel times side by side, the launch's
        # cluster size (docs/benchmarks.md, "What the next GPU run has to answer", items 10-12).
        for stage in "1 1 1" "1 0 1" "1 1 0" "0 0 0"; do
            [ "$(left)" -gt 30 ] || break
            read -r sg si sdx <<<"$stage"
            # Not what the canary switched off.
            [ "$sg$si$sdx" = "${COMPACT_BILINEAR_STAGE_GRAD:-$sg}${COMPACT_BILINEAR_STAGE_INPUTS:-$si}${COMPACT_BILINEAR_STAGE_INPUT_GRADS:-$sdx}" ] \
                || continue
            echo "##### default build, NCHW gradient, COMPACT_BILINEAR_STAGE_GRAD=$sg COMPACT_BILINEAR_STAGE_INPUTS=$si" \
                "COMPACT_BILINEAR_STAGE_INPUT_GRADS=$sdx" >>"$OUT/ncu.txt"
            COMPACT_BILINEAR_STAGE_GRAD=$sg COMPACT_BILINEAR_STAGE_INPUTS=$si COMPACT_BILINEAR_STAGE_INPUT_GRADS=$sdx \
                timeout 60 "${profile[@]}" -c 2 --section SpeedOfLight --section LaunchStats \
                $PY benchmarks/ncu_cases.py --nchw >>"$OUT/ncu.txt" 2>&1 || echo "ncu (NCHW gradient) exited $?"
        done
    fi
    if [ -n "$AB" ] && [ "$(left)" -gt 45 ]; then
        echo "##### A/B build: $AB_LABEL" >>"$OUT/ncu.txt"
        PYTHONPATH="$AB" ncu_sections "$AB"
    fi
    stall_reasons() {
        timeout 100 "${profile[@]}" -c 6 --section WarpStateStats --page raw \
            $PY benchmarks/ncu_cases.py 2>&1 | grep -E "fused_kernel|issue_stalled.*per_issue_active|rel err" \
            >>"$OUT/ncu.txt" || echo "ncu (stall reasons) exited $?"
    }
    if [ "$(left)" -gt 30 ]; then
        echo "##### default build: stall reasons" >>"$OUT/ncu.txt"
        stall_reasons
    fi
    if [ "$(left)" -gt 30 ]; then
        # The forward's prefetch of the next gather's values against none: what it does to the
        # long-scoreboard stalls (docs/benchmarks.md, "What the next GPU run has to answer", item 8).
        echo "##### default build, COMPACT_BILINEAR_PREFETCH=0: stall reasons" >>"$OUT/ncu.txt"
        COMPACT_BILINEAR_PREFETCH=0 stall_reasons
    fi
    if [ "$(left)" -gt 30 ]; then
        # Where the canonical forward's warps stall and what they issue, by source line (the build
        # has -lineinfo).
        echo "##### default build: the canonical forward's stall samples and instructions by source line" >>"$OUT/ncu.txt"
        timeout 120 "${profile[@]}" -c 1 --section SourceCounters \
            --import-source yes -f -o /tmp/ncu_source $PY benchmarks/ncu_cases.py >/dev/null 2>&1 \
            && timeout 60 "$NCU" --import /tmp/ncu_source.ncu-rep --page source --csv --print-source cuda \
                >/tmp/ncu_source.csv 2>&1
        $PY benchmarks/ncu_source_top.py /tmp/ncu_source.csv >>"$OUT/ncu.txt" 2>&1 || echo "no source-line profile"
    fi
    grep -E "#####|fused_kernel|Duration|Hit Rate|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Memory Throughput|Compute \(SM\)|wavefronts_mem_shared|bank_conflicts|op_local|smsp__inst_executed.sum|rel err|Stall|Warp Cycles Per Issued|issue_stalled|warp stall samples|warp instructions executed|^ +[0-9]+ +[0-9.]+%  " "$OUT/ncu.txt" | head -330
else
    echo "no ncu on this machine"
fi

if [ "$(left)" -gt 60 ]; then
    step "gradient-penalty step: the double backward, library vs reference (benchmarks/penalty.py)"
    timeout 60 $PY -m benchmarks.penalty --device cuda --json "$OUT/penalty.json" 2>/dev/null \
        || { echo "penalty FAILED"; status=1; }
fi

if [ "$(left)" -gt 45 ]; then
    step "a frozen input's backward, fused and fft: 7x7 map x vector, B = 32, C = 1024 x 2, d = 8192 (benchmarks/frozen_input.py)"
    for algo in fused fft; do
        timeout 20 $PY -m benchmarks.frozen_input --device cuda --batch 32 --channels 1024 --side 7 --d 8192 \
            --algorithm $algo 2>/dev/null || { echo "frozen_input $algo FAILED"; status=1; }
    done
fi

if [ "$(left)" -gt 40 ]; then
    step "the Gram path against fused and fft, pooled (benchmarks/gram.py; not in 'auto' on CUDA until timed)"
    for dt in float32 bfloat16; do
        timeout 20 $PY -m benchmarks.gram --device cuda --dtype $dt 2>/dev/null || { echo "gram $dt FAILED"; status=1; }
    done
fi

if [ "$(left)" -gt 90 ]; then
    step "benchmark: default grid on CUDA ($(left)s left)"
    timeout "$(left)" $PY -m benchmarks --device cuda --no-progress \
        --results-dir /tmp/gpu_check_grid --out "$OUT/grid-cuda.json" \
        || { echo "grid FAILED or timed out"; status=1; }
    cp /tmp/gpu_check_grid/default_cuda_vs_d.png /tmp/gpu_check_grid/default_cuda_vs_rows.png \
        "$OUT/" 2>/dev/null || true
else
    step "skipping the default grid: $(left)s left of ${BUDGET}s"
fi

step "done (status $status)"
ls -la "$OUT"
exit $status
