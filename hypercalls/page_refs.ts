/**
 * The reference and type rules of Xen's PV memory management (`xen/arch/x86/mm.c`):
 * general references (get_page / put_page), type references (get_page_type /
 * put_page_type) with validation of a frame when it first takes a table type
 * (alloc_lN_table) and devalidation when its last type reference goes (free_lN_table),
 * the references one page-table entry holds (get_page_from_lNe / put_page_from_lNe), the
 * disallowed-flag masks, and linear (same-level) page tables as Xen allows them.
 *
 * ```
 * an entry holds                       general ref   type ref
 * present l1e, read-only               1             -
 * present l1e, writable                1             1 (writable)
 * present l2e / l3e / l4e              1             1 (L1 / L2 / L3)
 * linear l2e..l4e (read-only)          1             1 (same level), none if it maps itself
 * I/O frame in an l1e                  -             -
 * a pin, CR3                           1             1 (the table's level)
 * ```
 *
 * Differences from Xen, all because nothing runs concurrently here: no preemption
 * (`-ERESTART`, PGT_partial), no page locks, no cmpxchg retries; the 64-bit PV entry
 * adjustments (`adjust_guest_lNe`, for a kernel in ring 3) are left out because the lab's
 * kernel runs at CPL 0; and the L1TF checks of non-present entries (XSA-273) are left out
 * because the lab models no speculative execution.
 *
 * @module
 */

import { pteAddress } from "../lib/x86/pte.ts";
import {
  PAGE_PINNED,
  PAGE_VALIDATED,
  PGT_L1,
  PGT_L4,
  PGT_NONE,
  PGT_SHARED,
  PGT_WRITABLE,
} from "../lib/memory/page_types.ts";
import type { Mfn } from "../lib/memory/types.ts";
import { DOMID_IO, XEN_EBUSY, XEN_EINVAL, XEN_EPERM } from "./abi.ts";
import {
  PV_FLUSH_TYPE,
  type PvDomain,
  VALIDATE_ENTRIES,
  VALIDATE_TABLES,
  XEN_FIRST_L4_SLOT,
  XEN_LAST_L4_SLOT,
} from "./pv_domain.ts";

// Flags in Xen's 24-bit form (get_pte_flags): PTE bits 11..0 as bits 11..0, PTE bits
// 63..52 as bits 23..12.

/** _PAGE_PRESENT. */
const F_PRESENT = 0x1;
/** _PAGE_RW. */
const F_RW = 0x2;
/** _PAGE_PWT | _PAGE_PCD | _PAGE_PAT: the cache-attribute bits of an l1e. */
const F_CACHE_ATTRS = 0x98;
/** _PAGE_PWT. */
const F_PWT = 0x8;
/** _PAGE_PCD. */
const F_PCD = 0x10;
/** _PAGE_PAT (bit 7 of an l1e). */
const F_PAT = 0x80;
/** _PAGE_GLOBAL. */
const F_GLOBAL = 0x100;
/** _PAGE_GNTTAB: PTE bit 62, reserved for grant mappings. */
export const F_GNTTAB = 0x400000;
/**
 * base_disallow_mask: everything but P, RW, US, A, D, AVAIL (11..9), AVAIL_HIGH (62..52)
 * and NX: PWT, PCD, PSE/PAT and GLOBAL.
 */
export const BASE_DISALLOW_MASK = 0x198;
/** L1_DISALLOW_MASK: base plus _PAGE_GNTTAB, minus GLOBAL (global leaves are allowed). */
export const L1_DISALLOW_MASK: number = (BASE_DISALLOW_MASK | F_GNTTAB) & ~F_GLOBAL;
/** L2..L4 (64-bit PV): the base mask, so PSE (superpages) and GLOBAL are refused. */
export const UPPER_DISALLOW_MASK: number = BASE_DISALLOW_MASK;
/**
 * FASTPATH_FLAG_WHITELIST: bits a guest may change in a present entry without
 * re-validation: NX, AVAIL_HIGH, AVAIL, GLOBAL, D, A, USER (XSA-182 narrowed it to these).
 */
export const FASTPATH_FLAG_WHITELIST = 0x800000 | 0x7ff000 | 0xe00 | 0x100 | 0x40 | 0x20 | 0x4;
// l1e_has_changed(old, new, ~WHITELIST): the frame bits (51..12) or any other flag differ.
const CHANGED_MASK_LO = (0xfffff000 | (~FASTPATH_FLAG_WHITELIST & 0xfff)) >>> 0;
const CHANGED_MASK_HI = 0x000fffff | (((~FASTPATH_FLAG_WHITELIST >>> 12) & 0xfff) << 20);

