/**
 * Address arithmetic at the edges STYLE.md names: 0, 2^32-1, 2^32, 2^47-1, 2^47 (the
 * first upper-half value), 2^48-1 and 2^52-1, plus non-canonical 64-bit inputs
 * (SDM Vol. 3A 3.3.7.1, 4.5 Figure 4-8).
 */

import assert from "node:assert/strict";
import {
  addressOf,
  canonicalToLinear,
  formatHex,
  formatLinear,
  frameOf,
  levelIndex,
  levelSpan,
  LINEAR_LIMIT,
  linearFromBigInt,
  linearHigh32,
  linearToCanonical,
  PAGE_SIZE,
  PAGE_SIZE_1G,
  PAGE_SIZE_2M,
  pageOffset,
  parseBigInt,
  UPPER_HALF_START,
} from "../../lib/x86/address.ts";

/** A linear address built from its four table indexes and offset, by multiplication. */
function linearOf(l4: number, l3: number, l2: number, l1: number, offset: number): number {
  return l4 * 2 ** 39 + l3 * 2 ** 30 + l2 * 2 ** 21 + l1 * 2 ** 12 + offset;
}

/** [value, l4, l3, l2, l1, offset] for each edge value. */
const EDGES: readonly [number, number, number, number, number, number][] = [
  [0, 0, 0, 0, 0, 0],
  [2 ** 32 - 1, 0, 3, 511, 511, 0xfff],
  [2 ** 32, 0, 4, 0, 0, 0],
  [2 ** 47 - 1, 255, 511, 511, 511, 0xfff],
  [2 ** 47, 256, 0, 0, 0, 0],
  [2 ** 48 - 1, 511, 511, 511, 511, 0xfff],
];

Deno.test("address constants match the SDM's page sizes and the 48-bit split", () => {
  assert.equal(PAGE_SIZE, 4096);
  assert.equal(PAGE_SIZE_2M, 2 * 1024 * 1024);
  assert.equal(PAGE_SIZE_1G, 1024 * 1024 * 1024);
  assert.equal(LINEAR_LIMIT, 2 ** 48);
  assert.equal(UPPER_HALF_START, 2 ** 47);
  assert.deepEqual([1, 2, 3, 4].map(levelSpan), [2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39]);
});

Deno.test("levelIndex() and pageOffset() split edge addresses into 9-bit indexes", () => {
  for (const [va, l4, l3, l2, l1, offset] of EDGES) {
    const name = formatHex(va);
    assert.equal(linearOf(l4, l3, l2, l1, offset), va, name);
    assert.deepEqual(
      [levelIndex(va, 4), levelIndex(va, 3), levelIndex(va, 2), levelIndex(va, 1)],
      [l4, l3, l2, l1],
      name,
    );
    assert.equal(pageOffset(va), offset, name);
  }
});

Deno.test("levelIndex() reads each field independently of the others", () => {
  const va = linearOf(0x1a5, 0x0c3, 0x1ff, 0x001, 0x7ff);
  assert.deepEqual([4, 3, 2, 1].map((l) => levelIndex(va, l)), [0x1a5, 0x0c3, 0x1ff, 0x001]);
  assert.equal(pageOffset(va), 0x7ff);
  // Each index is exactly 9 bits: bit 39 is l4 bit 0, bit 38 is l3 bit 8.
  assert.equal(levelIndex(2 ** 39, 4), 1);
  assert.equal(levelIndex(2 ** 39, 3), 0);
  assert.equal(levelIndex(2 ** 38, 3), 256);
  assert.equal(levelIndex(2 ** 38, 4), 0);
  assert.equal(levelIndex(2 ** 21 - 1, 1), 511);
  assert.equal(levelIndex(2 ** 21 - 1, 2), 0);
});

