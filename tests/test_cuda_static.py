"""The static evidence of make cuda-check (trt_plugins/tests/sass_stats.py): loops, waits, drains,
resources and occupancy read from SASS, checked on hand-written listings whose structure is known, on
real Triton cubins (a tap loop nested around a channel loop must be flagged, one flat K loop must
not), and on the conv kernel's own builds; and the tile-config table's matching rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trt_plugins" / "tests"))

import sass_stats as S  # noqa: E402


def _listing(lines: list[tuple[int, str]]) -> str:
    body = "\n".join(f"        /*{a:04x}*/                   {t} ;       /* 0x000000000000000000 */" for a, t in lines)
    return f"\n\tcode for sm_90a\n\t\tFunction : k\n{body}\n"


def _analyze(lines):
    return S.analyze_function(S.parse_sass(_listing(lines))["k"])


# a tap loop (0x20) around a pipelined channel loop (0x30): after the channel loop, every wgmma and
# cp.async is waited for and the CTA syncs, once per tap
NESTED = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "S2R R0, SR_TID.X"), (0x20, "IADD3 R2, R2, 0x1, RZ"),
          (0x30, "LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64]"), (0x40, "DEPBAR.LE SB0, 0x1"),
          (0x50, "HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24"), (0x60, "@P0 BRA 0x30"),
          (0x70, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), (0x80, "DEPBAR.LE SB0, 0x0"), (0x90, "BAR.SYNC.DEFER_BLOCKING 0x0"),
          (0xa0, "@P1 BRA 0x20"), (0xb0, "EXIT"), (0xc0, "BRA 0xc0")]


def test_nested_k_loop_drain_is_found():
    r = _analyze(NESTED)
    loops = {lp["header"]: lp for lp in r["loops"]}
    assert set(loops) == {"0x0020", "0x0030"}  # the trailing `BRA 0xc0` to itself is no loop
    inner, outer = loops["0x0030"], loops["0x0020"]
    assert (inner["instructions"], inner["waits"], inner["mma"], inner["depth"]) == (4, 1, 1, 2)
    # the outer loop's own code: 0x20 and 0x70..0xa0; three waits, two of them full drains
    assert (outer["instructions"], outer["waits"], outer["mma"], outer["depth"]) == (5, 3, 0, 1)
    assert r["nested_drains"] == ["0x0070 WARPGROUP.DEPBAR.LE gsb0, 0x0", "0x0080 DEPBAR.LE SB0, 0x0"]
    assert r["main_loop"]["header"] == "0x0030"


def test_one_flat_k_loop_drains_once_after_it():
    flat = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64]"),
            (0x20, "DEPBAR.LE SB0, 0x2"), (0x30, "BAR.SYNC.DEFER_BLOCKING 0x0"), (0x40, "@!PT LDS RZ, [RZ]"),
            (0x50, "HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24, gsb0"), (0x60, "WARPGROUP.DEPBAR.LE gsb0, 0x1"),
            (0x70, "@P5 BRA 0x10"), (0x80, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), (0x90, "DEPBAR.LE SB0, 0x0"),
            (0xa0, "EXIT")]
    r = _analyze(flat)
    assert len(r["loops"]) == 1 and r["nested_drains"] == []
    lp = r["loops"][0]
    # 7 instructions per iteration; @!PT never executes, so it is no wait
    assert (lp["instructions"], lp["waits"], lp["bar_sync"], lp["mma"]) == (7, 3, 1, 1)


def test_an_out_of_line_retry_block_is_not_a_loop():
    # tcgen05 style: the mbarrier try-wait spins in a block after EXIT and jumps back into the body;
    # only the K loop (0x10) and the spin loop (0x90) are loops; no MMA in the spin loop, so no drain
    lines = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64]"),
             (0x20, "UTCHMMA gdesc[UR8], gdesc[UR14], tmem[UR11], tmem[UR24], idesc[UR25], UPT"),
             (0x30, "SYNCS.PHASECHK.TRANS64.TRYWAIT P5, [UR4], R2"), (0x40, "@!P5 BRA 0x90"),
             (0x50, "IADD3 R2, R2, 0x1, RZ &req={1} ?WAIT4_END_GROUP"), (0x60, "BRA.U !UP0, 0x10 ?trans11"),
             (0x70, "EXIT"), (0x80, "BRA 0x80"), (0x90, "SYNCS.PHASECHK.TRANS64.TRYWAIT P5, [UR4], R2"),
             (0xa0, "@!P5 BRA 0x90"), (0xb0, "BRA 0x50")]
    r = _analyze(lines)
    assert sorted(lp["header"] for lp in r["loops"]) == ["0x0010", "0x0090"]
    k = next(lp for lp in r["loops"] if lp["header"] == "0x0010")
    assert k["mma"] == 1 and k["depth"] == 1 and r["nested_drains"] == []


def test_resources_and_resident_ctas():
    text = ("Resource usage:\n Common:\n  GLOBAL:0\n Function sparse_conv_kernel:\n"
            "  REG:168 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:696 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert S.resource_usage(text) == {"sparse_conv_kernel": {"regs": 168, "stack": 16, "shared_static": 1024,
                                                             "local": 0}}
    # 168 registers -> 21 units of 256 per warp = 5376; 65536 // 5376 = 12 warps -> one 8-warp CTA
    occ = S.resident_ctas(90, 168, 8, 96 * 1024)
    assert (occ["ctas"], occ["limited_by"], occ["launchable"]) == (1, "registers", True)
    # 64 registers, 4 warps, no shared memory on sm_80: 32 warps by registers -> 8 CTAs
    assert S.resident_ctas(80, 64, 4, 0)["ctas"] == 8
    # 64 KiB + the 1 KiB reserved per CTA on sm_86 (100 KiB per SM): one CTA; 100 KiB cannot launch
    assert S.resident_ctas(86, 32, 4, 64 * 1024)["ctas"] == 1
    assert not S.resident_ctas(86, 32, 4, 100 * 1024)["launchable"]


# ---- real cubins from Triton (no GPU needed) ------------------------------------------------------

_TOY = '''
import triton
import triton.language as tl


@triton.jit
def nested(a_ptr, b_ptr, c_ptr, K, T, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for t in range(T):  # a tap loop around the channel loop
        for k0 in range(0, K, BK):
            a = tl.load(a_ptr + (t * BM + rm)[:, None] * K + (k0 + rk)[None, :])
            b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])
            acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


@triton.jit
def flat(a_ptr, b_ptr, c_ptr, K, T, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    nk = K // BK
    for kk in range(T * nk):  # one K loop over taps x channel blocks
        t = kk // nk
        k0 = (kk - t * nk) * BK
        a = tl.load(a_ptr + (t * BM + rm)[:, None] * K + (k0 + rk)[None, :])
        b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out, cc = Path(sys.argv[1]), int(sys.argv[2])
    for fn in (nested, flat):
        sig = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "K": "i32", "T": "i32",
               "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={"BM": 64, "BN": 64, "BK": 32}, attrs=attrs),
                           target=GPUTarget("cuda", cc, 32), options={"num_warps": 4, "num_stages": 3})
        (out / f"{fn.__name__}_sm{cc}.cubin").write_bytes(k.asm["cubin"])
'''


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        pytest.skip("the Triton wheel has no cuobjdump")
    return str(path)


def _no_interpret_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.parametrize("cc", [80, 90])
def test_real_cubins_nested_tap_loop_flagged_flat_loop_not(tmp_path, cc):
    cuobjdump = _cuobjdump()
    src = tmp_path / "toy_kernels.py"
    src.write_text(_TOY)
    proc = subprocess.run([sys.executable, str(src), str(tmp_path), str(cc)], capture_output=True, text=True,
                          timeout=600, env=_no_interpret_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    nested = S.analyze_cubin(cuobjdump, str(tmp_path / f"nested_sm{cc}.cubin"), cc, 4, 0)
    flat = S.analyze_cubin(cuobjdump, str(tmp_path / f"flat_sm{cc}.cubin"), cc, 4, 0)
    assert nested["tensor_cores"] and flat["tensor_cores"]
    assert nested["nested_drains"], nested["loops"]
    assert flat["nested_drains"] == [], flat["loops"]
    assert sum(1 for lp in flat["loops"] if lp["mma"]) == 1


def test_conv_builds_have_one_pipelined_k_loop_and_no_spills(tmp_path):
    """The conv kernel's fast 3x3 build and its any-size fallback, sm_80 and sm_90: one K loop with the
    tensor-core instructions, no drain per tap, no stack frame; every tile tactic of the fast build."""
    import json

    from sai.kernels import aot, configs

    cuobjdump = _cuobjdump()
    specs = "sparse_conv_fp16_k3_relu,sparse_conv_fp16_any"
    proc = subprocess.run([sys.executable, "-m", "sai.kernels.aot", "--out", str(tmp_path), "--arch", "80,90",
                           "--specs", specs, "--jobs", "1"], env=_no_interpret_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cc in (80, 90):
        stems = [aot.image_stem("sparse_conv_fp16_k3_relu", t) for t in aot.SPECS["sparse_conv_fp16_k3_relu"]["tactics"]]
        assert len(stems) == len(configs.CONV_TACTICS)  # every tile class conv_config picks from
        for stem in stems + ["sparse_conv_fp16_any"]:
            meta = json.loads((tmp_path / f"sm_{cc}" / f"{stem}.json").read_text())
            r = S.analyze_cubin(cuobjdump, str(tmp_path / f"sm_{cc}" / f"{stem}.cubin"), cc, meta["num_warps"],
                                meta["shared"])
            where = f"sm_{cc}/{stem}"
            assert r["tensor_cores"], where
            assert r["stack"] == 0 and r["local_memory_instructions"] == 0, (where, r["regs"], r["stack"])
            assert r["nested_drains"] == [], (where, r["nested_drains"])
            mma_loops = [lp for lp in r["loops"] if lp["mma"]]
            assert len(mma_loops) == 1 and mma_loops[0]["depth"] == 1, (where, r["loops"])


# ---- tile configs: the matching rules --------------------------------------------------------------


def test_config_matching_rules():
    from sai.kernels import configs

    assert configs.matches({}, {})
    assert configs.matches({"k": 3}, {"k": 3, "P": 5}) and not configs.matches({"k": 3}, {"k": 1})
    assert configs.matches({"P_max": 100}, {"P": 100}) and not configs.matches({"P_max": 100}, {"P": 101})
    assert configs.matches({"cout_min": 128}, {"cout": 128}) and not configs.matches({"cout_min": 128}, {"cout": 64})
    assert not configs.matches({"P_max": 100}, {})  # a bound on a feature the call does not give: no match
    assert not configs.matches({"deform": False}, {})  # as before: a missing feature never equals
    assert not configs.matches({"P_max": 100}, {"P": True})


# ---- tile configs: the run-time chooser picks only what make kernels builds ---------------------------


def _block_convs(h: int, w: int, n: int, dcn: bool):
    """(k, cin, cout, deform, P) of every conv of sparse_resnet101's blocks (torchvision layout, 1024x1664
    style input h x w, batch n): conv1 1x1 at stride 1, the 3x3 offset conv (18 channels) and conv2 (3x3,
    deformable with DCN, stride 2 in each stage's first block), conv3 1x1."""
    out = []
    hh, ww = (h + 3) // 4, (w + 3) // 4  # after the stem and max-pool
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        for first in (True, False):
            s = 2 if first and stage > 0 else 1
            h2, w2 = (hh - 1) // s + 1, (ww - 1) // s + 1
            out.append((1, inplanes, planes, False, n * hh * ww))
            if dcn and stage > 0:
                out.append((3, inplanes, 18, False, n * h2 * w2))
            out.append((3, planes, planes, dcn and stage > 0, n * h2 * w2))
            out.append((1, planes, 4 * planes, False, n * h2 * w2))
            hh, ww, inplanes = h2, w2, 4 * planes
    return out


def test_every_tile_the_chooser_picks_for_the_model_is_an_aot_build():
    """For sparse_resnet101's block convs (with and without DCN) at several input sizes and batches, fp16 and
    bf16, on every target arch: the config ``conv_tiles`` / ``configs.conv_config`` picks at run time is the
    tile config of one of the tactics kernels/aot.py builds for that conv's spec (and, where ``make kernels``
    has built them, the BM/BN/BK, warps and stages in that image's metadata)."""
    import json

    import torch

    from sai.kernels import aot, configs
    from sai.kernels.sparse_sample_conv import conv_tiles

    kdir = ROOT / "build" / "kernels"
    picked: dict = {}
    checked_meta = 0
    for cc in aot.ARCHS:
        arch = f"sm_{cc}"
        for dtype in (torch.float16, torch.bfloat16):
            s = aot._SHORT[str(dtype).replace("torch.", "")]
            for (h, w), n, dcn in (((1024, 1664), 1, False), ((1024, 1664), 8, True), ((512, 832), 1, True),
                                   ((256, 416), 2, False), ((2048, 3328), 1, False)):
                for k, cin, cout, deform, p in _block_convs(h, w, n, dcn):
                    x = torch.empty(1, cin, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
                    orig = configs.arch_name
                    configs.arch_name = lambda dev, _a=arch: _a  # the device the AOT build targets
                    try:
                        cfg = conv_tiles(torch.device("cpu"), x, k, k, cin, cout, p, deform)
                    finally:
                        configs.arch_name = orig
                    fast = cin % 16 == 0 and cout % 16 == 0
                    name = f"sparse_conv_{s}_{f'k{k}' if fast else 'any'}{'_deform' if deform else ''}"
                    spec = aot.SPECS[name]
                    if not aot.supported(spec, cc):
                        continue
                    assert cfg["tactic"] in spec["tactics"], (arch, name, cfg)
                    built = aot.tile_config(spec, cc, cfg["tactic"])
                    tile = {key: cfg[key] for key in ("BM", "BN", "BK", "num_warps", "num_stages")}
                    assert tile == {key: built[key] for key in tile}, (arch, name, p, cout, cfg, built)
                    picked.setdefault(arch, set()).add((name, cfg["tactic"]))
                    meta_path = kdir / arch / f"{aot.image_stem(name, cfg['tactic'])}.json"
                    if meta_path.is_file():
                        meta = json.loads(meta_path.read_text())
                        assert {key: meta["constexprs"][key] for key in ("BM", "BN", "BK")} == \
                            {key: tile[key] for key in ("BM", "BN", "BK")}, meta_path
                        assert (meta["num_warps"], meta["num_stages"]) == (tile["num_warps"], tile["num_stages"])
                        checked_meta += 1
    # the choice depends on P: on the tensor-core archs the model's shapes use several tile classes
    assert len({t for _, t in picked["sm_90"]}) >= 3, picked["sm_90"]
    if (kdir / "sai_kernels_embedded.cpp").is_file():
        assert checked_meta > 0


def test_chooser_fills_the_sms_at_small_p_and_widens_at_large_p():
    """configs.conv_config's rule (sm_90, H100's 132 SMs; 2 CTAs per SM the target): the largest tile whose
    grid has >= 264 CTAs, no wider than the channels need; if none has, the one with the most CTAs."""
    from sai.kernels import configs

    def pick(p, cout, sms=None):
        c = configs.conv_config("sm_90", dtype="float16", k=3, deform=False, P=p, cout=cout, sms=sms)
        return c["BM"], c["BN"]

    # stage 4 of a 1024x1664 image, batch 1: P = 32*52 = 1664 rows; 128-row tiles give 13 x 4 = 52 CTAs
    assert pick(1664, 512) == (64, 64)  # 26 x 8 = 208: the most CTAs of any tile
    # batch 8 at stage 2 (P = 212992, 128 channels): 1664 x 1 CTAs of 128 x 128 fill the SMs many times
    assert pick(212992, 128) == (128, 128)
    assert pick(851968, 256) == (128, 256)  # stage 1, batch 8, conv3: the widest tile
    assert pick(851968, 64) == (128, 64)  # never wider than the 64 channels need
    # the SM count decides: 26624 rows x 128 channels has 208 CTAs of 128 x 128 (< 264 on 132 SMs, enough on 100)
    assert pick(26624, 128) == (64, 128) and pick(26624, 128, sms=100) == (128, 128)
    # fp32 / deformable / "any" builds have one tile (their AOT builds carry tactic 1 only)
    one = configs.conv_config("sm_90", dtype="float16", k=3, deform=True, P=64, cout=512)
    assert one["tactic"] == 1 and one == {**configs.lookup("sparse_sample_conv", "sm_90", dtype="float16", k=3,
                                                            deform=True, build="fast"), "tactic": 1}