/** Xen's flags (24-bit form) of the entry (`hi`:`lo`). */
export function pteFlags(lo: number, hi: number): number {
  return (lo & 0xfff) | ((hi >>> 20) << 12);
}

/** The frame an entry names. */
export function pteMfn(lo: number, hi: number): number {
  return pteAddress(lo, hi) / 4096;
}

/** Whether `new` differs from `old` beyond the fast-path whitelist (l1e_has_changed). */
export function hasEntryChanged(oldLo: number, oldHi: number, lo: number, hi: number): boolean {
  return ((oldLo ^ lo) & CHANGED_MASK_LO) !== 0 || ((oldHi ^ hi) & CHANGED_MASK_HI) !== 0;
}

/** The L1 disallow mask of domain `d`: cache bits are allowed with I/O permission. */
export function l1DisallowMask(d: PvDomain): number {
  return d.hasIoPermission ? L1_DISALLOW_MASK & ~F_CACHE_ATTRS : L1_DISALLOW_MASK;
}

/** Whether `slot` of a 64-bit PV top level belongs to the guest (is_guest_l4_slot). */
export function isGuestL4Slot(slot: number): boolean {
  return slot < XEN_FIRST_L4_SLOT || slot > XEN_LAST_L4_SLOT;
}

// ---------------------------------------------------------------------------------------
// General references.
// ---------------------------------------------------------------------------------------

/**
 * get_page(mfn, d): one general reference, if `mfn` is RAM allocated to `owner` and its
 * count can grow (Xen keeps two references in reserve against overflow). Returns whether
 * it was taken.
 */
export function getPage(d: PvDomain, mfn: number, owner: number): boolean {
  if (!d.isValidMfn(mfn)) return false;
  const types = d.types;
  const count = types.count[mfn]!;
  if (count === 0 || count >= types.maxCount - 1) return false;
  if (d.frames.owner[mfn] !== owner) return false;
  types.count[mfn] = count + 1;
  return true;
}

/**
 * put_page: drops a general reference. The last reference frees the frame
 * (free_domheap_page); only a dying domain's frames get there.
 */
export function putPage(d: PvDomain, mfn: number): void {
  const types = d.types;
  const count = types.count[mfn]! - 1;
  if (count < 0) throw new RangeError(`Cannot put mfn ${mfn}: its count is already 0`);
  types.count[mfn] = count;
  if (count === 0) {
    d.frames.free(mfn as Mfn);
    types.release(mfn);
    d.m2p[mfn] = -1;
  }
}

// ---------------------------------------------------------------------------------------
// Type references.
// ---------------------------------------------------------------------------------------

/**
 * get_page_type: one type reference of `type`. At type count 0 the frame may change type;
 * a table type is then validated (every entry checked, recursively). A frame whose type
 * changes may still be in a stale TLB entry: unless a full flush happened since its last
 * type reference went, the TLB is flushed first (tlbflush_filter). Returns 0, or -EINVAL
 * (other type in use, overflow, validation failure) / the validation's errno.
 */
export function getPageType(d: PvDomain, mfn: number, type: number): number {
  const types = d.types;
  const count = types.typeCount[mfn]!;
  if (count >= types.maxTypeCount) return -XEN_EINVAL; // type count overflow
  if (count === 0) {
    if (types.type[mfn] !== type) {
      if (types.tlbflushStamp[mfn] === d.flushClock) {
        d.counts[PV_FLUSH_TYPE]++;
        d.flushTlbAll();
      }
      types.type[mfn] = type;
      types.flags[mfn] = type === PGT_WRITABLE || type === PGT_SHARED ? PAGE_VALIDATED : 0;
    }
    types.typeCount[mfn] = 1;
    if ((types.flags[mfn]! & PAGE_VALIDATED) === 0) {
      types.linearCount[mfn] = 0;
      const rc = allocPageType(d, mfn, type);
      if (rc !== 0) {
        types.type[mfn] = PGT_NONE;
        types.typeCount[mfn] = 0;
        types.flags[mfn] = 0;
        return rc;
      }
      types.flags[mfn] |= PAGE_VALIDATED;
    }
    return 0;
  }
  if (types.type[mfn] !== type) return -XEN_EINVAL; // "Bad type"
  if ((types.flags[mfn]! & PAGE_VALIDATED) === 0) return -XEN_EINVAL; // being validated
  types.typeCount[mfn] = count + 1;
  return 0;
}

