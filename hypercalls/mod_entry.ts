/**
 * The checked update of one page-table entry (Xen's mod_l1_entry .. mod_l4_entry): the
 * new entry's flags are checked against the level's disallow mask; a change of only
 * whitelisted bits (A, D, NX, AVAIL, GLOBAL, USER) is written at once (the fast path,
 * narrowed by XSA-182); anything else takes the new entry's references first (full
 * validation), writes it, then drops the old entry's references. An L4 entry in Xen's
 * reserved slots is refused.
 *
 * @module
 */

import { PTE_ACCESSED, PTE_DIRTY, PTE_PRESENT } from "../lib/x86/pte.ts";
import { PGT_L4 } from "../lib/memory/page_types.ts";
import { XEN_EINVAL } from "./abi.ts";
import {
  getPageFromL1e,
  getPageFromUpperEntry,
  hasEntryChanged,
  isGuestL4Slot,
  l1DisallowMask,
  pteFlags,
  putPageFromL1e,
  putPageFromUpperEntry,
  UPPER_DISALLOW_MASK,
} from "./page_refs.ts";
import type { PvDomain } from "./pv_domain.ts";

/**
 * Updates the l1e at machine address `entryMa` of a validated L1 table to (`hi`:`lo`),
 * mapping frames of `pgOwner`. With `preserveAd` the A/D bits already in the entry are
 * kept (MMU_PT_UPDATE_PRESERVE_AD). Returns 0 or -errno; on failure nothing changed.
 *
 * @example A writable mapping of a frame that is a page table is refused
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { modL1Entry } from "./mod_entry.ts";
 * import { XEN_EBUSY } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * const kernel = new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) });
 * kernel.boot();
 * const pid = kernel.spawn();
 * kernel.writeU32(pid, 0x600000, 1);
 * const gpa = kernel.leafEntryAddress(pid, 0x601000); // an l1e of the process, still empty
 * const ma = platform.p2mList[Math.floor(gpa / 4096)]! * 4096 + (gpa % 4096);
 * const d = platform.domain; // its CR3 holds the process's L4 now
 * assert.equal(modL1Entry(d, ma, (d.guestTable * 4096) | 0x7, 0, false, d.id), -XEN_EBUSY);
 * assert.equal(modL1Entry(d, ma, (d.guestTable * 4096) | 0x5, 0, false, d.id), 0); // read-only
 * ```
 */
export function modL1Entry(
  d: PvDomain,
  entryMa: number,
  lo: number,
  hi: number,
  preserveAd: boolean,
  pgOwner: number,
): number {
  const memory = d.memory;
  const oldLo = memory.read32(entryMa);
  const oldHi = memory.read32(entryMa + 4);
  if ((lo & PTE_PRESENT) !== 0) {
    if ((pteFlags(lo, hi) & l1DisallowMask(d)) !== 0) return -XEN_EINVAL;
    if (!hasEntryChanged(oldLo, oldHi, lo, hi)) {
      writeEntry(d, entryMa, lo, hi, oldLo, preserveAd);
      return 0;
    }
    const rc = getPageFromL1e(d, lo, hi, pgOwner);
    if (rc < 0) return rc;
    if (rc > 0) lo = (lo ^ rc) >>> 0;
  }
  writeEntry(d, entryMa, lo, hi, oldLo, preserveAd);
  putPageFromL1e(d, oldLo, oldHi);
  return 0;
}

/**
 * Updates the entry at `entryMa` of the `level` (2..4) table `tableMfn`: a present entry
 * must reference a table of the next level (or be a linear link Xen allows). Returns 0 or
 * -errno (-EINVAL for a reserved L4 slot, disallowed flags, a frame that is not the
 * domain's or cannot take the type); on failure nothing changed.
 */
export function modUpperEntry(
  d: PvDomain,
  level: number,
  entryMa: number,
  lo: number,
  hi: number,
  tableMfn: number,
  preserveAd: boolean,
): number {
  if (level === PGT_L4 && !isGuestL4Slot((entryMa & 0xfff) >>> 3)) return -XEN_EINVAL;
  const memory = d.memory;
  const oldLo = memory.read32(entryMa);
  const oldHi = memory.read32(entryMa + 4);
  if ((lo & PTE_PRESENT) !== 0) {
    if ((pteFlags(lo, hi) & UPPER_DISALLOW_MASK) !== 0) return -XEN_EINVAL;
    if (!hasEntryChanged(oldLo, oldHi, lo, hi)) {
      writeEntry(d, entryMa, lo, hi, oldLo, preserveAd);
      return 0;
    }
    const rc = getPageFromUpperEntry(d, level, lo, hi, tableMfn);
    if (rc < 0) return rc;
  }
  writeEntry(d, entryMa, lo, hi, oldLo, preserveAd);
  putPageFromUpperEntry(d, oldLo, oldHi, tableMfn);
  return 0;
}

// UPDATE_ENTRY: the store (with the old A/D bits ORed in for PRESERVE_AD).
function writeEntry(
  d: PvDomain,
  entryMa: number,
  lo: number,
  hi: number,
  oldLo: number,
  preserveAd: boolean,
): void {
  const value = preserveAd ? (lo | (oldLo & (PTE_ACCESSED | PTE_DIRTY))) >>> 0 : lo >>> 0;
  d.memory.write32(entryMa, value);
  d.memory.write32(entryMa + 4, hi >>> 0);
}