Deno.test("levelIndex() of a physical value up to 2^52-1 keeps only bits 47..39 in l4", () => {
  assert.equal(levelIndex(2 ** 52 - 1, 4), 511);
  assert.equal(levelIndex(2 ** 48, 4), 0);
  assert.equal(levelIndex(2 ** 52 - 1, 1), 511);
});

Deno.test("frameOf() and addressOf() are inverse on page boundaries up to 2^52", () => {
  const cases: [number, number][] = [
    [0, 0],
    [0xfff, 0],
    [0x1000, 1],
    [2 ** 32 - 1, 0xfffff],
    [2 ** 32, 0x100000],
    [2 ** 47 - 1, 2 ** 35 - 1],
    [2 ** 47, 2 ** 35],
    [2 ** 48 - 1, 2 ** 36 - 1],
    [2 ** 52 - 1, 2 ** 40 - 1],
    [2 ** 52 - 4096, 2 ** 40 - 1],
  ];
  for (const [address, frame] of cases) {
    assert.equal(frameOf(address), frame, formatHex(address));
    assert.equal(addressOf(frame), address - pageOffset(address), formatHex(address));
  }
  assert.equal(pageOffset(2 ** 52 - 1), 0xfff);
  assert.equal(addressOf(2 ** 40), 2 ** 52);
});

Deno.test("canonicalToLinear() maps canonical halves to 48-bit values", () => {
  const cases: [number, number, number][] = [
    [0, 0, 0],
    [0, 0xffffffff, 2 ** 32 - 1],
    [1, 0, 2 ** 32],
    [0x00007fff, 0xffffffff, 2 ** 47 - 1],
    [0xffff8000, 0, 2 ** 47],
    [0xffffffff, 0xffffffff, 2 ** 48 - 1],
    // Signed 32-bit halves, as `| 0` arithmetic produces them, are the same bits.
    [-1, -1, 2 ** 48 - 1],
    [0xffff8000 | 0, 0x1000, 2 ** 47 + 0x1000],
  ];
  for (const [hi, lo, va] of cases) {
    assert.equal(canonicalToLinear(hi, lo), va, `${formatHex(hi >>> 0)}:${formatHex(lo >>> 0)}`);
  }
});

Deno.test("canonicalToLinear() returns -1 when bits 63..47 are not all equal", () => {
  const cases: [number, number][] = [
    [0x00008000, 0], // bit 47 set, 63..48 clear: 2^47 without sign extension
    [0x00010000, 0], // bit 48 only
    [0x000fffff, 0xfffff000], // 2^52 - 4096: a physical value, not a linear one
    [0x7fffffff, 0xffffffff],
    [0x80000000, 0], // bit 63 only
    [0xffff7fff, 0xffffffff], // 63..48 set, 47 clear
    [0xfffeffff, 0],
  ];
  for (const [hi, lo] of cases) {
    assert.equal(canonicalToLinear(hi, lo), -1, `${formatHex(hi)}:${formatHex(lo)}`);
  }
});

Deno.test("linearToCanonical() sign-extends bit 47", () => {
  assert.equal(linearToCanonical(0), 0n);
  assert.equal(linearToCanonical(2 ** 32 - 1), 0xffff_ffffn);
  assert.equal(linearToCanonical(2 ** 32), 0x1_0000_0000n);
  assert.equal(linearToCanonical(2 ** 47 - 1), 0x0000_7fff_ffff_ffffn);
  assert.equal(linearToCanonical(2 ** 47), 0xffff_8000_0000_0000n);
  assert.equal(linearToCanonical(2 ** 48 - 1), 0xffff_ffff_ffff_ffffn);
});

Deno.test("linearHigh32() is the high word of the canonical form", () => {
  assert.equal(linearHigh32(0), 0);
  assert.equal(linearHigh32(2 ** 32 - 1), 0);
  assert.equal(linearHigh32(2 ** 32), 1);
  assert.equal(linearHigh32(2 ** 47 - 1), 0x7fff);
  assert.equal(linearHigh32(2 ** 47), 0xffff8000);
  assert.equal(linearHigh32(2 ** 48 - 1), 0xffffffff);
});

