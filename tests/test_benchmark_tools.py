"""The benchmark tools: the verdict on issue 2's CPU targets, the shared-memory bank model, the ptxas report."""
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import cases as C
from benchmarks.measure import Result
from benchmarks.run import cpu_targets


def _round(speedups, ref_s=1.0):
    """Results of one round whose fft fwd+bwd is `speedups[tag]` times faster than the composite."""
    timed, _ = C.preset_cpu_targets()
    out = []
    for case, tag in zip(timed, "abc"):
        out.append(Result(case=case, impl="reference", fwdbwd={"median_s": ref_s}))
        out.append(Result(case=case, impl="fft", fwdbwd={"median_s": ref_s / speedups[tag]}))
    return out


def _memory(ref_bytes, lib_bytes):
    _, (case,) = C.preset_cpu_targets()
    return [Result(case=case, impl="reference", mem_fwdbwd=ref_bytes), Result(case=case, impl="fft", mem_fwdbwd=lib_bytes)]


def test_cpu_targets_take_the_median_round():
    rounds = [_round({"a": 2.0, "b": 1.0, "c": 4.0}),   # geomean 2.0
              _round({"a": 1.0, "b": 0.5, "c": 2.0}),   # geomean 1.0
              _round({"a": 1.5, "b": 1.2, "c": 3.0})]   # geomean 1.73
    mem = _memory(400e6, 80e6)
    speed, memory = cpu_targets(rounds, sum(rounds, []) + mem)[:2]
    assert math.isclose(speed["value"], (1.5 * 1.2 * 3.0) ** (1 / 3))
    assert speed["pass"] is True and not speed["informational"]
    assert "2.00x" in speed["detail"] and "1.00x" in speed["detail"]
    assert math.isclose(memory["value"], 0.2) and memory["pass"] is True


def test_cpu_targets_fail_below_the_threshold_and_without_every_case():
    rounds = [_round({"a": 1.2, "b": 1.2, "c": 1.2})] * 3
    assert cpu_targets(rounds, sum(rounds, []) + _memory(400e6, 300e6))[0]["pass"] is False
    assert cpu_targets(rounds, sum(rounds, []) + _memory(400e6, 300e6))[1]["pass"] is False
    incomplete = [r[:-1] for r in rounds]  # case (c) has no fft result
    assert cpu_targets(incomplete, sum(incomplete, []))[0]["value"] is None


def test_smem_model_counts_bank_conflicts():
    """8-byte values, 32 four-byte banks: 32 consecutive values need 2 wavefronts; values 16 apart
    (128 bytes) all fall in banks 0 and 1, 32 wavefronts; the padding i + i/16 spreads them out."""
    from benchmarks.smem_model import forward_row, wavefronts

    assert wavefronts(range(32)) == 2
    assert wavefronts([16 * t for t in range(32)]) == 32
    assert wavefronts([16 * t + t for t in range(32)]) == 2
    # The layouts the kernel has had, at d = 1024: each step strictly fewer wavefronts per row.
    totals = [sum(forward_row(1024, layout).values()) for layout in ("before", "padded", "pairs")]
    assert totals[0] > totals[1] > totals[2]


def test_smem_model_radix8_needs_fewer_wavefronts_than_radix4():
    from benchmarks.smem_model import forward_row

    assert sum(forward_row(8192, "radix-8").values()) < sum(forward_row(8192, "pairs").values())


