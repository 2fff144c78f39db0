/**
 * HYPERVISOR_mmu_update(reqs, count, pdone, foreigndom) (Xen's do_mmu_update): a batch of
 * (ptr, val) requests read from guest memory. `ptr` is the machine address of an entry
 * with the command in bits 2..0:
 *
 * ```
 *  63                                   3  2..0
 * +--------------------------------------+-----+
 * | machine address of the 8-byte entry   | cmd |  0 NORMAL_PT_UPDATE  1 MACHPHYS_UPDATE
 * +--------------------------------------+-----+  2 PT_UPDATE_PRESERVE_AD  3 NO_TRANSLATE
 * ```
 *
 * The frame must be the domain's. A frame in use as a table is updated with the level's
 * checks (mod_lN_entry); any other frame that can be writable takes a plain store. The
 * batch stops at the first failing request: `*pdone` gets the number completed before it
 * and the call returns that request's errno. After an L2..L4 change of a table that is in
 * use beyond its pin, the TLB is flushed (XSA-286); L1 changes are the guest's to flush.
 *
 * @module
 */

import { PGT_L1, PGT_L4, PGT_WRITABLE } from "../lib/memory/page_types.ts";
import {
  MMU_MACHPHYS_UPDATE,
  MMU_NORMAL_PT_UPDATE,
  MMU_PT_UPDATE_NO_TRANSLATE,
  MMU_PT_UPDATE_PRESERVE_AD,
  MMU_UPDATE_PREEMPTED,
  MMU_UPDATE_SIZE,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
  XEN_EPERM,
  XEN_ESRCH,
} from "./abi.ts";
import { modL1Entry, modUpperEntry } from "./mod_entry.ts";
import { getPage, getPageType, putPage, putPageType } from "./page_refs.ts";
import {
  HC_ENTRIES,
  HC_MMU_UPDATE,
  PV_FLUSH_LINEAR,
  type PvDomain,
  resolvePageOwner,
} from "./pv_domain.ts";

/**
 * Runs `count` mmu_update requests at guest linear address `reqsVa` for domain `d`.
 * `pdoneVa` (0 for NULL) receives the number of requests completed. Returns 0 or the
 * first failure's -errno: -EFAULT (unreadable requests), -ESRCH / -EPERM (foreigndom),
 * -EINVAL, -EBUSY, -EPERM (from the entry checks), -ENOSYS (command 4..7).
 *
 * @example Two requests in a guest page: an M2P update, then a write to a slot of the top
 * level that Xen reserves; the second stops the batch
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { ACCESS_WRITE } from "../lib/x86/access.ts";
 * import { doMmuUpdate } from "./mmu_update.ts";
 * import { DOMID_SELF, MMU_MACHPHYS_UPDATE, XEN_EINVAL } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const d = platform.domain;
 * const at = DIRECT_MAP_BASE + 900 * 4096; // a free, writable guest page
 * const put = (offset: number, lo: number) =>
 *   platform.access(at + offset, 8, ACCESS_WRITE, lo, 0, false);
 * put(0, platform.p2mList[900]! * 4096 + MMU_MACHPHYS_UPDATE); // M2P[mfn] = 900
 * put(8, 900);
 * put(16, d.guestTable * 4096 + 260 * 8); // l4e 260: Xen's
 * put(24, 0);
 * assert.equal(doMmuUpdate(d, at, 2, at + 32, DOMID_SELF), -XEN_EINVAL);
 * assert.equal(platform.peekGuestPhysical32(900 * 4096 + 32), 1); // *pdone: one completed
 * ```
 */
