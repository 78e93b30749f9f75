"""The float32 multiply-add peak of one core, for reading the product-bound workloads (W2, W4).

A loop of 16 independent ``llvm.fma.v16f32`` chains, written in LLVM IR and compiled for the
host CPU by llvmlite (the compiler Numba uses): no loads, no stores, nothing but multiply-adds,
so that its rate is the most one core's vector units give. W4's captured step is ~52 MFLOP of
small products: at this rate they alone take 52e6 / peak seconds (session 30, a znver4 VM:
116 GFLOP/s, 450 us of a 756 us step), the floor below which no replay of the same
products can go.

``python -m bench.peak`` prints it; ``harness.machine_info`` records it in each result's header.
"""
import ctypes
import time

_CHAINS = 16


def _ir(chains):
    phis = "\n".join(f"  %a{i} = phi <16 x float> [ zeroinitializer, %entry ], [ %b{i}, %loop ]"
                     for i in range(chains))
    fmas = "\n".join(f"  %b{i} = call <16 x float> @llvm.fma.v16f32(<16 x float> %x, <16 x float> %y, "
                     f"<16 x float> %a{i})" for i in range(chains))
    sums = "\n".join(f"  %s{i + 1} = fadd <16 x float> %s{i}, %b{i}" for i in range(chains))
    return f"""
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
define float @run(i64 %n, float %v) {{
entry:
  %x1 = insertelement <16 x float> undef, float %v, i32 0
  %x = shufflevector <16 x float> %x1, <16 x float> undef, <16 x i32> zeroinitializer
  %y = fadd <16 x float> %x, %x
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %j, %loop ]
{phis}
{fmas}
  %j = add i64 %i, 1
  %more = icmp slt i64 %j, %n
  br i1 %more, label %loop, label %exit
exit:
  %s0 = fadd <16 x float> zeroinitializer, zeroinitializer
{sums}
  %r = extractelement <16 x float> %s{chains}, i32 0
  ret float %r
}}
"""


def fma_peak_gflops(seconds=0.05):
    """float32 GFLOP/s of one core's multiply-adds (2 flops each), best of three timed loops;
    None where llvmlite cannot compile for this machine."""
    try:
        from llvmlite import binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        mod = llvm.parse_assembly(_ir(_CHAINS))
        mod.verify()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(), opt=3)
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_float)(engine.get_function_address("run"))
    except Exception:  # noqa: BLE001 - informative only
        return None
    n = 1000
    while True:                      # size the loop to about `seconds`
        t = time.perf_counter()
        fn(n, 1e-9)
        dt = time.perf_counter() - t
        if dt >= seconds / 4 or n >= 1 << 40:
            break
        n *= 4
    best = min(_timed(fn, n) for _ in range(3))
    engine.remove_module(mod)        # (keeps nothing alive after the measurement)
    return n * _CHAINS * 16 * 2 / best / 1e9


def _timed(fn, n):
    t = time.perf_counter()
    fn(n, 1e-9)
    return time.perf_counter() - t


if __name__ == "__main__":
    from llvmlite import binding
    peak = fma_peak_gflops(0.2)
    print(f"{binding.get_host_cpu_name()}: float32 FMA peak of one core "
          f"{'unavailable' if peak is None else f'{peak:.1f} GFLOP/s'}")
