/**
 * HYPERVISOR_set_trap_table (xen/arch/x86/pv/callback.c do_set_trap_table): the PV
 * guest's IDT. The guest hands Xen an array of struct trap_info {u8 vector, u8 flags,
 * u16 cs, u64 address} ended by an entry whose address is 0; Xen copies each entry into
 * the vCPU's trap_ctxt[vector]. A NULL array clears the whole virtual IDT.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import { TRAP_INFO_SIZE, XEN_EFAULT, XEN_EINVAL } from "./abi.ts";
import { HC_SET_TRAP_TABLE, type PvDomain } from "./pv_domain.ts";

/**
 * set_trap_table for domain `d` with the array at guest linear `listVa` (0: NULL, clear
 * the table; -1: a non-canonical pointer). Returns 0; -EFAULT when an entry cannot be read
 * (entries before it stay installed, as in Xen); -EINVAL for a handler address that is
 * not canonical (the entries before it stay too). Counts `hypercall.set_trap_table`.
 *
 * @example A NULL table clears every entry
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doSetTrapTable } from "./set_trap_table.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * platform.domain.vcpu.trapAddress[14] = 0x1000;
 * assert.equal(doSetTrapTable(platform.domain, 0), 0);
 * assert.equal(platform.domain.vcpu.trapAddress[14], 0);
 * ```
 */
export function doSetTrapTable(d: PvDomain, listVa: number): number {
  d.counts[HC_SET_TRAP_TABLE]++;
  const v = d.vcpu;
  if (listVa === 0) {
    // "If no table is presented then clear the entire virtual IDT."
    v.trapAddress.fill(0);
    v.trapFlags.fill(0);
    v.trapCs.fill(0);
    v.trapTableVa = 0;
    return 0;
  }
  if (listVa < 0) return -XEN_EFAULT;
  v.trapTableVa = listVa;
  for (let entry = listVa;; entry += TRAP_INFO_SIZE) {
    if (!d.isGuestRange(entry, TRAP_INFO_SIZE) || !d.readGuest64(entry)) return -XEN_EFAULT;
    const head = d.lo;
    if (!d.readGuest64(entry + 8)) return -XEN_EFAULT;
    if (d.lo === 0 && d.hi === 0) return 0; // the terminator
    const address = canonicalToLinear(d.hi, d.lo);
    if (address < 0) return -XEN_EINVAL;
    const vector = head & 0xff;
    v.trapAddress[vector] = address;
    v.trapFlags[vector] = (head >>> 8) & 0xff;
    v.trapCs[vector] = head >>> 16;
  }
}
