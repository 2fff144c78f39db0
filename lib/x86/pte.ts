/**
 * The IA-32e paging-structure entry format (Intel SDM Vol. 3A, 4.5, Tables 4-14 to 4-20).
 *
 * A 64-bit entry is held as two 32-bit words so that no bigint is needed:
 *
 * ```
 * high word (bits 63..32)                      low word (bits 31..0)
 *  31  30..27  26..20   19 .. 0                 31 .. 12   11..9  8  7  6  5  4   3   2   1  0
 * +---+------+--------+----------+             +---------+------+--+--+--+--+---+---+---+---+-+
 * |XD | PK   |ignored | addr     |             | addr    | avl  |G |PS|D |A |PCD|PWT|U/S|R/W|P|
 * |63 |62..59|58..52  | 51..32   |             | 31..12  |      |  |  |  |  |   |   |   |   | |
 * +---+------+--------+----------+             +---------+------+--+--+--+--+---+---+---+---+-+
 * ```
 * Bit 7 is PS in l3e/l2e (maps a 1 GiB / 2 MiB page), PAT in an l1e, reserved in an l4e.
 * In a large-page entry bit 12 is PAT, so the frame starts at bit 21 (2 MiB) or 30 (1 GiB)
 * and the bits between are reserved (Tables 4-16, 4-18). PK (bits 62..59) is the
 * protection key of a leaf when CR4.PKE=1 (4.6.2); XD (bit 63) is reserved when
 * IA32_EFER.NXE=0. Bits 51..MAXPHYADDR are reserved in every present entry (4.5.4).
 *
 * @module
 */

/** P (bit 0): the entry is present. */
export const PTE_PRESENT = 0x1;
/** R/W (bit 1): writes allowed (subject to CR0.WP for supervisor accesses). */
export const PTE_WRITABLE = 0x2;
/** U/S (bit 2): user-mode accesses allowed. */
export const PTE_USER = 0x4;
/** PWT (bit 3): page-level write-through. */
export const PTE_PWT = 0x8;
/** PCD (bit 4): page-level cache disable. */
export const PTE_PCD = 0x10;
/** A (bit 5): accessed; set by the processor on every entry a translation uses. */
export const PTE_ACCESSED = 0x20;
/** D (bit 6): dirty; set by the processor in the leaf on a write. */
export const PTE_DIRTY = 0x40;
/** PS (bit 7) in an l3e or l2e: the entry maps a 1 GiB or 2 MiB page. */
export const PTE_PAGE_SIZE = 0x80;
/** PAT (bit 7) in an l1e. */
export const PTE_PAT = 0x80;
/** G (bit 8): global translation when CR4.PGE=1. */
export const PTE_GLOBAL = 0x100;
/** Bits 11..9: ignored by the processor, free for software. */
export const PTE_AVAILABLE = 0xe00;
/** PAT (bit 12) in a large-page entry. */
export const PTE_LARGE_PAT = 0x1000;

/** XD (bit 63) as a bit of the high word. */
export const PTE_HI_XD = 0x80000000;
/** Protection key (bits 62..59) as bits of the high word. */
export const PTE_HI_PKEY_SHIFT = 27;
/** Address bits 51..32 as bits of the high word. */
export const PTE_HI_ADDRESS = 0xfffff;
/** Address bits 31..12 of the low word. */
export const PTE_LO_ADDRESS = 0xfffff000;

/** Reserved low-word bits of a 2 MiB leaf: 20..13 (Table 4-18). */
export const PTE_LO_RESERVED_2M = 0x001fe000;
/** Reserved low-word bits of a 1 GiB leaf: 29..13 (Table 4-16). */
export const PTE_LO_RESERVED_1G = 0x3fffe000;

/** Physical address in an entry that references a table or a 4 KiB page. */
export function pteAddress(lo: number, hi: number): number {
  return (hi & PTE_HI_ADDRESS) * 2 ** 32 + ((lo & PTE_LO_ADDRESS) >>> 0);
}

/** Physical base of the page a large-page entry maps (`pageSize` 2 MiB or 1 GiB). */
export function pteLargePageBase(lo: number, hi: number, pageSize: number): number {
  return (hi & PTE_HI_ADDRESS) * 2 ** 32 + ((lo & ~(pageSize - 1)) >>> 0);
}

/** Low word of an entry pointing at physical address `pa` with low flags `flags`. */
export function pteLow(pa: number, flags: number): number {
  return ((pa & PTE_LO_ADDRESS) | (flags & 0xfff)) >>> 0;
}

/** High word of an entry pointing at `pa`, with XD and protection key `pkey`. */
export function pteHigh(pa: number, xd = false, pkey = 0): number {
  const address = Math.floor(pa / 2 ** 32) & PTE_HI_ADDRESS;
  return (address | ((pkey & 0xf) << PTE_HI_PKEY_SHIFT) | (xd ? PTE_HI_XD : 0)) >>> 0;
}

/** The protection key of a leaf entry (bits 62..59). */
export function ptePkey(hi: number): number {
  return (hi >>> PTE_HI_PKEY_SHIFT) & 0xf;
}

/**
 * High-word mask of the reserved address bits 51..`maxPhyAddr` (SDM 4.5.4); 0 when
 * MAXPHYADDR is 52.
 */
export function reservedHighMask(maxPhyAddr: number): number {
  if (maxPhyAddr >= 52) return 0;
  return (PTE_HI_ADDRESS & ~((1 << (maxPhyAddr - 32)) - 1)) >>> 0;
}

/** Names of the set flags of an entry, for explanations: `P RW US A D PS G XD`. */
export function describePteFlags(lo: number, hi: number, level: number): string {
  const names: string[] = [];
  if (lo & PTE_PRESENT) names.push("P");
  names.push(lo & PTE_WRITABLE ? "RW" : "RO");
  names.push(lo & PTE_USER ? "US" : "S");
  if (lo & PTE_PWT) names.push("PWT");
  if (lo & PTE_PCD) names.push("PCD");
  if (lo & PTE_ACCESSED) names.push("A");
  if (lo & PTE_DIRTY) names.push("D");
  if (lo & PTE_PAGE_SIZE) names.push(level === 1 ? "PAT" : "PS");
  if (lo & PTE_GLOBAL) names.push("G");
  if (ptePkey(hi) !== 0) names.push(`PK${ptePkey(hi)}`);
  if (hi & PTE_HI_XD) names.push("XD");
  return names.join(" ");
}
