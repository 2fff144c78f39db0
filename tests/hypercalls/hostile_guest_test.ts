/**
 * Hostile PV guests, one attack per test, after the advisories in
 * research/xen-kvm-mechanisms.md section 4. Each attack is a hypercall a correct kernel
 * never makes; each must come back with Xen's errno, leave the frame table and every
 * page-table frame exactly as they were, keep invariant 4 (PV safety), and leave the
 * guest running (its process still reads its memory).
 */

import assert from "node:assert/strict";
import {
  DOMID_IO,
  DOMID_SELF,
  DOMID_XEN_ID,
  HYPERVISOR_MMU_UPDATE,
  HYPERVISOR_MULTICALL,
  MMU_MACHPHYS_UPDATE,
  MMUEXT_MARK_SUPER,
  MMUEXT_NEW_BASEPTR,
  MMUEXT_PIN_L1_TABLE,
  MMUEXT_PIN_L2_TABLE,
  MMUEXT_PIN_L4_TABLE,
  MMUEXT_SET_LDT,
  MMUEXT_UNPIN_TABLE,
  UVMF_INVLPG,
  XEN_EBUSY,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
  XEN_EOPNOTSUPP,
  XEN_EPERM,
  XEN_ESRCH,
} from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { DIRECT_MAP_BASE } from "../../lib/guest/layout.ts";
import { PV_NEIGHBOUR_ID } from "../../lib/platform/pv.ts";
import {
  bootPvGuest,
  HEAP,
  pte,
  type PvGuest,
  snapshotFrames,
  walkMachine,
} from "./_pv_fixture.ts";

const P = 0x1;
const RW = 0x2;
const US = 0x4;
const A = 0x20;
const PSE = 0x80;
const G = 0x100;
const TABLE = P | RW | US | A;

/**
 * Runs `attack` on a fresh guest: it must return `errno`; nothing in the frame table or
 * the page tables changes from when the attack calls `mark()` (before the callback by
 * default; an attack that sets things up first calls it before its hypercall); the guest
 * is safe and still running.
 */
function expectRejected(
  errno: number,
  attack: (g: PvGuest, mark: () => void) => number,
  options: Parameters<typeof bootPvGuest>[0] = {},
): PvGuest {
  const g = bootPvGuest(options);
  let before = "";
  let rejectedBefore = 0;
  const mark = () => {
    before = snapshotFrames(g.d);
    rejectedBefore = g.platform.stats.get("hypercall.rejected");
  };
  mark();
  assert.equal(attack(g, mark), -errno);
  assert.equal(snapshotFrames(g.d), before);
  assert.ok(g.platform.stats.get("hypercall.rejected") > rejectedBefore);
  assert.deepEqual(checkPvSafety(g.d), []);
  assert.equal(g.platform.crashReason, "");
  for (let i = 0; i < 16; i++) assert.equal(g.kernel.readU32(g.pid, HEAP + i * 4096), i);
  return g;
}

/** The l1e that maps the heap's page 16 (not yet mapped): a free slot of a live L1. */
function freeL1Slot(g: PvGuest): number {
  return walkMachine(g.d, HEAP + 16 * 4096).entry[1]!;
}

Deno.test("hostile: mapping another domain's frame (XSA-248) is -EBUSY", () => {
  expectRejected(XEN_EBUSY, (g) => {
    const [lo, hi] = pte(g.platform.neighbourFrames[0]!, P | RW | US);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }]).rc;
  });
});

Deno.test("hostile: mapping a frame of Xen's heap is -EBUSY", () => {
  expectRejected(XEN_EBUSY, (g) => {
    const [lo, hi] = pte(3, P | US); // a frame Xen keeps for itself
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }]).rc;
  });
});

Deno.test("hostile: mapping the top-level table writable is -EBUSY", () => {
  expectRejected(XEN_EBUSY, (g) => {
    const [lo, hi] = pte(g.d.guestTable, P | RW | US);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }]).rc;
  });
});

