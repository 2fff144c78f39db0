/**
 * HYPERVISOR_update_va_mapping(va, val, flags) (Xen's __do_update_va_mapping): replaces
 * the l1e that maps linear address `va` in the current address space, found by walking
 * the guest's tables from CR3 (map_guest_l1e), with the same checks as an mmu_update of
 * that entry; then flushes as `flags` ask:
 *
 * ```
 *  flags:  bits 1..0  UVMF_NONE 0 | UVMF_TLB_FLUSH 1 | UVMF_INVLPG 2
 *          bits 63..2 UVMF_LOCAL 0 | UVMF_ALL 4 | else a pointer to a vCPU bitmap
 * ```
 *
 * On an error nothing is flushed. The `_otherdomain` variant names the owner of the mapped
 * frame; an unprivileged domain may only name itself.
 *
 * @module
 */

import { levelIndex } from "../lib/x86/address.ts";
import { PTE_PAGE_SIZE, PTE_PRESENT, pteAddress } from "../lib/x86/pte.ts";
import { PGT_L1 } from "../lib/memory/page_types.ts";
import {
  UVMF_ALL,
  UVMF_FLUSHTYPE_MASK,
  UVMF_INVLPG,
  UVMF_LOCAL,
  UVMF_TLB_FLUSH,
  XEN_EFAULT,
  XEN_EINVAL,
} from "./abi.ts";
import { modL1Entry } from "./mod_entry.ts";
import { getPage, putPage } from "./page_refs.ts";
import { HC_ENTRIES, HC_UPDATE_VA_MAPPING, type PvDomain, resolvePageOwner } from "./pv_domain.ts";

/**
 * Sets the l1e of linear `va` to (`hi`:`lo`) and flushes per `flags` (the bitmap pointer
 * of UVMF_MULTI as a linear address in the bits above the flush type). Returns 0, or
 * -EINVAL (`va` in Xen's hole or not mapped by an L1 table of the domain), -EFAULT (an
 * unreadable vCPU bitmap), or the entry check's errno.
 *
 * @example Make a page of the direct map read-only, flushing its TLB entry
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { doUpdateVaMapping } from "./update_va_mapping.ts";
 * import { UVMF_INVLPG } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const mfn = platform.p2mList[900]!;
 * const va = DIRECT_MAP_BASE + 900 * 4096;
 * // present, accessed, global, XD: read-only
 * assert.equal(doUpdateVaMapping(platform.domain, va, mfn * 4096 + 0x121, 0x80000000, UVMF_INVLPG), 0);
 * assert.equal(platform.domain.types.typeCount[mfn], 0); // no writable mapping left
 * ```
 */
export function doUpdateVaMapping(
  d: PvDomain,
  va: number,
  lo: number,
  hi: number,
  flags: number,
): number {
  return updateVaMapping(d, va, lo, hi, flags, d.id);
}

/**
 * update_va_mapping_otherdomain: as {@link doUpdateVaMapping} for frames owned by
 * `domid`; -ESRCH / -EPERM for anything but DOMID_SELF or DOMID_IO.
 */
export function doUpdateVaMappingOtherDomain(
  d: PvDomain,
  va: number,
  lo: number,
  hi: number,
  flags: number,
  domid: number,
): number {
  const owner = resolvePageOwner(d, domid);
  if (owner < 0) {
    d.counts[HC_UPDATE_VA_MAPPING]++;
    return owner;
  }
  return updateVaMapping(d, va, lo, hi, flags, owner);
}

function updateVaMapping(
  d: PvDomain,
  va: number,
  lo: number,
  hi: number,
  flags: number,
  pgOwner: number,
): number {
  d.counts[HC_UPDATE_VA_MAPPING]++;
  if (!d.isGuestRange(va, 1)) return -XEN_EINVAL;
  const l1Mfn = mapGuestL1e(d, va);
  if (l1Mfn < 0 || !getPage(d, l1Mfn, d.id)) return -XEN_EINVAL;
  const types = d.types;
  if (types.typeCount[l1Mfn] === 0 || !types.isValidated(l1Mfn) || types.type[l1Mfn] !== PGT_L1) {
    putPage(d, l1Mfn);
    return -XEN_EINVAL;
  }
  const rc = modL1Entry(d, l1Mfn * 4096 + levelIndex(va, 1) * 8, lo, hi, false, pgOwner);
  putPage(d, l1Mfn);
  if (rc !== 0) return rc;
  d.counts[HC_ENTRIES]++;
  const scope = flags - (flags & UVMF_FLUSHTYPE_MASK);
  const type = flags & UVMF_FLUSHTYPE_MASK;
  if (type !== UVMF_TLB_FLUSH && type !== UVMF_INVLPG) return 0;
  if (scope !== UVMF_LOCAL && scope !== UVMF_ALL) {
    // A pointer to a bitmap of vCPUs: this domain has one, vCPU 0.
    if (!d.readGuest32(scope)) return -XEN_EFAULT;
    if ((d.lo & 1) === 0) return 0;
  }
  if (type === UVMF_TLB_FLUSH) d.flushTlbAll();
  else d.flushTlbOne(va);
  return 0;
}

/**
 * map_guest_l1e: the machine frame of the L1 table that maps `va` in the current address
 * space, or -1 when an upper entry on the way is not present or maps a superpage. The
 * hypervisor reads the guest's tables directly (no A bits set).
 */
export function mapGuestL1e(d: PvDomain, va: number): number {
  if (d.guestTable < 0) return -1;
  const memory = d.memory;
  let table = d.guestTable;
  for (let level = 4; level > 1; level--) {
    const entry = table * 4096 + levelIndex(va, level) * 8;
    const lo = memory.read32(entry);
    if ((lo & PTE_PRESENT) === 0 || (lo & PTE_PAGE_SIZE) !== 0) return -1;
    table = pteAddress(lo, memory.read32(entry + 4)) / 4096;
    if (!d.isValidMfn(table)) return -1;
  }
  return table;
}
