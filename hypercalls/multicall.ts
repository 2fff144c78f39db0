/**
 * HYPERVISOR_multicall(call_list, nr_calls) (Xen's `xen/common/multicall.c`): runs a list
 * of hypercalls in one entry into the hypervisor. Each entry is a struct multicall_entry
 * (op, result, args[6]) in guest memory; the calls run in order, each result is written
 * back into its entry, and a failing call does not stop the batch. The multicall itself
 * returns 0, -EFAULT for an unreadable list, or -EINVAL when called from inside a
 * multicall.
 *
 * @module
 */

import { HYPERVISOR_MULTICALL, MULTICALL_ENTRY_SIZE, XEN_EFAULT, XEN_EINVAL } from "./abi.ts";
import { callHandler, HypercallArgs } from "./hypercall_table.ts";
import {
  HC_MULTICALL,
  HC_REJECTED,
  MULTICALL_BATCHES,
  MULTICALL_CALLS,
  type PvDomain,
} from "./pv_domain.ts";

const subArgs = new HypercallArgs();

/**
 * Runs the `count` calls listed at guest linear address `listVa` for domain `d`. Returns
 * 0, -EFAULT or -EINVAL; the calls' own results are in their entries.
 *
 * @example A batch of two calls: an unknown hypercall fails, the next still runs
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { ACCESS_WRITE } from "../lib/x86/access.ts";
 * import { doMulticall } from "./multicall.ts";
 * import { XEN_ENOSYS } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const list = DIRECT_MAP_BASE + 900 * 4096;
 * platform.access(list, 8, ACCESS_WRITE, 99, 0, false); // entry 0: op 99
 * platform.access(list + 64, 8, ACCESS_WRITE, 26, 0, false); // entry 1: mmuext_op, 0 ops,
 * platform.access(list + 64 + 40, 8, ACCESS_WRITE, 0x7ff0, 0, false); // DOMID_SELF
 * assert.equal(doMulticall(platform.domain, list, 2), 0);
 * assert.equal(platform.peekGuestPhysical32(900 * 4096 + 8) | 0, -XEN_ENOSYS);
 * assert.equal(platform.peekGuestPhysical32(900 * 4096 + 64 + 8), 0);
 * ```
 */
export function doMulticall(d: PvDomain, listVa: number, count: number): number {
  d.counts[HC_MULTICALL]++;
  d.counts[MULTICALL_BATCHES]++;
  if (d.inMulticall) return reject(d, -XEN_EINVAL);
  if (!d.isGuestRange(listVa, count * MULTICALL_ENTRY_SIZE)) return reject(d, -XEN_EFAULT);
  d.inMulticall = true;
  let rc = 0;
  for (let i = 0; i < count; i++) {
    const entry = listVa + i * MULTICALL_ENTRY_SIZE;
    if (!d.readGuest64(entry)) {
      rc = -XEN_EFAULT;
      break;
    }
    const opLo = d.lo;
    const opHi = d.hi;
    let ok = true;
    for (let a = 0; a < 6 && ok; a++) {
      ok = d.readGuest64(entry + 16 + a * 8);
      subArgs.set(a, d.lo, d.hi);
    }
    if (!ok) {
      rc = -XEN_EFAULT;
      break;
    }
    d.counts[MULTICALL_CALLS]++;
    const result = opHi !== 0 || opLo === HYPERVISOR_MULTICALL
      ? reject(d, -XEN_EINVAL)
      : callHandler(d, opLo, subArgs);
    if (!d.writeGuest64(entry + 8, result >>> 0, result < 0 ? 0xffffffff : 0)) {
      rc = -XEN_EFAULT;
      break;
    }
  }
  d.inMulticall = false;
  return rc === 0 ? 0 : reject(d, rc);
}

function reject(d: PvDomain, rc: number): number {
  d.counts[HC_REJECTED]++;
  return rc;
}
