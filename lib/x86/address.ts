/**
 * Address arithmetic for the hardware layer: the bit split of a linear address, page
 * sizes, and the edge conversions between 48-bit linear values and 64-bit canonical form.
 *
 * Linear addresses are kept as 48-bit numbers (bits 63..48 dropped): every value in
 * [0, 2^48) is exact in a double, and so is every physical address below 2^52. The
 * canonical (sign-extended) 64-bit form exists only at the edges: parsing, printing, and
 * the instruction interpreter, which holds registers as two 32-bit halves.
 *
 * ```
 *  47        39 38        30 29        21 20        12 11           0
 * +------------+------------+------------+------------+--------------+
 * | PML4 (l4)  | PDPT (l3)  |  PD (l2)   |  PT (l1)   | page offset  |
 * +------------+------------+------------+------------+--------------+
 * ```
 * (Intel SDM Vol. 3A, 4.5, Figure 4-8.)
 *
 * JS bitwise operators work on 32 bits: `x & 0xfff` is right for any x < 2^53, but
 * shifts and ORs on whole addresses are not, so only the helpers here touch address bits.
 *
 * @module
 */

/** Bytes in a 4 KiB page. */
export const PAGE_SIZE = 4096;
/** Bytes in a 2 MiB page (an l2e with PS=1). */
export const PAGE_SIZE_2M = 0x200000;
/** Bytes in a 1 GiB page (an l3e with PS=1). */
export const PAGE_SIZE_1G = 0x40000000;
/** 2^48: one past the largest 48-bit linear value. */
export const LINEAR_LIMIT = 2 ** 48;
/** 2^47: linear values at or above this are the upper (kernel) half when made canonical. */
export const UPPER_HALF_START = 2 ** 47;
/** The largest physical address width of IA-32e paging (SDM 4.1.4). */
export const MAX_PHYSICAL_BITS = 52;

const LEVEL_DIVISOR = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39];

/**
 * The 9-bit table index that `level` (1 = PT .. 4 = PML4) uses for linear address `va`.
 *
 * @example
 * ```ts
 * import { levelIndex } from "./address.ts";
 * import assert from "node:assert/strict";
 * assert.equal(levelIndex(0x7fff_ffff_f000, 4), 255);
 * assert.equal(levelIndex(0x1000, 1), 1);
 * ```
 */
export function levelIndex(va: number, level: number): number {
  return (va / LEVEL_DIVISOR[level]!) & 0x1ff;
}

/** Bytes mapped by one entry at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB, 4: 512 GiB). */
export function levelSpan(level: number): number {
  return LEVEL_DIVISOR[level]!;
}

/** Offset of `address` within its 4 KiB page. */
export function pageOffset(address: number): number {
  return address & 0xfff;
}

/** Frame (or virtual page) number of `address`: address / 4096, rounded down. */
export function frameOf(address: number): number {
  return Math.floor(address / PAGE_SIZE);
}

/** First byte address of frame (or virtual page) `frame`. */
export function addressOf(frame: number): number {
  return frame * PAGE_SIZE;
}

/**
 * The 48-bit linear value of a 64-bit address given as two 32-bit halves, or -1 when the
 * address is not canonical (bits 63..47 not all equal), which is a #GP(0) on x86
 * (SDM Vol. 3A, 3.3.7.1), not a page fault.
 *
 * @example
 * ```ts
 * import { canonicalToLinear } from "./address.ts";
 * import assert from "node:assert/strict";
 * assert.equal(canonicalToLinear(0xffff8000, 0), 2 ** 47);
 * assert.equal(canonicalToLinear(0x00008000, 0), -1);
 * ```
 */
export function canonicalToLinear(hi: number, lo: number): number {
  const top = hi >>> 15; // bits 63..47: 17 bits
  if (top !== 0 && top !== 0x1ffff) return -1;
  return (hi & 0xffff) * 2 ** 32 + (lo >>> 0);
}

/** The high 32 bits of the canonical form of 48-bit linear value `va`. */
export function linearHigh32(va: number): number {
  const hi = Math.floor(va / 2 ** 32) & 0xffff;
  return (hi & 0x8000) !== 0 ? (hi | 0xffff0000) >>> 0 : hi;
}

/** The canonical 64-bit form of 48-bit linear value `va`, as a bigint (edge use only). */
export function linearToCanonical(va: number): bigint {
  const v = BigInt(va);
  return va >= UPPER_HALF_START ? v | 0xffff_0000_0000_0000n : v;
}

/**
 * The 48-bit linear value of a 64-bit address, or -1 when it is not canonical or not in
 * [0, 2^64). Edge use only (parsing, tests).
 */
export function linearFromBigInt(address: bigint): number {
  if (address < 0n || address >= 1n << 64n) return -1;
  return canonicalToLinear(Number(address >> 32n), Number(address & 0xffff_ffffn));
}

/** Formats 48-bit linear value `va` as canonical 16-digit hex: `0xffff800000001000`. */
export function formatLinear(va: number): string {
  return "0x" + linearToCanonical(va).toString(16).padStart(16, "0");
}

/** Formats a physical address or frame number as hex with a `0x` prefix. */
export function formatHex(value: number, digits = 0): string {
  return "0x" + value.toString(16).padStart(digits, "0");
}

/**
 * Parses a number written in hex (`0x...`, `_` separators allowed) or decimal, as a
 * bigint. Returns undefined for text that is neither.
 */
export function parseBigInt(text: string): bigint | undefined {
  const t = text.trim().replaceAll("_", "").toLowerCase();
  if (/^0x[0-9a-f]+$/.test(t) || /^[0-9]+$/.test(t)) return BigInt(t);
  return undefined;
}