/**
 * put_page_type: drops a type reference. The last one of a validated table devalidates it
 * (its entries' references are dropped, recursively) and stamps the frame with the flush
 * clock. `ptMfn` is the table whose entry held the reference (-1 for none): a reference
 * between tables of the same level was a linear one, and its counts go too.
 */
export function putPageType(d: PvDomain, mfn: number, ptMfn: number): void {
  const types = d.types;
  const count = types.typeCount[mfn]!;
  if (count <= 0) throw new RangeError(`Cannot put the type of mfn ${mfn}: its count is 0`);
  const type = types.type[mfn]!;
  const linear = ptMfn >= 0 && types.type[ptMfn] === type;
  if (count === 1) {
    if (type >= PGT_L1 && type <= PGT_L4 && (types.flags[mfn]! & PAGE_VALIDATED) !== 0) {
      types.flags[mfn] &= ~PAGE_VALIDATED;
      freePageType(d, mfn, type);
    }
    types.tlbflushStamp[mfn] = d.flushClock;
    types.typeCount[mfn] = 0;
  } else {
    types.typeCount[mfn] = count - 1;
  }
  if (linear) {
    types.linearCount[mfn]++; // dec_linear_uses
    types.linearCount[ptMfn]--; // dec_linear_entries
  }
}

/**
 * get_page_and_type_from_mfn: a general and a type reference of `type` to a frame of
 * domain `d`; -EINVAL if it is not `d`'s, else getPageType's result.
 */
export function getPageAndType(d: PvDomain, mfn: number, type: number): number {
  if (!getPage(d, mfn, d.id)) return -XEN_EINVAL;
  const rc = getPageType(d, mfn, type);
  if (rc !== 0) putPage(d, mfn);
  return rc;
}

/** put_page_and_type. */
export function putPageAndType(d: PvDomain, mfn: number): void {
  putPageType(d, mfn, -1);
  putPage(d, mfn);
}

// ---------------------------------------------------------------------------------------
// The references of one entry.
// ---------------------------------------------------------------------------------------

/**
 * get_page_from_l1e: takes what a present l1e (`hi`:`lo`) of domain `d`'s table needs,
 * for frames owned by `pgOwner` (d.id, or DOMID_IO). Returns 0, a positive mask of flags
 * to flip (an I/O mapping's cache attributes are forced to UC), or -errno: -EINVAL for
 * disallowed flags, -EPERM for I/O memory without permission, -EBUSY for a frame that is
 * not the owner's, whose count is at its limit, or that cannot be writable (a table).
 */
export function getPageFromL1e(d: PvDomain, lo: number, hi: number, pgOwner: number): number {
  if ((lo & F_PRESENT) === 0) return 0;
  d.counts[VALIDATE_ENTRIES]++;
  if ((pteFlags(lo, hi) & l1DisallowMask(d)) !== 0) return -XEN_EINVAL;
  const mfn = pteMfn(lo, hi);
  if (!d.isValidMfn(mfn)) {
    // Not RAM: I/O memory, with the caller's permission (DOMID_IO reverts to it).
    if (!d.isIoPermitted(mfn)) return mfn === 2 ** 40 - 1 ? -XEN_EINVAL : -XEN_EPERM;
    switch (lo & F_CACHE_ATTRS) {
      case 0: // WB: MMIO must not be cacheable
        return F_PWT | F_PCD;
      case F_PWT: // WT
      case F_PWT | F_PAT: // WP
        return F_PCD | (lo & F_PAT);
      default:
        return 0;
    }
  }
  const types = d.types;
  const count = types.count[mfn]!;
  // page_get_owner_and_reference: no owner for a free frame or one at its count limit.
  if (count === 0 || count >= types.maxCount - 1) return -XEN_EBUSY;
  if (d.frames.owner[mfn] !== pgOwner || pgOwner === DOMID_IO) return -XEN_EBUSY;
  types.count[mfn] = count + 1;
  if ((lo & F_RW) !== 0 && getPageType(d, mfn, PGT_WRITABLE) !== 0) {
    putPage(d, mfn);
    return -XEN_EBUSY;
  }
  return 0;
}