Deno.test("hostile: flipping only RW on a read-only mapping of an L1 takes the full path (XSA-182): -EBUSY", () => {
  const g = bootPvGuest();
  const l1 = walkMachine(g.d, HEAP).table[1]!;
  const slot = freeL1Slot(g);
  const [lo, hi] = pte(l1, P | US | A);
  assert.deepEqual(g.hostile.mmuUpdate([{ ma: slot, lo, hi }]), { rc: 0, done: 1 }); // read-only: fine
  const before = snapshotFrames(g.d);
  // Only RW differs from the entry now in place.
  assert.deepEqual(g.hostile.mmuUpdate([{ ma: slot, lo: lo | RW, hi }]), {
    rc: -XEN_EBUSY,
    done: 0,
  });
  assert.equal(snapshotFrames(g.d), before);
  assert.deepEqual(checkPvSafety(g.d), []);
  assert.equal(g.kernel.readU32(g.pid, HEAP), 0);
});

Deno.test("hostile: an L2 entry with PSE (a 2 MiB superpage, XSA-148) is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const { entry } = walkMachine(g.d, 0x40000000); // an empty l2e of the process
    const [lo, hi] = pte(g.platform.p2mList[512]!, P | RW | US | PSE);
    return g.hostile.mmuUpdate([{ ma: entry[2]!, lo, hi }]).rc;
  });
});

Deno.test("hostile: setting PSE on a live L2 entry through the fast path is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const { entry } = walkMachine(g.d, HEAP);
    const lo = g.d.memory.read32(entry[2]!);
    const hi = g.d.memory.read32(entry[2]! + 4);
    return g.hostile.mmuUpdate([{ ma: entry[2]!, lo: lo | PSE, hi }]).rc;
  });
});

Deno.test("hostile: a GLOBAL upper-level entry is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const { entry } = walkMachine(g.d, HEAP);
    const lo = g.d.memory.read32(entry[3]!);
    return g.hostile.mmuUpdate([{
      ma: entry[3]!,
      lo: lo | G,
      hi: g.d.memory.read32(entry[3]! + 4),
    }])
      .rc;
  });
});

Deno.test("hostile: _PAGE_GNTTAB (bit 62) in an l1e is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const [lo, hi] = pte(g.platform.p2mList[900]!, P | US);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi: hi | 0x40000000 }]).rc;
  });
});

Deno.test("hostile: a writable self-map of the top level (linear page table with RW) is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const l4 = g.d.guestTable;
    const [lo, hi] = pte(l4, TABLE);
    return g.hostile.mmuUpdate([{ ma: l4 * 4096 + 200 * 8, lo, hi }]).rc;
  });
});

Deno.test("hostile: a linear page table is refused with pv-linear-pt off, allowed read-only with it on", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const l4 = g.d.guestTable;
    const [lo, hi] = pte(l4, P | US | A);
    return g.hostile.mmuUpdate([{ ma: l4 * 4096 + 200 * 8, lo, hi }]).rc;
  }, { linearPageTables: false });
  const g = bootPvGuest();
  const l4 = g.d.guestTable;
  const [lo, hi] = pte(l4, P | US | A);
  const count = g.d.types.count[l4];
  assert.deepEqual(g.hostile.mmuUpdate([{ ma: l4 * 4096 + 200 * 8, lo, hi }]), { rc: 0, done: 1 });
  assert.equal(g.d.types.count[l4], count); // a link to its own table holds nothing
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("hostile: a chain of same-level links (XSA-240) is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g, mark) => {
    // Two pinned L2s, A and B: A gets a read-only link to B (allowed), then B a link to a
    // third validated L2, C: B is already a linear target, so it may not hold links.
    const frames = [700, 701, 702].map((gfn) => g.platform.p2mList[gfn]!);
    for (const mfn of frames) {
      // The direct map's RW mapping goes first, then the pin validates the (empty) frame.
      const rc = g.hostile.updateVaMapping(
        DIRECT_MAP_BASE + g.d.m2p[mfn]! * 4096,
        ...pte(mfn, P | A | G, true),
        UVMF_INVLPG,
      );
      assert.equal(rc, 0);
      assert.deepEqual(g.hostile.mmuextOp([{ cmd: MMUEXT_PIN_L2_TABLE, arg1: mfn }]), {
        rc: 0,
        done: 1,
      });
    }
    const [a, b, c] = frames as [number, number, number];
    assert.deepEqual(g.hostile.mmuUpdate([{ ma: a * 4096, lo: pte(b, P | A)[0] }]), {
      rc: 0,
      done: 1,
    });
    assert.deepEqual([g.d.types.linearCount[a], g.d.types.linearCount[b]], [1, -1]);
    mark();
    return g.hostile.mmuUpdate([{ ma: b * 4096 + 8, lo: pte(c, P | A)[0] }]).rc;
  });
});