Deno.test("linearFromBigInt() accepts canonical values and returns -1 for the rest", () => {
  const good: [bigint, number][] = [
    [0n, 0],
    [0xffff_ffffn, 2 ** 32 - 1],
    [0x1_0000_0000n, 2 ** 32],
    [0x0000_7fff_ffff_ffffn, 2 ** 47 - 1],
    [0xffff_8000_0000_0000n, 2 ** 47],
    [0xffff_ffff_ffff_ffffn, 2 ** 48 - 1],
  ];
  for (const [address, va] of good) assert.equal(linearFromBigInt(address), va, `${address}`);
  const bad = [
    -1n,
    1n << 47n,
    (1n << 48n) - 1n,
    1n << 48n,
    (1n << 52n) - 1n,
    1n << 63n,
    0x8000_7fff_ffff_ffffn,
    1n << 64n,
    (1n << 64n) + 0xffff_8000_0000_0000n,
  ];
  for (const address of bad) {
    assert.equal(linearFromBigInt(address), -1, `0x${address.toString(16)}`);
  }
});

Deno.test("linearFromBigInt() inverts linearToCanonical() at every edge", () => {
  for (const [va] of EDGES) assert.equal(linearFromBigInt(linearToCanonical(va)), va);
  for (let bit = 0; bit < 48; bit++) {
    assert.equal(linearFromBigInt(linearToCanonical(2 ** bit)), 2 ** bit, `bit ${bit}`);
  }
});

Deno.test("formatLinear() prints canonical 16-digit hex", () => {
  assert.equal(formatLinear(0), "0x0000000000000000");
  assert.equal(formatLinear(2 ** 32 - 1), "0x00000000ffffffff");
  assert.equal(formatLinear(2 ** 32), "0x0000000100000000");
  assert.equal(formatLinear(2 ** 47 - 1), "0x00007fffffffffff");
  assert.equal(formatLinear(2 ** 47), "0xffff800000000000");
  assert.equal(formatLinear(2 ** 48 - 1), "0xffffffffffffffff");
  assert.equal(formatLinear(2 ** 47 + 0x1000), "0xffff800000001000");
});

Deno.test("formatHex() pads to the digits asked for", () => {
  assert.equal(formatHex(0), "0x0");
  assert.equal(formatHex(0x1f, 4), "0x001f");
  assert.equal(formatHex(2 ** 52 - 1), "0xfffffffffffff");
});

Deno.test("parseBigInt() reads hex and decimal with separators", () => {
  assert.equal(parseBigInt("0"), 0n);
  assert.equal(parseBigInt("0x0"), 0n);
  assert.equal(parseBigInt("4294967295"), 2n ** 32n - 1n);
  assert.equal(parseBigInt("0x1_0000_0000"), 2n ** 32n);
  assert.equal(parseBigInt("0xffff_8000_0000_0000"), 0xffff_8000_0000_0000n);
  assert.equal(parseBigInt("0XFFFF800000000000"), 0xffff_8000_0000_0000n);
  assert.equal(parseBigInt("  0x7fff_ffff_ffff \n"), 2n ** 47n - 1n);
  assert.equal(parseBigInt("0xfffffffffffff"), 2n ** 52n - 1n);
  assert.equal(parseBigInt("1_000"), 1000n);
  // Parsing does not check canonical form; linearFromBigInt() does.
  const nonCanonical = parseBigInt("0x0000_8000_0000_0000");
  assert.equal(nonCanonical, 1n << 47n);
  assert.equal(linearFromBigInt(nonCanonical!), -1);
});

Deno.test("parseBigInt() returns undefined for text that is not a number", () => {
  for (const text of ["", " ", "0x", "-1", "+1", "12g", "0xg", "1.5", "0b101", "x10", "1e3"]) {
    assert.equal(parseBigInt(text), undefined, JSON.stringify(text));
  }
});