/** put_page_from_l1e: drops what a present l1e held (nothing for I/O memory). */
export function putPageFromL1e(d: PvDomain, lo: number, hi: number): void {
  if ((lo & F_PRESENT) === 0) return;
  const mfn = pteMfn(lo, hi);
  if (!d.isValidMfn(mfn)) return;
  if ((lo & F_RW) !== 0) putPageAndType(d, mfn);
  else putPage(d, mfn);
}

/**
 * get_page_from_l2e / l3e / l4e: a present entry of a `level` table at `ptMfn` needs a
 * reference of the next level's type to its target, or is a linear link Xen allows.
 * Returns 1 (not present), 0, or -errno (-EINVAL for flags, ownership or type).
 */
export function getPageFromUpperEntry(
  d: PvDomain,
  level: number,
  lo: number,
  hi: number,
  ptMfn: number,
): number {
  if ((lo & F_PRESENT) === 0) return 1;
  d.counts[VALIDATE_ENTRIES]++;
  if ((pteFlags(lo, hi) & UPPER_DISALLOW_MASK) !== 0) return -XEN_EINVAL;
  const mfn = pteMfn(lo, hi);
  const rc = getPageAndType(d, mfn, level - 1);
  if (rc === -XEN_EINVAL && getLinearPageTable(d, level, lo, mfn, ptMfn)) return 0;
  return rc;
}

/** put_page_from_l2e / l3e / l4e (a link to its own table held nothing). */
export function putPageFromUpperEntry(d: PvDomain, lo: number, hi: number, ptMfn: number): void {
  if ((lo & F_PRESENT) === 0) return;
  const mfn = pteMfn(lo, hi);
  if (mfn === ptMfn) return;
  putPageType(d, mfn, ptMfn);
  putPage(d, mfn);
}

/**
 * get_lN_linear_pagetable (with XSA-240's counts): a `level` entry of table `ptMfn` may
 * point at a table of the same level only if the entry is read-only, the target is a
 * validated table of that level owned by the domain, and the containing table is not
 * itself a linear target while the target holds no linear entries of its own (one level
 * deep). An entry pointing at its own table takes no reference.
 */
function getLinearPageTable(
  d: PvDomain,
  level: number,
  lo: number,
  mfn: number,
  ptMfn: number,
): boolean {
  if (!d.linearPageTables || (lo & F_RW) !== 0) return false;
  if (mfn === ptMfn) return true;
  const types = d.types;
  if (d.frames.owner[ptMfn] !== d.id) return false;
  if (!getPage(d, mfn, d.id)) return false;
  const entries = types.linearCount[ptMfn]!;
  if (entries < 0 || entries === 0x7fff) { // inc_linear_entries
    putPage(d, mfn);
    return false;
  }
  const uses = types.linearCount[mfn]!;
  if (uses > 0 || uses === -0x8000) { // inc_linear_uses
    putPage(d, mfn);
    return false;
  }
  if (
    types.typeCount[mfn]! >= types.maxTypeCount || types.type[mfn] !== level ||
    (types.flags[mfn]! & PAGE_VALIDATED) === 0
  ) {
    putPage(d, mfn);
    return false;
  }
  types.linearCount[ptMfn] = entries + 1;
  types.linearCount[mfn] = types.linearCount[mfn]! - 1;
  types.typeCount[mfn]++;
  return true;
}

// ---------------------------------------------------------------------------------------
// Validation and devalidation (alloc_page_type / free_page_type).
// ---------------------------------------------------------------------------------------

/**
 * alloc_lN_table: checks every entry of the frame as a `type` table, taking each entry's
 * references; on a failure at entry i, the references of entries 0..i-1 are dropped and
 * the errno returned. An L4's Xen slots are rewritten (init_xen_l4_slots: the lab's Xen
 * maps nothing there, so they are cleared).
 */