Deno.test("hostile: changing one of Xen's reserved L4 slots (256..271) is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const l4 = g.d.guestTable;
    const l3 = walkMachine(g.d, HEAP).table[3]!;
    return g.hostile.mmuUpdate([{ ma: l4 * 4096 + 260 * 8, lo: pte(l3, TABLE)[0] }]).rc;
  });
});

Deno.test("hostile: unpinning a table still in use keeps its type; a writable map of it is then -EBUSY", () => {
  const g = bootPvGuest();
  const l1 = walkMachine(g.d, HEAP).table[1]!;
  assert.ok(g.d.types.isPinned(l1));
  // Xen accepts the unpin: the table stays validated because an L2 entry still uses it.
  assert.deepEqual(g.hostile.mmuextOp([{ cmd: MMUEXT_UNPIN_TABLE, arg1: l1 }]), { rc: 0, done: 1 });
  // Its references: allocated, the L2 entry, the direct map's read-only page.
  assert.equal(g.d.types.describe(l1), "l1 x1 validated, count 3");
  const before = snapshotFrames(g.d);
  assert.equal(
    g.hostile.updateVaMapping(
      DIRECT_MAP_BASE + g.d.m2p[l1]! * 4096,
      ...pte(l1, P | RW | A | G, true),
      UVMF_INVLPG,
    ),
    -XEN_EBUSY,
  );
  assert.deepEqual(g.hostile.mmuextOp([{ cmd: MMUEXT_UNPIN_TABLE, arg1: l1 }]), {
    rc: -XEN_EINVAL,
    done: 0,
  });
  assert.equal(snapshotFrames(g.d), before);
  assert.deepEqual(checkPvSafety(g.d), []);
  assert.equal(g.kernel.readU32(g.pid, HEAP + 4096), 1);
});

Deno.test("hostile: pinning an already pinned table is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    return g.hostile.mmuextOp([{ cmd: MMUEXT_PIN_L4_TABLE, arg1: g.d.guestTable }]).rc;
  });
});

Deno.test("hostile: pinning a frame as an L1 when it maps a table writable fails validation: -EBUSY", () => {
  expectRejected(XEN_EBUSY, (g, mark) => {
    // A free frame filled (through its writable direct-map page) with entries, the last
    // of which maps the top level writable; then made read-only and pinned.
    const gfn = 800;
    const mfn = g.platform.p2mList[gfn]!;
    const va = DIRECT_MAP_BASE + gfn * 4096;
    const data = g.platform.p2mList[801]!;
    for (let i = 0; i < 4; i++) {
      g.platform.access(va + i * 8, 8, 1, ...pte(data, P | RW | US), false);
    }
    g.platform.access(va + 32, 8, 1, ...pte(g.d.guestTable, P | RW), false);
    assert.equal(g.hostile.updateVaMapping(va, ...pte(mfn, P | A | G, true), UVMF_INVLPG), 0);
    mark(); // the four good entries' references must be undone too
    return g.hostile.mmuextOp([{ cmd: MMUEXT_PIN_L1_TABLE, arg1: mfn }]).rc;
  });
});

