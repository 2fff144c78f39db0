/**
 * Domain death (Xen's domain_relinquish_resources for a PV domain): the vCPU's top-level
 * references and its vcpu_info's go, every pinned table is unpinned, tables still
 * validated (circular linear links, or tables only a dead table referenced) are
 * devalidated from the top level down, and each frame's allocation reference is dropped,
 * which frees it.
 *
 * @module
 */

import { PAGE_PINNED, PGT_L1, PGT_L4 } from "../lib/memory/page_types.ts";
import { forceDevalidate, putPage, putPageAndType } from "./page_refs.ts";
import type { PvDomain } from "./pv_domain.ts";

/**
 * Releases every reference domain `d` holds and frees its frames. Returns the number of
 * frames freed and those still referenced afterwards (a leak: 0 when the counts were
 * right).
 *
 * @example
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { relinquishDomain } from "./relinquish.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const result = relinquishDomain(platform.domain);
 * assert.deepEqual(result, { freed: 1024, leaked: 0 });
 * ```
 */
export function relinquishDomain(d: PvDomain): { freed: number; leaked: number } {
  const types = d.types;
  const owner = d.frames.owner;
  const n = d.frames.frameCount;
  if (d.guestTable >= 0) putPageAndType(d, d.guestTable);
  if (d.guestTableUser >= 0) putPageAndType(d, d.guestTableUser);
  d.guestTable = -1;
  d.guestTableUser = -1;
  // unmap_vcpu_info: the vcpu_info frame's writable reference.
  if (d.vcpu.vcpuInfoMfn >= 0) putPageAndType(d, d.vcpu.vcpuInfoMfn);
  d.vcpu.vcpuInfoMfn = -1;
  for (let level = PGT_L4; level >= PGT_L1; level--) {
    for (let mfn = 0; mfn < n; mfn++) {
      if (owner[mfn] !== d.id) continue;
      if (types.type[mfn] === level && (types.flags[mfn]! & PAGE_PINNED) !== 0) {
        types.flags[mfn] &= ~PAGE_PINNED;
        putPageAndType(d, mfn);
      }
      if (types.type[mfn] === level) forceDevalidate(d, mfn);
    }
  }
  let freed = 0;
  let leaked = 0;
  for (let mfn = 0; mfn < n; mfn++) {
    if (owner[mfn] !== d.id) continue;
    if (types.count[mfn] === 1) {
      putPage(d, mfn);
      freed++;
    } else leaked++;
  }
  return { freed, leaked };
}
