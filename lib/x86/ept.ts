/**
 * The EPT (extended page table) entry format, the EPT pointer, and what an EPT-induced VM
 * exit reports (Intel SDM Vol. 3C: 29.3.2 "EPT Translation Mechanism", Tables 29-1 to
 * 29-6; 29.3.3 "EPT-Induced VM Exits"; 29.3.5 "Accessed and Dirty Flags for EPT";
 * Table 28-7 "Exit Qualification for EPT Violations"; exit reasons 48 and 49 from
 * Appendix C. Older editions number the same sections 28.2.x and 27-7).
 *
 * An EPT entry, like a PTE, is held as two 32-bit words:
 *
 * ```
 * high word (bits 63..32)                   low word (bits 31..0)
 *  31    30..20   19 .. 0                    31 .. 12   11  10  9  8  7    6    5..3   2 1 0
 * +----+--------+----------+                +---------+---+---+--+--+--+-----+------+-+-+-+
 * |SVE |ignored | addr     |                | addr    |ign|UX |D |A |PS|IPAT | MT   |X|W|R|
 * | 63 | 62..52 | 51..32   |                | 31..12  |   |   |  |  |  |     |      | | | |
 * +----+--------+----------+                +---------+---+---+--+--+--+-----+------+-+-+-+
 * ```
 * - R/W/X (bits 2..0): read, write, execute. An entry is present when any of them is set;
 *   all three clear is "not present" (an EPT violation); W without R is a
 *   misconfiguration. Execute-only (X alone) is allowed: the lab's processor reports
 *   execute-only support (IA32_VMX_EPT_VPID_CAP bit 0), as every EPT processor KVM runs on.
 * - MT (5..3) and IPAT (6) exist only in an entry that maps a page (a leaf): the memory
 *   type (0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3 and 7 are reserved: a misconfiguration) and
 *   "ignore the guest's PAT". In a PML4E bits 7..3 are reserved; in a PDPTE or PDE that
 *   references a table bits 6..3 are.
 * - PS (7): in a PDPTE maps a 1 GiB page, in a PDE a 2 MiB page; reserved in a PML4E,
 *   ignored in a PTE. A large leaf's frame starts at bit 30 / 21: bits 29..12 / 20..12
 *   are reserved.
 * - A (8) and D (9): accessed and dirty, only when EPTP bit 6 enables them (29.3.5); A in
 *   every entry, D only in leaves. Without that bit they are ignored.
 * - UX (10) is user-execute under mode-based execute control, SVE (63) suppresses #VE:
 *   neither is modelled (both ignored).
 * - Bits 51..MAXPHYADDR of the address are reserved in every present entry.
 *
 * @module
 */

import { PAGE_SIZE } from "./address.ts";
import { PTE_HI_ADDRESS, PTE_LO_ADDRESS } from "./pte.ts";

/** R (bit 0): reads allowed (guest paging-structure reads are reads, 29.3.3.2). */
export const EPT_READ = 0x1;
/** W (bit 1): writes allowed (guest A/D updates are writes). */
export const EPT_WRITE = 0x2;
/** X (bit 2): instruction fetches allowed. */
export const EPT_EXECUTE = 0x4;
/** R | W | X. */
export const EPT_RWX = 0x7;
/** Shift of the memory type (bits 5..3) in a leaf. */
export const EPT_MEMTYPE_SHIFT = 3;
/** Mask of the memory type (bits 5..3) in a leaf. */
export const EPT_MEMTYPE_MASK = 0x38;
/** Memory type UC (uncacheable). */
export const EPT_MEMTYPE_UC = 0;
/** Memory type WB (write-back), what a hypervisor gives RAM. */
export const EPT_MEMTYPE_WB = 6;
/** IPAT (bit 6) in a leaf: ignore the guest's PAT memory type. */
export const EPT_IGNORE_PAT = 0x40;
/** PS (bit 7): a PDPTE maps 1 GiB, a PDE 2 MiB. */
export const EPT_PAGE_SIZE = 0x80;
/** A (bit 8): accessed, set by the processor when EPTP bit 6 is 1. */
export const EPT_ACCESSED = 0x100;
/** D (bit 9): dirty, set in a leaf on a write when EPTP bit 6 is 1. */
export const EPT_DIRTY = 0x200;
/** Reserved low bits of a present PML4E: 7..3. */
export const EPT_LO_RESERVED_L4 = 0xf8;
/** Reserved low bits of a PDPTE or PDE that references a table: 6..3. */
export const EPT_LO_RESERVED_TABLE = 0x78;
/** Reserved low bits of a 2 MiB leaf: 20..12. */
export const EPT_LO_RESERVED_2M = 0x001ff000;
/** Reserved low bits of a 1 GiB leaf: 29..12. */
export const EPT_LO_RESERVED_1G = 0x3ffff000;
/**
 * The leaf KVM writes for an MMIO GFN (`VMX_EPT_MISCONFIG_WX_VALUE`): W and X without R,
 * a misconfiguration, so every access to the frame exits as EPT_MISCONFIG and the
 * hypervisor knows at once that it is MMIO.
 */