@pytest.mark.parametrize("max_bits", [3, 5])
def test_fft_schedule_is_free_of_bank_conflicts(max_bits):
    """fused.h's Schedule (mirrored by smem_model.schedule) orders passes so that, in the padded
    layout, every pass of every supported size moves Z at the ideal rate: n/16 wavefronts per trip
    (a read and a write per pass). The passes are as few as the radix allows, and the plain order
    (largest passes first) would not be conflict-free: radix-4 at span 4, or radix-32 below span 16.
    One exception: n = 1024 in two radix-32 passes, one of which must take span 1; its conflicts
    cost what a third pass would."""
    from benchmarks.smem_model import pass_costs, schedule

    pos = lambda i: i + (i >> 4)  # noqa: E731
    for log2n in range(10, 15):  # from n = 1024 on, every pass has at least a warp of butterflies
        n = 1 << log2n
        sched = schedule(log2n, max_bits)
        assert sum(sched) == log2n and max(sched) <= max_bits and len(sched) == -(-log2n // max_bits)
        costs = pass_costs(n, pos, sched)
        if sched == [5, 5]:
            assert costs == [n // 8, n // 4] and sum(costs) == sum(pass_costs(n, pos, [4, 3, 3]))
        else:
            assert costs == [n // 8] * len(sched), (log2n, sched)
    assert schedule(13, 5) == [5, 4, 4] and schedule(13, 3) == [2, 2, 3, 3, 3]
    assert pass_costs(8192, pos, [3, 3, 3, 2, 2]) != [1024] * 5
    assert pass_costs(8192, pos, [4, 4, 5]) != [1024] * 3


def test_smem_model_radix32_needs_fewer_wavefronts_than_radix8():
    """The canonical row: 9734 wavefronts with radix-8 passes (commit 033ab34), 9222 when the last
    inverse pass writes the output itself, 6150 with passes up to radix 32."""
    from benchmarks.smem_model import forward_row

    totals = [sum(forward_row(8192, layout).values()) for layout in ("radix-8", "radix-8s", "radix-32")]
    assert totals == [9734, 9222, 6150]


def test_smem_model_backward_row():
    """The backward row of two maps: three transforms (gradient, sketches, inverse), each 5120
    wavefronts in radix-8 passes and 3072 in passes up to radix 32; the gradient row read by the
    first pass saves its copy into Z (512) and half the first pass (512)."""
    from benchmarks.smem_model import backward_row

    r8, r8s, r32 = (backward_row(8192, layout) for layout in ("radix-8", "radix-8s", "radix-32"))
    assert r8["sketch FFT"] == r8["inverse FFT"] == 5120 and r32["sketch FFT"] == r32["inverse FFT"] == 3072
    assert r8["gradient FFT"] + r8["gradient into Z"] - r8s["gradient FFT"] == 1024
    assert sum(r8.values()) > sum(r8s.values()) > sum(r32.values()) == 11275


def test_smem_model_backward_half_length_gradient_transform():
    """A real gradient row through a d/2-point transform moves Z half as often as through a d-point
    one (4096 points in three passes of 16, each 256 wavefronts to load and 256 to store, less the
    first pass's loads, which read global memory), and its split costs no more than the d-point
    transform's; the other phases are the same."""
    from benchmarks.smem_model import backward_row

    r32, r32h = backward_row(8192, "radix-32"), backward_row(8192, "radix-32h")
    assert r32h["gradient FFT"] * 2 == r32["gradient FFT"] == 2560
    assert r32h["gradient split"] <= r32["gradient split"]
    assert {k: v for k, v in r32h.items() if "gradient" not in k} == {k: v for k, v in r32.items() if "gradient" not in k}
    assert backward_row(2, "radix-32h")["gradient FFT"] > 0  # d = 2: a one-point transform still loads and stores


def test_plots_keep_one_colour_per_implementation(tmp_path, monkeypatch):
    """cupy has a forward line but no forward+backward one: the other implementations must keep
    their colours from panel to panel anyway."""
    import matplotlib.figure

    from benchmarks.report import plots

    seen = {}

    def capture(fig, path, **kwargs):
        for ax in fig.axes:
            for line in ax.lines:
                seen.setdefault(line.get_label(), set()).add(line.get_color())

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    results = []
    for d in (1024, 2048):
        case = C._vec(64, 512, d, series=("d",))
        results += [
            Result(case=case, impl="reference", fwd={"median_s": 1.0}, fwdbwd={"median_s": 2.0}, mem_fwdbwd=1e6),
            Result(case=case, impl="cupy", fwd={"median_s": 1.5}),
            Result(case=case, impl="fft", fwd={"median_s": 0.5}, fwdbwd={"median_s": 1.0}, mem_fwdbwd=5e5),
        ]
    plots(results, tmp_path, "test device", "t")
    assert set(seen) == {"reference", "cupy", "fft"}
    assert all(len(colours) == 1 for colours in seen.values()), seen


PTXAS_LOG = """\
ptxas info    : Compiling entry function '_ZN16compact_bilinear12fused_detail12fused_kernelIffLNS_5fused5PhaseE2ELi5ELb0EEEvNS2_4ArgsIT_T0_EEllPN3c107complexIS5_EE' for 'sm_90'
ptxas info    : Function properties for _ZN16compact_bilinear12fused_detail12fused_kernelIffLNS_5fused5PhaseE2ELi5ELb0EEEvNS2_4ArgsIT_T0_EEllPN3c107complexIS5_EE
    384 bytes stack frame, 568 bytes spill stores, 796 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 384 bytes cumulative stack size
ptxas info    : Compiling entry function '_ZN16compact_bilinear12fused_detail12fused_kernelIffLNS_5fused5PhaseE1ELi3ELb1EEEvNS2_4ArgsIT_T0_EEllPN3c107complexIS5_EE' for 'sm_90'
ptxas info    : Function properties for _ZN16compact_bilinear12fused_detail12fused_kernelIffLNS_5fused5PhaseE1ELi3ELb1EEEvNS2_4ArgsIT_T0_EEllPN3c107complexIS5_EE
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers
ptxas info    : Compiling entry function '_ZN16compact_bilinear12_GLOBAL__N_113sketch_kernelIffEEvPKT0_lllllPKlS6_PKT_lPS7_' for 'sm_90'
ptxas info    : Used 30 registers, used 0 barriers
"""


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) reads the kernels' names")
def test_ptxas_report_reads_the_fused_kernels_of_a_ptxas_log():
    """An excerpt of `nvcc -Xptxas -v` output: one line per fused kernel (others left out), with
    the phase, radix and where its slots are from its template arguments and the figures from its
    own lines."""
    from benchmarks.ptxas_report import parse

    assert parse(PTXAS_LOG) == [("float", "float", "backward", 32, "shared", 128, 384, 568),
                                ("float", "float", "forward", 8, "global", 64, 0, 0)]


SASS_LISTING = """
	code for sm_90
		Function : _Z11pass_kernelILi5ELi16ELb0ELi2EEvPKN3c107complexIfEEii
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
                                                                                 /* 0x000fe20000000800 */
        /*0010*/                   S2R R5, SR_TID.X ;                            /* 0x0000000000057919 */
        /*0020*/               @P0 BRA 0x40 ;                                    /* 0x0000000000000947 */
        /*0030*/                   LDS.64 R36, [R12+0x88] ;                      /* 0x0000880c0c247984 */
        /*0040*/                   EXIT ;                                        /* 0x000000000000794d */
        /*0050*/                   BRA 0x50;                                     /* 0xfffffffc00fc7947 */
        /*0060*/                   NOP;                                          /* 0x0000000000007918 */
		Function : _Z11pass_kernelILi5ELi32ELb1ELi1EEvPKN3c107complexIfEEii
        /*0000*/                   EXIT ;                                        /* 0x000000000000794d */
        /*0010*/                   BRA 0x10;                                     /* 0xfffffffc00fc7947 */
"""


def test_sass_passes_counts_each_kernels_instructions():
    """Every instruction counts, predicated branches too; NOPs and the closing branch to itself
    (padding after EXIT) do not."""
    from benchmarks.sass_passes import count_sass

    assert count_sass(SASS_LISTING) == {"_Z11pass_kernelILi5ELi16ELb0ELi2EEvPKN3c107complexIfEEii": 5,
                                        "_Z11pass_kernelILi5ELi32ELb1ELi1EEvPKN3c107complexIfEEii": 1}


def test_sass_passes_lists_the_pass_kinds_of_the_canonical_transforms():
    """d = 8192: radix 32 then 16 at spans 256 and 16 (wide), radix 16 at span 1 (unit); radix 8
    schedules pass through span 8 (narrow). Radix-32 passes are never narrow at any d <= 16384, so
    fused.h does not compile them."""
    from benchmarks.sass_passes import passes, used_passes

    assert passes(13, 5) == [(5, "Wide"), (4, "Wide"), (4, "Unit")]
    assert passes(13, 3) == [(2, "Wide"), (2, "Wide"), (3, "Wide"), (3, "Narrow"), (3, "Unit")]
    assert passes(0, 5) == [(0, "Unit")]
    assert (5, "Narrow") not in used_passes(5) and (5, "Unit") in used_passes(5)
    assert all(bits <= 3 for bits, _ in used_passes(3))


def test_sass_passes_loop_body_leaves_out_inner_loops():
    """One trip round the outermost loop (0x10 .. 0x60: six instructions) less the inner loop at
    0x30 .. 0x40 (two): four, the trip of a gather whose buckets hold one channel each."""
    from benchmarks.sass_passes import loop_body

    code = [(0x00, "S2R R0, SR_TID.X"), (0x10, "LDG.E.64 R2, desc[UR4][R4.64]"), (0x20, "@P0 BRA 0x50"),
            (0x30, "FADD R6, R6, R2"), (0x40, "@P1 BRA 0x30"), (0x50, "STS [R7], R6"), (0x60, "@!P2 BRA 0x10"),
            (0x70, "EXIT")]
    assert loop_body(code) == 4
    assert loop_body(code[:1] + code[-1:]) == 2  # no loop: the whole function


def test_ncu_source_top_ranks_source_lines_by_stall_samples(tmp_path, capsys):
    from benchmarks.ncu_source_top import main

    csv_file = tmp_path / "source.csv"
    csv_file.write_text('==PROF== Disconnected\n'
                        '"# Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed"\n'
                        '"1","for (;;)","1,200","10"\n"2","c = code[q];","5,000","20"\n"3","x = y;","0","5"\n')
    assert main([str(csv_file), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "samples" and "(of 6200 warp stall samples)" in lines[0]
    assert lines[1].split()[:2] == ["5000", "80.6%"] and lines[1].endswith("c = code[q];")
    assert lines[2].split()[:2] == ["1200", "19.4%"] and lines[3] == ""
    # Then the lines that issue the most warp instructions.
    assert lines[4].split()[0] == "inst" and "(of 35 warp instructions executed)" in lines[4]
    assert lines[5].split()[:2] == ["20", "57.1%"] and lines[5].endswith("c = code[q];")
    assert lines[6].split()[:2] == ["10", "28.6%"] and lines[6].endswith("for (;;)") and len(lines) == 7
    # A page without the columns prints its beginning, so the format can be read off the run.
    csv_file.write_text("a,b\n1,2\n")
    assert main([str(csv_file)]) == 1
    assert "a,b" in capsys.readouterr().out


def test_sass_regions_splits_at_barriers_and_counts_loop_trips():
    from benchmarks.sass_regions import describe, functions_of_lines, loops, parse, regions

    listing = """
	.section	.text._Z6other,"ax",@progbits
.text._Z6other:
        /*0000*/                   FADD R1, R1, R1 ;
	.section	.text._Z6kernelv,"ax",@progbits
.text._Z6kernelv:
	//## File "/x/csrc/common/fused.h", line 3
        /*0000*/                   MOV R1, RZ ;
        /*0010*/                   NOP ;
.L_x_1:
	//## File "/x/csrc/common/fused.h", line 5
        /*0020*/                   FADD R1, R1, R2 ;
        /*0030*/                   ISETP.GE.AND P0, PT, R1, R3, PT ;
        /*0040*/              @!P0 BRA `(.L_x_1) ;
	//## File "/x/csrc/cuda/fused_kernel.cuh", line 9
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0060*/                   STS [R1], R2 ;
        /*0070*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0080*/                   EXIT ;
"""
    code, labels, _ = parse(listing, "_Z6kernelv")
    assert [a for a, _, _ in code] == [0x00, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80]  # NOP and other kernels left out
    assert code[1][2] == ("fused.h", 5) and labels == {".L_x_1": 0x20, ".L_x_2": 0x80}
    parts = regions(code)
    assert [len(p) for p in parts] == [5, 3]  # split after the barrier
    assert loops(code, labels, 0, 0x80) == [(0x20, 0x40, 3)]  # the forward branch is no loop
    funcs = functions_of_lines("// x\nCB_HD void zero(int n) {\n  a;\nCB_HD_PASS void fft_pass(int) {\n  b;\n")
    assert funcs[3] == "zero" and funcs[5] == "fft_pass"
    lines = describe(code, labels, funcs, min_size=4)
    assert lines[0].split()[:2] == ["0x00000", "5"] and "fft_pass 3" in lines[0] and "zero 1" in lines[0]
    assert lines[1].strip() == "loop 0x00020..0x00040: 3 instructions per trip" and len(lines) == 2


def test_sass_regions_attributes_local_accesses_to_their_inline_chain():
    """nvdisasm -gi writes each instruction's inline chain innermost first; the spill report names
    the fused.h functions outermost first, once per run, and counts LDL and STL apart."""
    from benchmarks.sass_regions import functions_of_lines, local_accesses, parse

    listing = """
.text._Z6kernelv:
	//## File "/x/csrc/common/fused.h", line 5 inlined at "/x/csrc/common/fused.h", line 2
	//## File "/x/csrc/common/fused.h", line 2 inlined at "/x/csrc/cuda/fused_kernel.cuh", line 67
	//## File "/x/csrc/cuda/fused_kernel.cuh", line 67
        /*0000*/                   LDL R4, [R1+0x4] ;
        /*0010*/               @P0 STL [R1+0x8], R5 ;
	//## File "/x/csrc/common/fused.h", line 3 inlined at "/x/csrc/cuda/fused_kernel.cuh", line 67
	//## File "/x/csrc/cuda/fused_kernel.cuh", line 67
        /*0020*/                   LDL R6, [R1+0x4] ;
        /*0030*/                   LDS R6, [R2] ;
.text._Z6otherv:
        /*0000*/                   LDL R4, [R1] ;
"""
    funcs = functions_of_lines("CB_HD void outer(int n) {\n  a;\n  b;\nCB_HD void inner(int) {\n  c;\n")
    code, _, chains = parse(listing, "_Z6kernelv")
    assert chains[0x20] == (("fused.h", 3), ("fused_kernel.cuh", 67)) and code[2][2] == ("fused.h", 3)
    found = local_accesses(code, chains, funcs)
    assert found == {(("outer", "inner"), "LDL"): 1, (("outer", "inner"), "STL"): 1, (("outer",), "LDL"): 1}


def test_gpu_canary_names_a_hang_a_crash_and_wrong_values():
    """The canary's parent (gpu_canary.run_cases) against a stand-in child: a case that hangs is killed
    and named, one that kills its process is named, wrong values and exceptions are reported, stray
    output is skipped, and every case after a hang, a crash or an exception still runs, in a new
    child (an exception's verdict ends its child, which the next case is not blamed for)."""
    import sys

    from benchmarks.gpu_canary import run_cases

    fake = ("import os, sys, time\n"
            "print('a warning on stdout', flush=True)\n"
            "for n in sys.argv[1:]:\n"
            "    if n == 'hang': time.sleep(60)\n"
            "    if n == 'crash': os._exit(7)\n"
            "    if n == 'raise': print('CANARY raise raised RuntimeError: boom', flush=True); os._exit(3)\n"
            "    print('CANARY', n, 'wrong' if n == 'bad' else 'ok', 'err', n, flush=True)\n")
    names = ["a", "hang", "b", "crash", "c", "bad", "raise", "d"]
    got = run_cases(names, [sys.executable, "-c", fake], first_timeout=10, timeout=2)
    assert list(got) == names
    assert {n: v for n, (v, _) in got.items()} == {"a": "ok", "hang": "hung", "b": "ok", "crash": "crashed", "c": "ok",
                                                    "bad": "wrong", "raise": "raised", "d": "ok"}
    assert got["a"][1] == "err a" and "exited with 7" in got["crash"][1] and "within 2 s" in got["hang"][1]
    assert got["raise"][1] == "RuntimeError: boom"
    # Past the canary's total time, the case it waits on is killed and the rest are skipped.
    got = run_cases(["a", "hang", "b"], [sys.executable, "-c", fake], first_timeout=10, timeout=10, total=3)
    assert [v for v, _ in got.values()] == ["ok", "hung", "skipped"]


def test_gpu_canary_passes_on_the_host_instance_and_switches_off_what_fails(tmp_path, monkeypatch):
    """On the host instance (clusters emulated) every case engages its mechanism and matches the
    float64 reference, and --env-out is empty; a failed case's switches are what the file exports."""
    import subprocess
    import sys

    from benchmarks import gpu_canary

    env_out = tmp_path / "canary.env"
    run = subprocess.run([sys.executable, gpu_canary.__file__, "--device", "cpu", "--env-out", str(env_out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == len(gpu_canary.CASES), run.stdout
    for line, (what, *_) in zip(lines, gpu_canary.CASES.values()):
        assert line.startswith(what) and line[len(what):].split()[:2] == ["ok", "error"], line
    assert env_out.read_text() == ""
    # A mechanism that fails alone and with the others is switched off, not those that pass alone;
    # a failure that no switch causes (pooled) switches nothing off.
    failing = {"map_grads": "hung", "clusters": "wrong", "pooled": "wrong"}
    monkeypatch.setattr(gpu_canary, "run_cases", lambda names, command: {n: (failing.get(n, "ok"), "") for n in names})
    assert gpu_canary.main(["--env-out", str(env_out)]) == 1
    assert env_out.read_text() == "export COMPACT_BILINEAR_STAGE_INPUT_GRADS=0\n"
    failing = {"grad_rows": "wrong", "clusters": "wrong"}  # map_vector, which reads the gradient too, passes
    assert gpu_canary.main(["--env-out", str(env_out)]) == 1
    assert env_out.read_text() == "export COMPACT_BILINEAR_STAGE_GRAD=0\n"
    # Before sm_90 the plans have no clusters: their cases are n/a, which neither fails nor switches off.
    failing = {n: "n/a" for n in ("grad_rows", "map_rows", "map_grads", "clusters")}
    assert gpu_canary.main(["--env-out", str(env_out)]) == 0
    assert env_out.read_text() == ""
    # Where the mechanisms fail only together, all of them are.
    failing = {"clusters": "crashed"}
    assert gpu_canary.main(["--env-out", str(env_out)]) == 1
    assert env_out.read_text() == "".join(f"export {s}=0\n" for s in gpu_canary.STAGE)
    # The forward's unit product has a switch of its own.
    failing = {"unit_product": "wrong"}
    assert gpu_canary.main(["--env-out", str(env_out)]) == 1
    assert env_out.read_text() == "export COMPACT_BILINEAR_UNIT_PRODUCT=0\n"


def test_penalty_benchmark_checks_every_implementation_before_timing(tmp_path, monkeypatch, capsys):
    """benchmarks.penalty: the gradient-penalty step of each implementation against the float64
    reference; an implementation whose penalty gradients are off by 0.2 % is a mismatch and is not
    timed."""
    import json

    from benchmarks import impls, penalty

    out = tmp_path / "penalty.json"
    assert penalty.main(["--quick", "--device", "cpu", "--impls", "reference,fft,fused", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["reference", "fft", "fused"]
    assert all(r["status"] == "ok" and r["rel_err"] < 1e-5 and r["time"]["median_s"] > 0 for r in rows)
    assert "| fft |" in capsys.readouterr().out

    def wrong(case, idx, signs, device, **_):
        fft = impls.IMPLS["fft"].build(case, idx, signs, device)
        return lambda xs: fft(xs) * 1.001

    monkeypatch.setitem(impls.IMPLS, "wrong", impls.Impl("wrong", "wrong", True, wrong))
    assert penalty.main(["--quick", "--device", "cpu", "--impls", "wrong", "--json", str(out)]) == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "mismatch" and "time" not in row


def test_frozen_input_benchmark_runs_and_checks(capsys):
    """benchmarks.frozen_input at a tiny size: it checks each trained input's gradient (identical
    to the call for every gradient, which is checked against float64) before it prints the three
    times."""
    from benchmarks import frozen_input

    for algorithm, d in (("fft", "40"), ("fused", "32")):
        args = ["--batch", "2", "--channels", "8", "--side", "3", "--d", d, "--device", "cpu", "--algorithm", algorithm]
        assert frozen_input.main(args) == 0
        out = capsys.readouterr().out
        assert f"{algorithm} backward" in out
        assert all(name in out for name in ("every gradient", "map frozen", "vector frozen"))


def test_gram_benchmark_runs_and_checks(capsys):
    """benchmarks.gram --quick: gram and fft checked against float64, then timed (the host instance
    of the fused kernel is not: "-"); a table row per case with the speed-up and what 'auto' picks."""
    from benchmarks import gram

    assert gram.main(["--quick"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 2 and all(len(r) == 14 for r in rows)
    for r in rows:
        fwd, bwd = [float(v) for v in r[4:7:2]], [float(v) for v in r[8:11:2]]
        assert r[5].strip() == r[9].strip() == "-"
        for speed_up, (gram_ms, fft_ms) in ((r[7], fwd), (r[11], bwd)):
            assert float(speed_up.strip().rstrip("x")) == pytest.approx(fft_ms / gram_ms, rel=0.01)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_pair_sketch_order_benchmark_compiles_and_agrees(tmp_path):
    """benchmarks/pair_sketch_order.cpp, the stand-alone A/B of the CPU pair sketch's channel
    order: it compiles, and both orders give identical sketches (its exit status), wrap included."""
    exe = tmp_path / "pair_sketch_order"
    src = Path(__file__).resolve().parents[1] / "benchmarks" / "pair_sketch_order.cpp"
    subprocess.run(["g++", "-O2", "-o", str(exe), str(src)], check=True)
    for args in (["31", "17", "64"], ["64", "64", "16"]):
        out = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True).stdout
        assert "identical sketches" in out and "ns per pair" in out
