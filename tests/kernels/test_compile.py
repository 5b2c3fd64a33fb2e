"""The Triton kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter runs kernels with numpy semantics and accepts code the GPU compiler rejects (types of
loop-carried values, constexpr scoping, pointer arithmetic); compiling to a cubin here catches that in CI.
The compiler needs the real @triton.jit functions, which TRITON_INTERPRET=1 (set for the rest of the
suite) replaces, so the compilation runs in a child process without it: `python -m tests.kernels.test_compile`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

F = "*fp32"
ROWS = {"s_ptr": "*bf16", "s_stride": "i64", "t_ptr": "*bf16", "t_stride": "i64"}
JSD_SCALARS = {"V": "i32", "inv_t": "fp32", "beta": "fp32", "log_1mb": "fp32", "log_b": "fp32"}


def specs():
    """(module, kernel, signature, constexprs) for every kernel variant the library launches."""
    out = []
    for dtype in ("*bf16", "*fp32"):
        for with_entropy in (False, True):
            consts = {"WITH_ENTROPY": with_entropy, "BLOCK_V": 4096}
            out.append(("logprob", "_logprob_fwd_kernel", {
                "z_ptr": dtype, "z_stride": "i64", "t_ptr": "*i64", "lp_ptr": F, "lse_ptr": F, "ent_ptr": F,
                "V": "i32", "inv_t": "fp32", "ignore_index": "i32"}, consts))
            out.append(("logprob", "_logprob_bwd_kernel", {
                "z_ptr": dtype, "z_stride": "i64", "g_ptr": dtype, "g_stride": "i64", "t_ptr": "*i64",
                "lse_ptr": F, "ent_ptr": F, "glp_ptr": F, "gent_ptr": F, "V": "i32", "inv_t": "fp32"}, consts))
    for mode in (0, 1, 2):
        consts = {"MODE": mode, "BLOCK_V": 4096}
        out.append(("divergence", "_jsd_fwd_kernel", {
            **ROWS, "jsd_ptr": F, "lse_s_ptr": F, "lse_t_ptr": F, "c_ptr": F, **JSD_SCALARS}, consts))
        out.append(("divergence", "_jsd_bwd_kernel", {
            **ROWS, "out_ptr": "*bf16", "out_stride": "i64", "lse_s_ptr": F, "lse_t_ptr": F, "c_ptr": F,
            "g_ptr": F, **JSD_SCALARS}, consts))
    for estimator in (1, 2, 3):
        out.append(("divergence", "_kl_kernel", {"logp_ptr": F, "ref_ptr": F, "k_ptr": F, "dk_ptr": F, "n": "i32"},
                    {"ESTIMATOR": estimator, "BLOCK": 1024}))
    return out


def main() -> None:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for module, name, signature, consts in specs():
        fn = getattr(importlib.import_module(f"atlas.kernels.{module}"), name)
        source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], f"{name} {consts}: no cubin"
        print(f"{name} {consts}: ok")


def test_kernels_compile_for_hopper():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.test_compile"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(": ok") == len(specs())


if __name__ == "__main__":
    main()