export const EPT_MISCONFIG_WX = EPT_WRITE | EPT_EXECUTE;

/** EPTP bits 2..0: memory type of the EPT paging structures (WB). */
export const EPTP_MEMTYPE_WB = 6;
/** EPTP bits 5..3: page-walk length minus one; 3 is the 4-level walk modelled here. */
export const EPTP_WALK_LENGTH_4 = 3 << 3;
/** EPTP bit 6: enable accessed and dirty flags for EPT (29.3.5). */
export const EPTP_AD_ENABLE = 0x40;

/** Basic exit reason 48: EPT violation (SDM Appendix C). */
export const EXIT_REASON_EPT_VIOLATION = 48;
/** Basic exit reason 49: EPT misconfiguration. */
export const EXIT_REASON_EPT_MISCONFIG = 49;

/** Exit qualification bit 0: the access was a data read (Table 28-7). */
export const EPT_QUAL_READ = 0x1;
/** Bit 1: the access was a data write (with EPT A/D on, guest paging-structure reads set 0 and 1). */
export const EPT_QUAL_WRITE = 0x2;
/** Bit 2: the access was an instruction fetch. */
export const EPT_QUAL_FETCH = 0x4;
/** Bits 5..3: the AND of R, W, X over the EPT entries used; shift the rights by this. */
export const EPT_QUAL_RIGHTS_SHIFT = 3;
/** Bit 3: the GPA was readable. */
export const EPT_QUAL_READABLE = 0x8;
/** Bit 4: the GPA was writable. */
export const EPT_QUAL_WRITABLE = 0x10;
/** Bit 5: the GPA was executable. */
export const EPT_QUAL_EXECUTABLE = 0x20;
/** Bit 7: the guest-linear address field is valid. */
export const EPT_QUAL_LINEAR_VALID = 0x80;
/**
 * Bit 8 (with bit 7): the access was to the translation of a linear address (the final
 * GPA); clear, it was to a guest paging-structure entry (a read of it or its A/D update).
 */
export const EPT_QUAL_FINAL = 0x100;

/** Low word of an EPT entry pointing at host-physical `hpa` with low flags `flags`. */
export function eptLow(hpa: number, flags: number): number {
  return ((hpa & PTE_LO_ADDRESS) | (flags & 0xfff)) >>> 0;
}

/** High word of an EPT entry pointing at host-physical `hpa`. */
export function eptHigh(hpa: number): number {
  return (Math.floor(hpa / 2 ** 32) & PTE_HI_ADDRESS) >>> 0;
}

/** Host-physical address in an entry that references a table or a 4 KiB page. */
export function eptAddress(lo: number, hi: number): number {
  return (hi & PTE_HI_ADDRESS) * 2 ** 32 + ((lo & PTE_LO_ADDRESS) >>> 0);
}

/** Host-physical base of the page a large leaf maps (`pageSize` 2 MiB or 1 GiB). */
export function eptLargePageBase(lo: number, hi: number, pageSize: number): number {
  return (hi & PTE_HI_ADDRESS) * 2 ** 32 + ((lo & ~(pageSize - 1) & PTE_LO_ADDRESS) >>> 0);
}

/** Whether an entry is present: any of R, W, X set (29.3.2). */
export function isEptPresent(lo: number): boolean {
  return (lo & EPT_RWX) !== 0;
}

/** The memory type (bits 5..3) of a leaf. */
export function eptMemoryType(lo: number): number {
  return (lo & EPT_MEMTYPE_MASK) >>> EPT_MEMTYPE_SHIFT;
}

/**
 * Whether a present entry read at `level` (4 = PML4E .. 1 = PTE) is misconfigured
 * (29.3.3.1): W without R; a reserved bit (`rsvdHigh`, the high-word mask of bits
 * 51..MAXPHYADDR from `reservedHighMask`; bits 7..3 of a PML4E; bits 6..3 of an entry
 * that references a table; the bits between the frame and bit 12 of a large leaf); or a
 * leaf whose memory type is 2, 3 or 7. The caller has checked {@link isEptPresent}.
 *
 * @example
 * ```ts
 * import { isEptMisconfigured, EPT_READ, EPT_WRITE, EPT_EXECUTE, EPT_MISCONFIG_WX,
 *   EPT_MEMTYPE_WB, EPT_MEMTYPE_SHIFT, EPT_PAGE_SIZE } from "./ept.ts";
 * import assert from "node:assert/strict";
 * const wb = EPT_MEMTYPE_WB << EPT_MEMTYPE_SHIFT;
 * assert.equal(isEptMisconfigured(EPT_READ | EPT_WRITE | wb, 0, 1, 0), false);
 * assert.equal(isEptMisconfigured(EPT_EXECUTE | wb, 0, 1, 0), false); // execute-only
 * assert.equal(isEptMisconfigured(EPT_MISCONFIG_WX | wb, 0, 1, 0), true); // W without R
 * assert.equal(isEptMisconfigured(EPT_READ | (2 << EPT_MEMTYPE_SHIFT), 0, 1, 0), true);
 * assert.equal(isEptMisconfigured(EPT_READ | EPT_PAGE_SIZE, 0, 4, 0), true); // PS in a PML4E
 * assert.equal(isEptMisconfigured(EPT_READ | wb | EPT_PAGE_SIZE | 0x1000, 0, 2, 0), true);
 * ```
 */
