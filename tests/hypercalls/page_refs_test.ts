/**
 * The type and reference rules on a booted guest: a new table is validated once and
 * devalidated when its last type reference goes (its entries' references with it), the
 * fast path, PRESERVE_AD, and the disallow masks.
 */

import assert from "node:assert/strict";
import {
  BASE_DISALLOW_MASK,
  FASTPATH_FLAG_WHITELIST,
  hasEntryChanged,
  L1_DISALLOW_MASK,
  pteFlags,
} from "../../hypercalls/page_refs.ts";
import {
  MMU_PT_UPDATE_PRESERVE_AD,
  MMUEXT_PIN_L1_TABLE,
  MMUEXT_UNPIN_TABLE,
  UVMF_INVLPG,
} from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { DIRECT_MAP_BASE } from "../../lib/guest/layout.ts";
import { PGT_L1, PGT_WRITABLE } from "../../lib/memory/page_types.ts";
import { bootPvGuest, HEAP, pte, walkMachine } from "./_pv_fixture.ts";

Deno.test("the disallow masks are Xen's: base 0x198 (PWT PCD PSE GLOBAL); L1 adds GNTTAB, drops GLOBAL", () => {
  assert.equal(BASE_DISALLOW_MASK, 0x198);
  assert.equal(L1_DISALLOW_MASK, 0x400098);
  assert.equal(FASTPATH_FLAG_WHITELIST, 0xffff64); // NX, AVAIL_HIGH, AVAIL, G, D, A, US
  assert.equal(pteFlags(0x8000_0123, 0x8000_0000), 0x800123);
});

Deno.test("hasEntryChanged: A, D, NX, USER, GLOBAL, AVAIL changes are fast; RW, P, frame are not", () => {
  const [lo, hi] = pte(1234, 0x3);
  assert.equal(hasEntryChanged(lo, hi, lo | 0x60 | 0x4 | 0x100 | 0xe00, hi | 0x80000000), false);
  assert.equal(hasEntryChanged(lo, hi, lo & ~0x2, hi), true);
  assert.equal(hasEntryChanged(lo, hi, lo & ~0x1, hi), true);
  assert.equal(hasEntryChanged(lo, hi, lo + 4096, hi), true);
  assert.equal(hasEntryChanged(lo, hi, lo, hi + 1), true);
  assert.equal(hasEntryChanged(lo, hi, lo | 0x10, hi), true); // PCD
});

Deno.test("a frame becomes an L1 once (validated), and its last type reference devalidates it", () => {
  const g = bootPvGuest();
  const d = g.d;
  const gfn = 800;
  const mfn = g.platform.p2mList[gfn]!;
  const data = g.platform.p2mList[801]!;
  const va = DIRECT_MAP_BASE + gfn * 4096;
  // Fill it through its writable direct-map page: two writable entries for frame 801.
  for (let i = 0; i < 2; i++) g.platform.access(va + i * 8, 8, 1, ...pte(data, 0x7), false);
  const dataTypeCount = d.types.typeCount[data]!;
  assert.equal(g.hostile.updateVaMapping(va, ...pte(mfn, 0x121, true), UVMF_INVLPG), 0);
  assert.equal(d.types.typeCount[mfn], 0);
  const validatedBefore = g.platform.stats.get("validate.tables");
  assert.equal(g.hostile.mmuextOp([{ cmd: MMUEXT_PIN_L1_TABLE, arg1: mfn }]).rc, 0);
  assert.equal(d.types.describe(mfn), "l1 x1 validated pinned, count 3");
  assert.equal(d.types.typeCount[data], dataTypeCount + 2); // two writable references
  assert.equal(g.platform.stats.get("validate.tables") - validatedBefore, 1);
  assert.deepEqual(checkPvSafety(d), []);
  assert.equal(g.hostile.mmuextOp([{ cmd: MMUEXT_UNPIN_TABLE, arg1: mfn }]).rc, 0);
  assert.equal(d.types.typeCount[mfn], 0);
  assert.equal(d.types.isValidated(mfn), false);
  assert.equal(d.types.type[mfn], PGT_L1); // the type stays until another one is taken
  assert.equal(d.types.typeCount[data], dataTypeCount); // the entries' references went
  // Writable again: the type changes to writable.
  assert.equal(g.hostile.updateVaMapping(va, ...pte(mfn, 0x163, true), UVMF_INVLPG), 0);
  assert.equal(d.types.type[mfn], PGT_WRITABLE);
  assert.deepEqual(checkPvSafety(d), []);
});

Deno.test("MMU_PT_UPDATE_PRESERVE_AD keeps the A/D bits the processor set", () => {
  const g = bootPvGuest();
  const { entry } = walkMachine(g.d, HEAP);
  const lo = g.d.memory.read32(entry[1]!);
  assert.equal(lo & 0x60, 0x60); // written: accessed and dirty
  const hi = g.d.memory.read32(entry[1]! + 4);
  const { rc } = g.hostile.mmuUpdate([
    { ma: entry[1]!, cmd: MMU_PT_UPDATE_PRESERVE_AD, lo: lo & ~0x62, hi },
  ]);
  assert.equal(rc, 0);
  assert.equal(g.d.memory.read32(entry[1]!), (lo & ~0x2) >>> 0); // RW gone, A/D kept
  assert.deepEqual(checkPvSafety(g.d), []);
});
