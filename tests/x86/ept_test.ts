/**
 * The EPT entry format (lib/x86/ept.ts) against SDM Vol. 3C 29.3.2 (Tables 29-1 to 29-6)
 * and 29.3.3.1 (misconfigurations): every R/W/X combination at every level, every memory
 * type in a leaf, the reserved bits of each entry kind, and addresses at the edges.
 */

import assert from "node:assert/strict";
import {
  describeEptFlags,
  describeEptQualification,
  EPT_ACCESSED,
  EPT_DIRTY,
  EPT_EXECUTE,
  EPT_IGNORE_PAT,
  EPT_MEMTYPE_SHIFT,
  EPT_MEMTYPE_WB,
  EPT_PAGE_SIZE,
  EPT_READ,
  EPT_WRITE,
  eptAddress,
  eptHigh,
  eptLargePageBase,
  eptLow,
  eptMemoryType,
  eptpOf,
  eptpTableAddress,
  isEptMisconfigured,
  isEptpAdEnabled,
  isEptPresent,
} from "../../lib/x86/ept.ts";
import { PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import { reservedHighMask } from "../../lib/x86/pte.ts";

const WB = EPT_MEMTYPE_WB << EPT_MEMTYPE_SHIFT;
const RSVD_46 = reservedHighMask(46);

Deno.test("eptLow()/eptHigh()/eptAddress() round-trip addresses at the edges", () => {
  for (const hpa of [0, 0xffff_f000, 2 ** 32, 2 ** 47 - 4096, 2 ** 52 - 4096]) {
    const lo = eptLow(hpa, EPT_READ | EPT_WRITE);
    const hi = eptHigh(hpa);
    assert.equal(eptAddress(lo, hi), hpa, `${hpa}`);
    assert.equal(lo & 0xfff, EPT_READ | EPT_WRITE);
  }
  assert.equal(eptLargePageBase(eptLow(0x4020_0000, 0), eptHigh(0), PAGE_SIZE_2M), 0x4020_0000);
  assert.equal(eptLargePageBase(eptLow(0x4020_0000, 0), eptHigh(0), PAGE_SIZE_1G), 0x4000_0000);
  assert.equal(eptLargePageBase(0xc000_0000, 0xf_ffff, PAGE_SIZE_1G), 2 ** 52 - PAGE_SIZE_1G);
});

Deno.test("isEptPresent(): any of R, W, X", () => {
  for (let rwx = 0; rwx < 8; rwx++) assert.equal(isEptPresent(rwx | WB), rwx !== 0);
  assert.equal(isEptPresent(EPT_ACCESSED | EPT_DIRTY | WB | 0x1000), false);
});

Deno.test("isEptMisconfigured(): W without R at every level; R, RX, X-only, RW, RWX are fine", () => {
  for (let level = 1; level <= 4; level++) {
    for (let rwx = 1; rwx < 8; rwx++) {
      const lo = rwx | (level === 1 ? WB : 0);
      const bad = (rwx & (EPT_READ | EPT_WRITE)) === EPT_WRITE;
      assert.equal(isEptMisconfigured(lo, 0, level, RSVD_46), bad, `level ${level} rwx ${rwx}`);
    }
  }
});

Deno.test("isEptMisconfigured(): memory types 2, 3 and 7 in a leaf; ignored bits are fine", () => {
  for (let type = 0; type < 8; type++) {
    const lo = EPT_READ | (type << EPT_MEMTYPE_SHIFT);
    const bad = type === 2 || type === 3 || type === 7;
    assert.equal(isEptMisconfigured(lo, 0, 1, RSVD_46), bad, `PTE type ${type}`);
    assert.equal(isEptMisconfigured(lo | EPT_PAGE_SIZE, 0, 2, RSVD_46), bad, `2M type ${type}`);
    assert.equal(isEptMisconfigured(lo | EPT_PAGE_SIZE, 0, 3, RSVD_46), bad, `1G type ${type}`);
  }
  // IPAT, A, D, bit 7 of a PTE, bits 11..10 and 62..52 are not reserved.
  const leaf = EPT_READ | WB | EPT_IGNORE_PAT | EPT_ACCESSED | EPT_DIRTY | 0xc00;
  assert.equal(isEptMisconfigured(leaf | EPT_PAGE_SIZE, 0x7ff0_0000, 1, RSVD_46), false);
});

Deno.test("isEptMisconfigured(): reserved bits of each entry kind", () => {
  // PML4E: bits 7..3 (so no PS, no memory type).
  for (let bit = 3; bit <= 7; bit++) {
    assert.equal(isEptMisconfigured(EPT_READ | (1 << bit), 0, 4, RSVD_46), true, `l4 bit ${bit}`);
  }
  // A PDPTE or PDE that references a table: bits 6..3.
  for (const level of [2, 3]) {
    for (let bit = 3; bit <= 6; bit++) {
      assert.equal(isEptMisconfigured(EPT_READ | (1 << bit), 0, level, RSVD_46), true);
    }
    assert.equal(isEptMisconfigured(EPT_READ | EPT_ACCESSED, 0, level, RSVD_46), false);
  }
  // Large leaves: the bits between bit 12 and the frame.
  assert.equal(isEptMisconfigured(EPT_READ | WB | EPT_PAGE_SIZE | 0x10_0000, 0, 2, RSVD_46), true);
  assert.equal(isEptMisconfigured(EPT_READ | WB | EPT_PAGE_SIZE | 0x20_0000, 0, 2, RSVD_46), false);
  assert.equal(
    isEptMisconfigured(EPT_READ | WB | EPT_PAGE_SIZE | 0x2000_0000, 0, 3, RSVD_46),
    true,
  );
  assert.equal(
    isEptMisconfigured(EPT_READ | WB | EPT_PAGE_SIZE | 0x4000_0000, 0, 3, RSVD_46),
    false,
  );
  // Address bits 51..MAXPHYADDR in any entry.
  for (let level = 1; level <= 4; level++) {
    const lo = EPT_READ | (level === 1 ? WB : 0);
    assert.equal(isEptMisconfigured(lo, 1 << 14, level, RSVD_46), true, `bit 46 at ${level}`);
    assert.equal(isEptMisconfigured(lo, 1 << 13, level, RSVD_46), false, `bit 45 at ${level}`);
    assert.equal(isEptMisconfigured(lo, 1 << 19, level, reservedHighMask(52)), false);
  }
});

Deno.test("eptpOf() encodes WB, a 4-level walk and the A/D bit; rejects unaligned tables", () => {
  assert.equal(eptpOf(0, false), 0x1e);
  assert.equal(eptpOf(2 ** 40, true), 2 ** 40 + 0x5e);
  assert.equal(eptpTableAddress(eptpOf(2 ** 40, true)), 2 ** 40);
  assert.equal(isEptpAdEnabled(eptpOf(2 ** 40, true)), true);
  assert.equal(isEptpAdEnabled(eptpOf(2 ** 40, false)), false);
  for (const bad of [0x800, -4096, 1.5]) {
    assert.throws(
      () => eptpOf(bad, false),
      new RangeError(`Cannot make an EPTP for table ${bad}: need a 4 KiB-aligned address`),
    );
  }
});

Deno.test("eptMemoryType(), describeEptFlags() and describeEptQualification() name what is set", () => {
  assert.equal(eptMemoryType(EPT_READ | WB | EPT_IGNORE_PAT), 6);
  assert.equal(
    describeEptFlags(EPT_READ | EPT_WRITE | EPT_EXECUTE | WB | EPT_DIRTY, 1),
    "R W X WB D",
  );
  assert.equal(describeEptFlags(EPT_READ | WB | EPT_PAGE_SIZE | EPT_IGNORE_PAT, 2), "R WB IPAT PS");
  assert.equal(describeEptFlags(EPT_READ | EPT_WRITE | EPT_ACCESSED | EPT_DIRTY, 4), "R W A");
  assert.equal(describeEptFlags(EPT_WRITE | EPT_EXECUTE, 1), "W X UC");
  assert.equal(describeEptQualification(0x19c), "fetch, final, rights RW, linear valid");
  assert.equal(describeEptQualification(0), "none, paging-structure, rights -, no linear address");
});