export function isEptMisconfigured(
  lo: number,
  hi: number,
  level: number,
  rsvdHigh: number,
): boolean {
  if ((lo & (EPT_READ | EPT_WRITE)) === EPT_WRITE) return true;
  if ((hi & rsvdHigh) !== 0) return true;
  if (level === 4) return (lo & EPT_LO_RESERVED_L4) !== 0;
  if (level !== 1 && (lo & EPT_PAGE_SIZE) === 0) return (lo & EPT_LO_RESERVED_TABLE) !== 0;
  const type = (lo & EPT_MEMTYPE_MASK) >>> EPT_MEMTYPE_SHIFT;
  if (type === 2 || type === 3 || type === 7) return true;
  if (level === 2) return (lo & EPT_LO_RESERVED_2M) !== 0;
  if (level === 3) return (lo & EPT_LO_RESERVED_1G) !== 0;
  return false;
}

/**
 * An EPT pointer (VMCS field, 24.6.11): the PML4 table at host-physical `pml4Hpa`
 * (4 KiB aligned), write-back, a 4-level walk, and accessed/dirty flags if
 * `adEnabled`. Throws a RangeError for an unaligned or negative address.
 *
 * @example
 * ```ts
 * import { eptpOf, eptpTableAddress, isEptpAdEnabled } from "./ept.ts";
 * import assert from "node:assert/strict";
 * const eptp = eptpOf(0x5000, true);
 * assert.equal(eptp, 0x505e); // 0x5000 | A/D (0x40) | walk length 4 (0x18) | WB (6)
 * assert.equal(eptpTableAddress(eptp), 0x5000);
 * assert.ok(isEptpAdEnabled(eptp));
 * ```
 */
export function eptpOf(pml4Hpa: number, adEnabled: boolean): number {
  if (!Number.isInteger(pml4Hpa) || pml4Hpa < 0 || pml4Hpa % PAGE_SIZE !== 0) {
    throw new RangeError(`Cannot make an EPTP for table ${pml4Hpa}: need a 4 KiB-aligned address`);
  }
  return pml4Hpa + (adEnabled ? EPTP_AD_ENABLE : 0) + EPTP_WALK_LENGTH_4 + EPTP_MEMTYPE_WB;
}

/** The PML4 table address of an EPTP (bits 51..12). */
export function eptpTableAddress(eptp: number): number {
  return eptp - (eptp % PAGE_SIZE);
}

/** Whether an EPTP enables accessed and dirty flags (bit 6). */
export function isEptpAdEnabled(eptp: number): boolean {
  return (eptp & EPTP_AD_ENABLE) !== 0;
}

/** Names of the set flags of an EPT entry, for explanations: `R W X WB IPAT PS A D`. */
export function describeEptFlags(lo: number, level: number): string {
  const names: string[] = [];
  if (lo & EPT_READ) names.push("R");
  if (lo & EPT_WRITE) names.push("W");
  if (lo & EPT_EXECUTE) names.push("X");
  const isLeaf = level === 1 || (level !== 4 && (lo & EPT_PAGE_SIZE) !== 0);
  if (isLeaf) {
    names.push(["UC", "WC", "MT2", "MT3", "WT", "WP", "WB", "MT7"][eptMemoryType(lo)]!);
    if (lo & EPT_IGNORE_PAT) names.push("IPAT");
    if (level !== 1) names.push("PS");
  }
  if (lo & EPT_ACCESSED) names.push("A");
  if (isLeaf && (lo & EPT_DIRTY)) names.push("D");
  return names.join(" ");
}

/**
 * An exit qualification of an EPT violation in words, e.g.
 * `read, paging-structure, rights -, linear valid`.
 *
 * @example
 * ```ts
 * import { describeEptQualification } from "./ept.ts";
 * import assert from "node:assert/strict";
 * assert.equal(describeEptQualification(0x181), "read, final, rights -, linear valid");
 * assert.equal(describeEptQualification(0x9b), "read write, paging-structure, rights RW, linear valid");
 * ```
 */
export function describeEptQualification(qualification: number): string {
  const access = [
    qualification & EPT_QUAL_READ ? "read" : "",
    qualification & EPT_QUAL_WRITE ? "write" : "",
    qualification & EPT_QUAL_FETCH ? "fetch" : "",
  ].filter((s) => s !== "").join(" ");
  const r = (qualification >>> EPT_QUAL_RIGHTS_SHIFT) & EPT_RWX;
  const rights = (r & EPT_READ ? "R" : "") + (r & EPT_WRITE ? "W" : "") +
    (r & EPT_EXECUTE ? "X" : "");
  return `${access || "none"}, ${
    qualification & EPT_QUAL_FINAL ? "final" : "paging-structure"
  }, rights ${rights || "-"}, ${
    qualification & EPT_QUAL_LINEAR_VALID ? "linear valid" : "no linear address"
  }`;
}
