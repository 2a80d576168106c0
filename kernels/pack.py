"""Strided 4-D copies on the device, for hosts without torch (the TensorRT plugins).

``copy4d_kernel`` copies ``dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]`` over a logical
``[D0, D1, D2, D3]`` index space with independent element strides on both sides, moving each element
as an integer of its size (bit-exact for float32, float16 and bfloat16 alike, NaN payloads kept).
The plugins use it to pack the weights ``W [Cout, Cin/g, kh, kw]`` to the ``[g, tap, Cin/g, Cout/g]``
order of ``sparse_conv_kernel`` at the first enqueue of each plugin instance in a CUDA context (weights
are plugin inputs there, engine constants in every model sai exports; later enqueues reuse the copy):
view W as ``[g, Cout/g, Cin/g, tap]`` with strides ``(Cout/g*Cin/g*T, Cin/g*T, T, 1)`` and write it
with strides ``(T*Cin/g*Cout/g, 1, Cout/g, Cin/g*Cout/g)``. In Python, ``pack_weight`` does the same
with torch; tests/test_trt_launch.py replays the plugins' recorded ``copy4d_b16/b32`` launches of this kernel.
"""

from __future__ import annotations

import triton.language as tl

from sai.kernels._jit import kernel

BLOCK = 1024


@kernel
def copy4d_kernel(
    src_ptr, dst_ptr, TOTAL, D1, D2, D3,
    ss0, ss1, ss2, ss3,
    sd0, sd1, sd2, sd3,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = e < TOTAL
    i3 = e % D3
    t = e // D3
    i2 = t % D2
    t = t // D2
    i1 = t % D1
    i0 = t // D1
    v = tl.load(src_ptr + i0 * ss0 + i1 * ss1 + i2 * ss2 + i3 * ss3, mask=valid)
    tl.store(dst_ptr + i0 * sd0 + i1 * sd1 + i2 * sd2 + i3 * sd3, v, mask=valid)

