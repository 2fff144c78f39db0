/**
 * The two-word PTE format (SDM Vol. 3A 4.5, Tables 4-14 to 4-20) at MAXPHYADDR 36, 39,
 * 46 and 52 and for frames near 2^52.
 */

import assert from "node:assert/strict";
import {
  describePteFlags,
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_ADDRESS,
  PTE_HI_PKEY_SHIFT,
  PTE_HI_XD,
  PTE_LARGE_PAT,
  PTE_LO_ADDRESS,
  PTE_LO_RESERVED_1G,
  PTE_LO_RESERVED_2M,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
  pteHigh,
  pteLargePageBase,
  pteLow,
  ptePkey,
  reservedHighMask,
} from "../../lib/x86/pte.ts";
import { formatHex, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";

/** The 64-bit entry as a bigint, for checking the two words against the SDM's bit numbers. */
function entry64(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** Bits first..last (inclusive) of a 64-bit entry, as the SDM numbers them. */
function bits(first: number, last: number): bigint {
  return ((1n << BigInt(last - first + 1)) - 1n) << BigInt(first);
}

Deno.test("PTE flag constants sit at the SDM's bit positions", () => {
  assert.equal(PTE_PRESENT, 1 << 0);
  assert.equal(PTE_WRITABLE, 1 << 1);
  assert.equal(PTE_USER, 1 << 2);
  assert.equal(PTE_ACCESSED, 1 << 5);
  assert.equal(PTE_DIRTY, 1 << 6);
  assert.equal(PTE_PAGE_SIZE, 1 << 7);
  assert.equal(PTE_GLOBAL, 1 << 8);
  assert.equal(PTE_LARGE_PAT, 1 << 12);
  assert.equal(entry64(0, PTE_HI_XD), 1n << 63n);
  assert.equal(entry64(0, 0xf << PTE_HI_PKEY_SHIFT >>> 0), bits(59, 62));
  assert.equal(entry64(PTE_LO_ADDRESS, PTE_HI_ADDRESS), bits(12, 51));
  assert.equal(BigInt(PTE_LO_RESERVED_2M), bits(13, 20));
  assert.equal(BigInt(PTE_LO_RESERVED_1G), bits(13, 29));
});

Deno.test("pteLow() and pteHigh() split a physical address at bit 32", () => {
  const cases: [number, number, number][] = [
    [0, 0, 0],
    [0x1000, 0x1000, 0],
    [2 ** 32 - 4096, 0xfffff000, 0],
    [2 ** 32, 0, 1],
    [0x1234_5678_9000, 0x56789000, 0x1234],
    [2 ** 36 - 4096, 0xfffff000, 0xf],
    [2 ** 46 - 4096, 0xfffff000, 0x3fff],
    [2 ** 52 - 4096, 0xfffff000, 0xfffff],
    [2 ** 52 - 2 ** 30, 0xc0000000, 0xfffff],
  ];
  for (const [pa, lo, hi] of cases) {
    assert.equal(pteLow(pa, 0), lo, formatHex(pa));
    assert.equal(pteHigh(pa), hi, formatHex(pa));
    assert.equal(entry64(pteLow(pa, 0), pteHigh(pa)), BigInt(pa), formatHex(pa));
    assert.equal(pteAddress(lo, hi), pa, formatHex(pa));
  }
});

Deno.test("pteLow() keeps flags 11..0 only and drops the page offset", () => {
  assert.equal(pteLow(0x5000, PTE_PRESENT | PTE_WRITABLE), 0x5003);
  assert.equal(pteLow(0x5fff, PTE_PRESENT), 0x5001);
  assert.equal(pteLow(0x5000, 0x1fff), 0x5fff);
  assert.equal(pteLow(2 ** 52 - 4096, 0xfff), 0xffffffff);
  assert.ok(pteLow(2 ** 52 - 1, 0) >= 0, "unsigned");
});

Deno.test("pteHigh() puts XD in bit 63 and the key in bits 62..59", () => {
  assert.equal(pteHigh(0, true), PTE_HI_XD);
  assert.equal(entry64(0, pteHigh(0, true)), 1n << 63n);
  assert.equal(entry64(0, pteHigh(0, false, 5)), 5n << 59n);
  assert.equal(pteHigh(0, false, 15), 0x78000000);
  assert.equal(pteHigh(0, false, 16), 0, "the key is 4 bits");
  assert.equal(pteHigh(2 ** 52 - 4096, true, 15), 0xf80fffff);
  assert.equal(pteHigh(2 ** 32, false, 5), 0x28000001);
});

Deno.test("pteAddress() ignores flags, XD, the key and bits 58..52", () => {
  assert.equal(pteAddress(0x1fff, 0xffffffff), 2 ** 52 - 2 ** 32 + 0x1000);
  assert.equal(pteAddress(0x1003, PTE_HI_XD | (5 << PTE_HI_PKEY_SHIFT) | 0x12), 0x12_0000_1000);
  assert.equal(pteAddress(0xffffffff, 0x07f00000), 0xfffff000);
  assert.equal(pteAddress(0xfffff000, 0xfffff), 2 ** 52 - 4096);
});

Deno.test("pteLargePageBase() drops PAT and the reserved bits below the frame", () => {
  assert.equal(pteLargePageBase(0xffffffff, 0xfffff, PAGE_SIZE_2M), 2 ** 52 - PAGE_SIZE_2M);
  assert.equal(pteLargePageBase(0xffffffff, 0xfffff, PAGE_SIZE_1G), 2 ** 52 - PAGE_SIZE_1G);
  assert.equal(pteLargePageBase(0x40001fe3, 0x80000003, PAGE_SIZE_1G), 0x3_4000_0000);
  assert.equal(pteLargePageBase(0x00601083, 0, PAGE_SIZE_2M), 0x600000);
  assert.equal(pteLargePageBase(0xc0000083, 0xffffffff, PAGE_SIZE_1G), 2 ** 52 - PAGE_SIZE_1G);
});

Deno.test("ptePkey() reads bits 62..59 only", () => {
  assert.equal(ptePkey(0), 0);
  assert.equal(ptePkey(PTE_HI_XD), 0);
  assert.equal(ptePkey(0x07ffffff), 0);
  assert.equal(ptePkey(5 << PTE_HI_PKEY_SHIFT), 5);
  assert.equal(ptePkey(0x78000000), 15);
  assert.equal(ptePkey(0xffffffff), 15);
  for (let key = 0; key < 16; key++) assert.equal(ptePkey(pteHigh(2 ** 52 - 4096, true, key)), key);
});

Deno.test("reservedHighMask() covers bits 51..MAXPHYADDR", () => {
  const cases: [number, number][] = [[36, 0xffff0], [39, 0xfff80], [46, 0xfc000], [52, 0]];
  for (const [maxPhyAddr, mask] of cases) {
    assert.equal(reservedHighMask(maxPhyAddr), mask, `MAXPHYADDR ${maxPhyAddr}`);
    assert.equal(
      entry64(0, reservedHighMask(maxPhyAddr)),
      maxPhyAddr === 52 ? 0n : bits(maxPhyAddr, 51),
      `MAXPHYADDR ${maxPhyAddr}`,
    );
  }
});

Deno.test("reservedHighMask() flags frames at and above 2^MAXPHYADDR only", () => {
  for (const maxPhyAddr of [36, 39, 46, 52]) {
    const mask = reservedHighMask(maxPhyAddr);
    const highest = 2 ** maxPhyAddr - 4096;
    assert.equal(pteHigh(highest) & mask, 0, `last frame below 2^${maxPhyAddr}`);
    if (maxPhyAddr < 52) {
      assert.notEqual(pteHigh(2 ** maxPhyAddr) & mask, 0, `2^${maxPhyAddr}`);
    }
    assert.equal(
      (pteHigh(2 ** 52 - 4096) & mask) !== 0,
      maxPhyAddr < 52,
      `2^52 - 4096 at MAXPHYADDR ${maxPhyAddr}`,
    );
    // XD, the key and the ignored bits 58..52 are never address bits.
    assert.equal(0xfff00000 & mask, 0);
  }
});

Deno.test("describePteFlags() names PS as PAT in an l1e", () => {
  const lo = PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED | PTE_DIRTY | PTE_PAGE_SIZE;
  assert.equal(
    describePteFlags(lo, PTE_HI_XD | (3 << PTE_HI_PKEY_SHIFT), 2),
    "P RW US A D PS PK3 XD",
  );
  assert.equal(describePteFlags(lo | PTE_GLOBAL, 0, 1), "P RW US A D PAT G");
  assert.equal(describePteFlags(0, 0, 4), "RO S");
});
