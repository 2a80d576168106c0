"""Static evidence from a cubin's SASS: resources, occupancy, and the loops the hardware will run.

Used by ``cuda_check.py`` (``make cuda-check``) on every image ``make kernels`` built:

* ``cuobjdump -res-usage``: registers, stack (spills), local memory, static shared memory;
* resident CTAs per SM from registers, shared memory (Triton's dynamic + static + the 1 KiB the
  driver reserves per CTA on sm_80+) and warps against the per-arch limits of ``ARCH_LIMITS``;
* ``cuobjdump -sass``: a control-flow graph of the kernel (basic blocks, branch edges), its
  natural loops (back edges found with dominators, so an out-of-line retry block that jumps back
  into the body is not mistaken for a loop), and per loop the instructions per iteration, the
  barrier waits per iteration (``DEPBAR``, ``WARPGROUP.DEPBAR``, ``BAR.SYNC``, mbarrier
  ``SYNCS.PHASECHK``) and the tensor-core instructions in it;
* a *drain per outer iteration*: a loop around an inner loop with tensor-core instructions whose
  own code (outside the inner loop) waits for every outstanding copy or MMA (``DEPBAR.LE SBn, 0x0``,
  ``WARPGROUP.DEPBAR.LE gsb0, 0x0``, an mbarrier wait). That is a K loop split in two, a tap loop
  around a channel loop, whose pipeline empties and refills at every tap.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field

# Per compute capability: max resident warps and CTAs per SM, shared memory per SM (the largest
# carve-out) and per CTA (opt-in), the reserved shared memory per CTA, the register file (32-bit
# registers per SM) and its allocation unit per warp. CUDA C Programming Guide, "Compute
# Capabilities" table (the occupancy calculator's inputs).
ARCH_LIMITS = {
    75: dict(warps=32, ctas=16, smem_sm=64 * 1024, smem_cta=64 * 1024, reserved=0),
    80: dict(warps=64, ctas=32, smem_sm=164 * 1024, smem_cta=163 * 1024, reserved=1024),
    86: dict(warps=48, ctas=16, smem_sm=100 * 1024, smem_cta=99 * 1024, reserved=1024),
    89: dict(warps=48, ctas=24, smem_sm=100 * 1024, smem_cta=99 * 1024, reserved=1024),
    90: dict(warps=64, ctas=32, smem_sm=228 * 1024, smem_cta=227 * 1024, reserved=1024),
    100: dict(warps=64, ctas=32, smem_sm=228 * 1024, smem_cta=227 * 1024, reserved=1024),
    120: dict(warps=48, ctas=32, smem_sm=100 * 1024, smem_cta=99 * 1024, reserved=1024),
}
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers per warp are allocated in units of 256 (8 per thread)

MMA_OPCODES = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QMMA", "QGMMA", "OMMA", "DMMA", "BMMA", "BGMMA",
               "UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA", "UTCMMA")

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_ANNOT = re.compile(r"\s+[&?]\S+")  # sm_120's scheduling annotations: &req={..} ?WAIT5_END_GROUP
_PRED = re.compile(r"^@(!?)(U?P[T0-9]+)\s+")
_RES = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


@dataclass
class Instr:
    addr: int
    text: str  # without predicate and annotations
    pred: str  # "" (always), "P0", "!P5", "!PT" (never), ...

    @property
    def op(self) -> str:
        return self.text.split(None, 1)[0] if self.text else ""


@dataclass
class Block:
    start: int
    instrs: list[Instr] = field(default_factory=list)
    succ: list[int] = field(default_factory=list)


@dataclass
class Loop:
    header: int
    blocks: set[int]
    latches: list[int]


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """``cuobjdump -sass`` output -> {function name: instructions in address order}."""
    funcs: dict[str, list[Instr]] = {}
    cur: list[Instr] | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Function :"):
            cur = funcs.setdefault(s.split(":", 1)[1].strip(), [])
            continue
        m = _LINE.search(line)
        if m is None or cur is None:
            continue
        body = _ANNOT.sub("", m.group(2)).strip()
        pred = ""
        pm = _PRED.match(body)
        if pm:
            pred = pm.group(1) + pm.group(2)
            body = body[pm.end():]
        cur.append(Instr(int(m.group(1), 16), body, pred))
    return funcs


def _branch(ins: Instr) -> tuple[int | None, bool] | None:
    """(target, conditional) of a direct branch; (None, False) for a terminator; None otherwise."""
    op = ins.op
    if ins.pred == "!PT":
        return None  # never executes
    predicated = ins.pred not in ("", "PT")
    if op.startswith("BRA"):
        targets = re.findall(r"0x([0-9a-f]+)", ins.text)
        if not targets:
            return (None, predicated)
        operands = ins.text.split(None, 1)[1] if " " in ins.text else ""
        # BRA.U UP1, 0x330 / BRA.DIV UR4, 0x..: a predicate or register operand makes it conditional
        cond = predicated or "," in operands or ".DIV" in op
        return (int(targets[-1], 16), cond)
    if op in ("EXIT", "RET", "BPT") or op.startswith(("RET.", "BPT.", "BRX", "JMX", "EXIT.")):
        return (None, predicated)
    return None


def build_cfg(instrs: list[Instr]) -> dict[int, Block]:
    """Basic blocks keyed by start address, with successor edges (calls fall through)."""
    if not instrs:
        return {}
    addrs = {i.addr for i in instrs}
    leaders = {instrs[0].addr}
    for k, ins in enumerate(instrs):
        br = _branch(ins)
        if br is None:
            continue
        if br[0] is not None and br[0] in addrs:
            leaders.add(br[0])
        if k + 1 < len(instrs):
            leaders.add(instrs[k + 1].addr)
    blocks: dict[int, Block] = {}
    cur: Block | None = None
    order = []
    for ins in instrs:
        if ins.addr in leaders:
            cur = Block(ins.addr)
            blocks[ins.addr] = cur
            order.append(ins.addr)
        cur.instrs.append(ins)
    for k, start in enumerate(order):
        blk = blocks[start]
        nxt = order[k + 1] if k + 1 < len(order) else None
        br = _branch(blk.instrs[-1])
        if br is None:
            succ = [nxt]
        else:
            target, cond = br
            succ = [target] if target is not None and target in blocks else []
            if cond:
                succ.append(nxt)
        blk.succ = [s for s in dict.fromkeys(succ) if s is not None]
    return blocks


def dominators(blocks: dict[int, Block], entry: int) -> dict[int, set[int]]:
    """Dominator sets of the blocks reachable from ``entry`` (iterative data flow)."""
    reach, stack = set(), [entry]
    while stack:
        b = stack.pop()
        if b in reach:
            continue
        reach.add(b)
        stack.extend(blocks[b].succ)
    preds: dict[int, list[int]] = {b: [] for b in reach}
    for b in reach:
        for s in blocks[b].succ:
            preds[s].append(b)
    order = sorted(reach)
    dom = {b: set(reach) for b in reach}
    dom[entry] = {entry}
    changed = True
    while changed:
        changed = False
        for b in order:
            if b == entry:
                continue
            ps = [dom[p] for p in preds[b]]
            new = set.intersection(*ps) | {b} if ps else {b}
            if new != dom[b]:
                dom[b] = new
                changed = True
    return dom


def natural_loops(blocks: dict[int, Block]) -> list[Loop]:
    """Natural loops (back edge u -> h with h dominating u), merged per header."""
    if not blocks:
        return []
    entry = min(blocks)
    dom = dominators(blocks, entry)
    preds: dict[int, list[int]] = {b: [] for b in dom}
    for b in dom:
        for s in blocks[b].succ:
            if s in dom:
                preds[s].append(b)
    loops: dict[int, Loop] = {}
    for u in dom:
        for h in blocks[u].succ:
            if h in dom and h in dom[u]:
                body, stack = {h}, [u]
                while stack:
                    x = stack.pop()
                    if x not in body:
                        body.add(x)
                        stack.extend(preds[x])
                lp = loops.setdefault(h, Loop(h, set(), []))
                lp.blocks |= body
                lp.latches.append(u)
    return sorted(loops.values(), key=lambda lp: lp.header)


def is_mma(ins: Instr) -> bool:
    return ins.pred != "!PT" and ins.op.split(".")[0] in MMA_OPCODES


def is_wait(ins: Instr) -> bool:
    """An instruction that stalls until other work finishes: async-copy / wgmma scoreboards, CTA
    barriers, mbarrier phase checks."""
    if ins.pred == "!PT":
        return False
    op = ins.op
    return (op.startswith(("DEPBAR", "WARPGROUP.DEPBAR", "SYNCS.PHASECHK"))
            or (op.startswith("BAR.") and not op.startswith("BAR.ARV")) or op == "BAR")


def is_drain(ins: Instr) -> bool:
    """A wait for *every* outstanding async copy or wgmma, or an mbarrier wait (tcgen05 completion)."""
    if ins.pred == "!PT":
        return False
    t = ins.text.replace(" ", "")
    return (bool(re.match(r"(WARPGROUP\.)?DEPBAR\.LE\w*,0x0$", t.split(";")[0]))
            or ins.op.startswith("SYNCS.PHASECHK"))


def analyze_function(instrs: list[Instr]) -> dict:
    """Loops (innermost first), their per-iteration instruction / wait / MMA counts, and drains."""
    blocks = build_cfg(instrs)
    loops = natural_loops(blocks)
    out_loops = []
    for lp in loops:
        inner = [o for o in loops if o is not lp and o.blocks < lp.blocks]
        nested = set().union(*[o.blocks for o in inner]) if inner else set()
        own = [ins for b in sorted(lp.blocks - nested) for ins in blocks[b].instrs]
        body = [ins for b in sorted(lp.blocks) for ins in blocks[b].instrs]
        mma_inner = [o for o in inner if any(is_mma(i) for b in o.blocks for i in blocks[b].instrs)]
        drains = [f"{i.addr:#06x} {i.text}" for i in own if is_drain(i)] if mma_inner else []
        out_loops.append({
            "header": f"{lp.header:#06x}", "end": f"{max(i.addr for i in body):#06x}",
            "depth": sum(1 for o in loops if o is not lp and lp.blocks < o.blocks) + 1,
            "innermost": not inner,
            "instructions": sum(1 for i in own if i.op != "NOP"),
            "waits": sum(1 for i in own if is_wait(i)),
            "bar_sync": sum(1 for i in own if is_wait(i) and i.op.startswith("BAR")),
            "mma": sum(1 for i in own if is_mma(i)),
            "mma_in_nested_loops": bool(mma_inner),
            "drains_per_iteration": drains,
        })
    mma_loops = [lp for lp in out_loops if lp["mma"]]
    main = max(mma_loops or [lp for lp in out_loops if lp["innermost"]] or [None],
               key=lambda lp: (lp["mma"], lp["instructions"]) if lp else 0)
    return {"loops": out_loops, "main_loop": main, "mma_total": sum(1 for i in instrs if is_mma(i)),
            "local_memory_instructions": sum(1 for i in instrs if i.op.startswith(("STL", "LDL"))),
            "nested_drains": [d for lp in out_loops for d in lp["drains_per_iteration"]]}


def resource_usage(text: str) -> dict[str, dict]:
    """``cuobjdump -res-usage`` output -> {function: {regs, stack, shared_static, local}}."""
    return {m.group(1): {"regs": int(m.group(2)), "stack": int(m.group(3)), "shared_static": int(m.group(4)),
                         "local": int(m.group(5))} for m in _RES.finditer(text)}


def resident_ctas(cc: int, regs: int, num_warps: int, shared_bytes: int) -> dict:
    """Resident CTAs per SM and what limits them (registers, shared memory, warps, CTA slots)."""
    lim = ARCH_LIMITS.get(cc) or ARCH_LIMITS[max(k for k in ARCH_LIMITS if k <= cc)]
    per_warp = math.ceil(max(regs, 1) * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // per_warp) // num_warps
    smem = shared_bytes + lim["reserved"]
    by_smem = lim["smem_sm"] // smem if smem else lim["ctas"]
    by_warps = lim["warps"] // num_warps
    limits = {"registers": by_regs, "shared": by_smem, "warps": by_warps, "cta_slots": lim["ctas"]}
    ctas = min(limits.values())
    return {"ctas": ctas, "limited_by": min(limits, key=limits.get), "warps_per_sm": ctas * num_warps,
            "occupancy": round(ctas * num_warps / lim["warps"], 3), "smem_per_cta": smem,
            "launchable": shared_bytes <= lim["smem_cta"]}


def nvdisasm_dir(cuobjdump: str) -> str | None:
    """A folder holding nvdisasm, which ``cuobjdump -sass`` runs: beside cuobjdump, on PATH, the CUDA
    toolkit's, or the one the Triton wheel ships (PyPI's nvidia-cuda-cuobjdump has none)."""
    import os
    import shutil
    from pathlib import Path

    cands = [os.environ.get("NVDISASM_PATH", ""), str(Path(cuobjdump).parent), os.path.dirname(shutil.which("nvdisasm") or ""),
             "/usr/local/cuda/bin"]
    try:
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin"))
    except ImportError:
        pass
    return next((c for c in cands if c and (Path(c) / "nvdisasm").is_file()), None)


def analyze_cubin(cuobjdump: str, cubin: str, cc: int, num_warps: int, dynamic_shared: int) -> dict:
    """Everything above for one cubin (its one kernel, or the largest if there are several)."""
    import os

    res = resource_usage(subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True).stdout)
    nvd = nvdisasm_dir(cuobjdump)
    env = dict(os.environ, NVDISASM_PATH=nvd) if nvd else None
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, env=env)
    if sass.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass {cubin}: {sass.stderr.strip()[:300]}")
    funcs = parse_sass(sass.stdout)
    if not funcs:
        raise RuntimeError(f"cuobjdump -sass {cubin}: no functions in the listing")
    name = max(funcs, key=lambda f: len(funcs[f]))
    r = res.get(name) or next(iter(res.values()), {"regs": 0, "stack": 0, "shared_static": 0, "local": 0})
    shared = dynamic_shared + r["shared_static"]
    info = analyze_function(funcs[name])
    return {"function": name, **r, "shared_dynamic": dynamic_shared, "shared_total": shared,
            "num_warps": num_warps, **resident_ctas(cc, r["regs"], num_warps, shared),
            "tensor_cores": info["mma_total"] > 0, "sass_instructions": len(funcs[name]), **info}