export function doMmuUpdate(
  d: PvDomain,
  reqsVa: number,
  count: number,
  pdoneVa: number,
  foreigndom: number,
): number {
  d.counts[HC_MMU_UPDATE]++;
  count = (count & ~MMU_UPDATE_PREEMPTED) >>> 0;
  if (!d.isGuestRange(reqsVa, count * MMU_UPDATE_SIZE)) return -XEN_EFAULT;
  const ptDom = foreigndom >>> 16; // PFD + 1, 0 for self
  if (ptDom !== 0 && ptDom - 1 !== d.id) {
    return d.isOtherDomain(ptDom - 1) ? -XEN_EPERM : -XEN_ESRCH;
  }
  const pgOwner = resolvePageOwner(d, foreigndom & 0xffff);
  if (pgOwner < 0) return pgOwner;
  let rc = 0;
  let i = 0;
  let flushLinear = false;
  for (; i < count; i++) {
    const va = reqsVa + i * MMU_UPDATE_SIZE;
    if (!d.readGuest64(va)) {
      rc = -XEN_EFAULT;
      break;
    }
    const ptrLo = d.lo;
    const ptrHi = d.hi;
    if (!d.readGuest64(va + 8)) {
      rc = -XEN_EFAULT;
      break;
    }
    const valLo = d.lo;
    const valHi = d.hi;
    const cmd = ptrLo & 7;
    const mfn = ptrHi * 2 ** 20 + (ptrLo >>> 12);
    if (
      cmd === MMU_NORMAL_PT_UPDATE || cmd === MMU_PT_UPDATE_PRESERVE_AD ||
      cmd === MMU_PT_UPDATE_NO_TRANSLATE
    ) {
      const entryMa = mfn * 4096 + (ptrLo & 0xff8);
      rc = updateEntry(d, mfn, entryMa, valLo, valHi, cmd === MMU_PT_UPDATE_PRESERVE_AD, pgOwner);
      if (rc === 1) {
        flushLinear = true;
        rc = 0;
      }
    } else if (cmd === MMU_MACHPHYS_UPDATE) {
      if (!getPage(d, mfn, pgOwner)) rc = -XEN_EINVAL;
      else {
        d.m2p[mfn] = valHi * 2 ** 32 + valLo;
        putPage(d, mfn);
      }
    } else {
      rc = -XEN_ENOSYS;
    }
    if (rc !== 0) break;
  }
  d.counts[HC_ENTRIES] += i;
  if (pdoneVa !== 0) d.writeGuest32(pdoneVa, i);
  if (flushLinear) {
    d.counts[PV_FLUSH_LINEAR]++;
    d.flushTlbAll();
  }
  return rc;
}

// One MMU_NORMAL_PT_UPDATE: 0, 1 (an upper-level change that needs the linear flush),
// or -errno.
function updateEntry(
  d: PvDomain,
  mfn: number,
  entryMa: number,
  lo: number,
  hi: number,
  preserveAd: boolean,
  pgOwner: number,
): number {
  if (!getPage(d, mfn, d.id)) return -XEN_EINVAL;
  const types = d.types;
  let rc = -XEN_EINVAL;
  if (types.typeCount[mfn]! > 0 && types.isValidated(mfn)) {
    // page_lock succeeded: dispatch on the frame's type.
    const type = types.type[mfn]!;
    if (type === PGT_L1) {
      rc = modL1Entry(d, entryMa, lo, hi, preserveAd, pgOwner);
    } else if (type > PGT_L1 && type <= PGT_L4) {
      if (pgOwner === d.id) {
        rc = modUpperEntry(d, type, entryMa, lo, hi, mfn, preserveAd);
        // In use beyond its pin: another walk may hold stale translations through it.
        if (rc === 0 && types.typeCount[mfn]! > (types.isPinned(mfn) ? 1 : 0)) rc = 1;
      }
    } else if (type === PGT_WRITABLE) {
      writeEntry(d, entryMa, lo, hi);
      rc = 0;
    }
  } else if (getPageType(d, mfn, PGT_WRITABLE) === 0) {
    writeEntry(d, entryMa, lo, hi);
    putPageType(d, mfn, -1);
    rc = 0;
  }
  putPage(d, mfn);
  return rc;
}

function writeEntry(d: PvDomain, entryMa: number, lo: number, hi: number): void {
  d.memory.write32(entryMa, lo >>> 0);
  d.memory.write32(entryMa + 4, hi >>> 0);
}