function allocPageType(d: PvDomain, mfn: number, type: number): number {
  if (type < PGT_L1 || type > PGT_L4) return 0; // segment descriptors are not modelled
  d.counts[VALIDATE_TABLES]++;
  const memory = d.memory;
  const base = mfn * 4096;
  if (type === PGT_L1) {
    for (let i = 0; i < 512; i++) {
      const lo = memory.read32(base + i * 8);
      if ((lo & F_PRESENT) === 0) continue;
      const hi = memory.read32(base + i * 8 + 4);
      const rc = getPageFromL1e(d, lo, hi, d.id);
      if (rc < 0) {
        while (i-- > 0) {
          putPageFromL1e(d, memory.read32(base + i * 8), memory.read32(base + i * 8 + 4));
        }
        return rc;
      }
      if (rc > 0) memory.write32(base + i * 8, (lo ^ rc) >>> 0);
    }
    return 0;
  }
  for (let i = 0; i < 512; i++) {
    if (type === PGT_L4 && !isGuestL4Slot(i)) continue;
    const lo = memory.read32(base + i * 8);
    if ((lo & F_PRESENT) === 0) continue;
    const rc = getPageFromUpperEntry(d, type, lo, memory.read32(base + i * 8 + 4), mfn);
    if (rc < 0) {
      while (i-- > 0) {
        if (type === PGT_L4 && !isGuestL4Slot(i)) continue;
        putPageFromUpperEntry(d, memory.read32(base + i * 8), memory.read32(base + i * 8 + 4), mfn);
      }
      return rc;
    }
  }
  if (type === PGT_L4) {
    for (let i = XEN_FIRST_L4_SLOT; i <= XEN_LAST_L4_SLOT; i++) {
      memory.write32(base + i * 8, 0);
      memory.write32(base + i * 8 + 4, 0);
    }
  }
  return 0;
}

/** free_lN_table: drops the references every entry of a `type` table holds. */
function freePageType(d: PvDomain, mfn: number, type: number): void {
  const memory = d.memory;
  const base = mfn * 4096;
  for (let i = 511; i >= 0; i--) {
    const lo = memory.read32(base + i * 8);
    if ((lo & F_PRESENT) === 0) continue;
    const hi = memory.read32(base + i * 8 + 4);
    if (type === PGT_L1) putPageFromL1e(d, lo, hi);
    else if (type !== PGT_L4 || isGuestL4Slot(i)) putPageFromUpperEntry(d, lo, hi, mfn);
  }
}

/**
 * Devalidates a table whatever its type count, as a dying domain's relinquish_memory does
 * to break circular (linear) references.
 */
export function forceDevalidate(d: PvDomain, mfn: number): void {
  const types = d.types;
  const type = types.type[mfn]!;
  if (type < PGT_L1 || type > PGT_L4 || (types.flags[mfn]! & PAGE_VALIDATED) === 0) return;
  types.flags[mfn] &= ~PAGE_VALIDATED;
  freePageType(d, mfn, type);
}

/**
 * MMUEXT_PIN_Ln_TABLE's core: a general and a type reference of `type` kept by the pin.
 * Returns 0, -EINVAL (already pinned, not the domain's, bad type) or the validation's
 * errno.
 */
export function pinTable(d: PvDomain, mfn: number, type: number, owner: number): number {
  if (!getPage(d, mfn, owner)) return -XEN_EINVAL;
  const rc = getPageType(d, mfn, type);
  if (rc !== 0) {
    putPage(d, mfn);
    return rc;
  }
  const types = d.types;
  if ((types.flags[mfn]! & PAGE_PINNED) !== 0) {
    putPageAndType(d, mfn); // pin_drop
    return -XEN_EINVAL;
  }
  types.flags[mfn] |= PAGE_PINNED;
  return 0;
}

/** MMUEXT_UNPIN_TABLE's core: -EINVAL if `mfn` is not the owner's or not pinned. */
export function unpinTable(d: PvDomain, mfn: number, owner: number): number {
  if (!getPage(d, mfn, owner)) return -XEN_EINVAL;
  const types = d.types;
  if ((types.flags[mfn]! & PAGE_PINNED) === 0) {
    putPage(d, mfn);
    return -XEN_EINVAL;
  }
  types.flags[mfn] &= ~PAGE_PINNED;
  putPageAndType(d, mfn);
  putPage(d, mfn);
  return 0;
}

/**
 * new_guest_cr3: loads `mfn` as the top level, taking an L4 type reference (validating
 * it if it is neither pinned nor in use) and dropping the old top level's. The switch
 * flushes the whole TLB (write_ptbase). Returns 0 or -errno.
 */
export function newGuestCr3(d: PvDomain, mfn: number): number {
  const old = d.guestTable;
  if (mfn !== old) {
    const rc = getPageAndType(d, mfn, PGT_L4);
    if (rc !== 0) return rc;
    d.guestTable = mfn;
  }
  d.cpu.writeCr3(mfn * 4096);
  d.flushTlbAll();
  if (mfn !== old && old >= 0) putPageAndType(d, old);
  return 0;
}