Deno.test("hostile: overflowing a frame's reference count is -EBUSY at the limit", () => {
  expectRejected(XEN_EBUSY, (g, mark) => {
    // maxRefCount 40: the heap page has 3 references (allocated, the direct map, the
    // heap's l1e); read-only mappings in free slots raise it to 39, the most Xen allows
    // (page_get_owner_and_reference keeps references in reserve), then one more fails.
    const target = walkMachine(g.d, HEAP);
    const data = (g.d.memory.read32(target.entry[1]!) >>> 12) +
      (g.d.memory.read32(target.entry[1]! + 4) & 0xfffff) * 2 ** 20;
    const l1 = target.table[1]!;
    const [lo, hi] = pte(data, P | US);
    let slot = 100;
    while (g.d.types.count[data]! < 39) {
      assert.equal(g.hostile.mmuUpdate([{ ma: l1 * 4096 + slot++ * 8, lo, hi }]).rc, 0);
    }
    mark();
    return g.hostile.mmuUpdate([{ ma: l1 * 4096 + slot * 8, lo, hi }]).rc;
  }, { maxRefCount: 40 });
});

Deno.test("hostile: a valid update batched after an invalid one is not applied (done = 0)", () => {
  expectRejected(XEN_EBUSY, (g) => {
    const slot = freeL1Slot(g);
    const bad = pte(g.platform.neighbourFrames[1]!, P | US);
    const good = pte(g.platform.p2mList[900]!, P | US);
    const { rc, done } = g.hostile.mmuUpdate([
      { ma: slot, lo: bad[0], hi: bad[1] },
      { ma: slot + 8, lo: good[0], hi: good[1] },
    ]);
    assert.equal(done, 0);
    return rc;
  });
});

Deno.test("hostile: in a multicall, the call after a failing one still runs, as Xen's multicall does", () => {
  const g = bootPvGuest();
  const slot = freeL1Slot(g);
  const bad = pte(g.platform.neighbourFrames[1]!, P | US);
  const good = pte(g.platform.p2mList[900]!, P | US);
  const batches = g.platform.stats.get("multicall.batches");
  const { rc, results } = g.hostile.multicallMmuUpdates([
    { ma: slot, lo: bad[0], hi: bad[1] },
    { ma: slot + 8, lo: good[0], hi: good[1] },
  ]);
  assert.deepEqual([rc, results], [0, [-XEN_EBUSY, 0]]);
  assert.equal(g.platform.stats.get("multicall.batches"), batches + 1);
  assert.equal(g.d.memory.read32(slot), 0);
  assert.equal(g.d.memory.read32(slot + 8), good[0]);
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("hostile: a misaligned entry pointer (ptr bits 2..0 = 4..7) is -ENOSYS", () => {
  expectRejected(XEN_ENOSYS, (g) => {
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), cmd: 4, lo: 0 }]).rc;
  });
});

Deno.test("hostile: an update of another domain's frame is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    return g.hostile.mmuUpdate([{ ma: g.platform.neighbourFrames[2]! * 4096, lo: 0x1234 }]).rc;
  });
});

Deno.test("hostile: naming its own domain id as the foreign domain is -ESRCH", () => {
  expectRejected(XEN_ESRCH, (g) => {
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo: 0 }], g.d.id).rc;
  });
});

Deno.test("hostile: naming another domain or DOMID_XEN as the owner of the frames is -EPERM", () => {
  expectRejected(XEN_EPERM, (g) => {
    const [lo, hi] = pte(g.platform.neighbourFrames[0]!, P | US);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }], PV_NEIGHBOUR_ID).rc;
  });
  expectRejected(XEN_EPERM, (g) => {
    return g.hostile.mmuextOp([{ cmd: MMUEXT_NEW_BASEPTR, arg1: 5 }], DOMID_XEN_ID).rc;
  });
});

Deno.test("hostile: DOMID_IO may not map RAM: -EBUSY", () => {
  expectRejected(XEN_EBUSY, (g) => {
    const [lo, hi] = pte(g.platform.p2mList[900]!, P | US);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }], DOMID_IO).rc;
  });
});

Deno.test("hostile: mapping I/O memory the domain has no permission for is -EPERM", () => {
  expectRejected(XEN_EPERM, (g) => {
    const [lo, hi] = pte(g.platform.deviceMfn + 5, P | RW | US | 0x18);
    return g.hostile.mmuUpdate([{ ma: freeL1Slot(g), lo, hi }]).rc;
  });
});

Deno.test("hostile: a new base pointer that is a writable data page is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    // Frame 900 is mapped writable by the direct map: it cannot become an L4.
    return g.hostile.mmuextOp([{ cmd: MMUEXT_NEW_BASEPTR, arg1: g.platform.p2mList[900]! }]).rc;
  });
});

Deno.test("hostile: an upper entry pointing at a data page is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const { entry } = walkMachine(g.d, 0x40000000);
    return g.hostile.mmuUpdate([{ ma: entry[2]!, lo: pte(g.platform.p2mList[900]!, TABLE)[0] }])
      .rc;
  });
});

Deno.test("hostile: request lists at bad addresses are -EFAULT", () => {
  expectRejected(
    XEN_EFAULT,
    (g) => g.hostile.call(HYPERVISOR_MMU_UPDATE, 0x1234000, 1, 0, DOMID_SELF),
  );
  expectRejected(
    XEN_EFAULT,
    (g) => g.hostile.call(HYPERVISOR_MMU_UPDATE, 2 ** 47 + 4096, 1, 0, DOMID_SELF),
  );
  expectRejected(XEN_EFAULT, (g) => {
    // A non-canonical pointer.
    g.platform.interpreter.setReg(0, HYPERVISOR_MMU_UPDATE, 0);
    g.platform.interpreter.setReg(7, 0, 0x00010000);
    g.platform.interpreter.setReg(6, 1, 0);
    return g.platform.hypercall();
  });
  expectRejected(XEN_EFAULT, (g) => g.hostile.call(HYPERVISOR_MULTICALL, 0x1234000, 2));
});

Deno.test("hostile: an M2P update of another domain's frame is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    const ma = g.platform.neighbourFrames[3]! * 4096;
    return g.hostile.mmuUpdate([{ ma, cmd: MMU_MACHPHYS_UPDATE, lo: 7 }]).rc;
  });
});

Deno.test("hostile: MMUEXT_MARK_SUPER (XSA-167) is -EOPNOTSUPP", () => {
  expectRejected(XEN_EOPNOTSUPP, (g) => {
    return g.hostile.mmuextOp([{ cmd: MMUEXT_MARK_SUPER, arg1: 2 ** 40 }]).rc;
  });
});

Deno.test("hostile: an LDT of more than 8192 entries is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => {
    return g.hostile.mmuextOp([{ cmd: MMUEXT_SET_LDT, arg1: 0x10000, arg2: 8193 }]).rc;
  });
});

Deno.test("hostile: a multicall inside a multicall is -EINVAL for that call", () => {
  const g = bootPvGuest();
  const before = snapshotFrames(g.d);
  const entry = 0x800;
  g.hostile.write64(entry, HYPERVISOR_MULTICALL, 0);
  g.hostile.write64(entry + 16, (g.hostile.va + entry) >>> 0, 0xffff8880);
  g.hostile.write64(entry + 24, 1, 0);
  assert.equal(g.hostile.call(HYPERVISOR_MULTICALL, g.hostile.va + entry, 1), 0);
  assert.equal(g.hostile.read32(entry + 8) | 0, -XEN_EINVAL);
  assert.equal(snapshotFrames(g.d), before);
});

Deno.test("hostile: update_va_mapping of Xen's hole or of an unmapped address is -EINVAL", () => {
  expectRejected(XEN_EINVAL, (g) => g.hostile.updateVaMapping(2 ** 47 + 0x1000, 0, 0, 0));
  expectRejected(XEN_EINVAL, (g) => g.hostile.updateVaMapping(0x40000000, ...pte(900, P), 0));
});

Deno.test("hostile: an unknown hypercall or mmu_update command is -ENOSYS", () => {
  expectRejected(XEN_ENOSYS, (g) => g.hostile.call(77));
  expectRejected(XEN_ENOSYS, (g) => g.hostile.mmuextOp([{ cmd: 14 }]).rc);
});
