/**
 * HYPERVISOR_mmuext_op(uops, count, pdone, foreigndom) (Xen's do_mmuext_op): a batch of
 * extended MMU operations read from guest memory, each a struct mmuext_op:
 *
 * ```
 *  cmd                    arg1               arg2        what
 *  PIN_L1..L4_TABLE 0-3   mfn                -           type ref of that level (validate), pin
 *  UNPIN_TABLE      4     mfn                -           drop the pin's refs
 *  NEW_BASEPTR      5     mfn                -           CR3 (L4 type ref), full flush
 *  TLB_FLUSH_LOCAL  6     -                  -           full flush of this vCPU
 *  INVLPG_LOCAL     7     linear_addr        -           flush one page
 *  TLB_FLUSH_MULTI  8     -                  vcpumask    flush the vCPUs in the bitmap
 *  INVLPG_MULTI     9     linear_addr        vcpumask
 *  TLB_FLUSH_ALL   10 / INVLPG_ALL 11                    every vCPU of the domain
 *  FLUSH_CACHE     12 / FLUSH_CACHE_GLOBAL 18            needs cache-flush permission
 *  SET_LDT         13     linear_addr        nr_ents     page-aligned, <= 8192 entries
 *  NEW_USER_BASEPTR 15    mfn (0: none)      -           the user-mode top level
 *  CLEAR_PAGE      16     mfn                -           frame must be able to be writable
 *  COPY_PAGE       17     dst mfn            src mfn
 *  MARK/UNMARK_SUPER 19/20                               -EOPNOTSUPP (PV superpages removed)
 * ```
 *
 * The batch stops at the first failure; `*pdone` gets the number completed.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import { PGT_L4, PGT_WRITABLE } from "../lib/memory/page_types.ts";
import type { Mfn } from "../lib/memory/types.ts";
import {
  DOMID_IO,
  MMU_UPDATE_PREEMPTED,
  MMUEXT_CLEAR_PAGE,
  MMUEXT_COPY_PAGE,
  MMUEXT_FLUSH_CACHE,
  MMUEXT_FLUSH_CACHE_GLOBAL,
  MMUEXT_INVLPG_ALL,
  MMUEXT_INVLPG_LOCAL,
  MMUEXT_INVLPG_MULTI,
  MMUEXT_MARK_SUPER,
  MMUEXT_NEW_BASEPTR,
  MMUEXT_NEW_USER_BASEPTR,
  MMUEXT_OP_SIZE,
  MMUEXT_PIN_L1_TABLE,
  MMUEXT_PIN_L4_TABLE,
  MMUEXT_SET_LDT,
  MMUEXT_TLB_FLUSH_ALL,
  MMUEXT_TLB_FLUSH_LOCAL,
  MMUEXT_TLB_FLUSH_MULTI,
  MMUEXT_UNMARK_SUPER,
  MMUEXT_UNPIN_TABLE,
  XEN_EACCES,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
  XEN_EOPNOTSUPP,
} from "./abi.ts";
import {
  getPage,
  getPageAndType,
  getPageType,
  newGuestCr3,
  pinTable,
  putPage,
  putPageAndType,
  unpinTable,
} from "./page_refs.ts";
import {
  HC_ENTRIES,
  HC_MMUEXT_OP,
  PV_PIN,
  PV_UNPIN,
  type PvDomain,
  resolvePageOwner,
} from "./pv_domain.ts";

/**
 * Runs `count` operations at guest linear address `uopsVa` for domain `d`; `pdoneVa` (0
 * for NULL) receives the number completed. Returns 0 or the first failure's -errno:
 * -EFAULT, -ESRCH / -EPERM / -EINVAL (foreigndom), -EINVAL (pin of a pinned table, unpin
 * of an unpinned one, a frame that is not the owner's, a failed validation ...), -EPERM,
 * -EACCES, -EOPNOTSUPP, -ENOSYS (unknown command).
 *
 * @example A TLB flush, then an unpin of a table that is not pinned
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { ACCESS_WRITE } from "../lib/x86/access.ts";
 * import { doMmuextOp } from "./mmuext_op.ts";
 * import { DOMID_SELF, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE, XEN_EINVAL } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const at = DIRECT_MAP_BASE + 900 * 4096;
 * const put = (offset: number, lo: number) =>
 *   platform.access(at + offset, 8, ACCESS_WRITE, lo, 0, false);
 * put(0, MMUEXT_TLB_FLUSH_LOCAL);
 * put(24, MMUEXT_UNPIN_TABLE);
 * put(32, platform.p2mList[901]!); // a data page
 * assert.equal(doMmuextOp(platform.domain, at, 2, at + 48, DOMID_SELF), -XEN_EINVAL);
 * assert.equal(platform.peekGuestPhysical32(900 * 4096 + 48), 1);
 * assert.equal(platform.stats.get("pv.flush.all"), 1); // the flush ran
 * ```
 */
export function doMmuextOp(
  d: PvDomain,
  uopsVa: number,
  count: number,
  pdoneVa: number,
  foreigndom: number,
): number {
  d.counts[HC_MMUEXT_OP]++;
  count = (count & ~MMU_UPDATE_PREEMPTED) >>> 0;
  if (!d.isGuestRange(uopsVa, count * MMUEXT_OP_SIZE)) return -XEN_EFAULT;
  const pgOwner = resolvePageOwner(d, foreigndom & 0xffff);
  if (pgOwner < 0) return pgOwner;
  if (pgOwner === DOMID_IO) return -XEN_EINVAL; // !is_pv_domain(dom_io)
  let rc = 0;
  let i = 0;
  for (; i < count; i++) {
    const va = uopsVa + i * MMUEXT_OP_SIZE;
    if (!d.readGuest32(va)) {
      rc = -XEN_EFAULT;
      break;
    }
    const cmd = d.lo;
    if (!d.readGuest64(va + 8)) {
      rc = -XEN_EFAULT;
      break;
    }
    const arg1Lo = d.lo;
    const arg1Hi = d.hi;
    if (!d.readGuest64(va + 16)) {
      rc = -XEN_EFAULT;
      break;
    }
    rc = runOperation(d, cmd, arg1Lo, arg1Hi, d.lo, d.hi);
    if (rc !== 0) break;
  }
  d.counts[HC_ENTRIES] += i;
  if (pdoneVa !== 0) d.writeGuest32(pdoneVa, i);
  return rc;
}

// One operation; arg1 / arg2 as u64 halves.
function runOperation(
  d: PvDomain,
  cmd: number,
  arg1Lo: number,
  arg1Hi: number,
  arg2Lo: number,
  arg2Hi: number,
): number {
  const mfn = arg1Hi * 2 ** 32 + arg1Lo; // xen_pfn_t
  const linear = canonicalToLinear(arg1Hi, arg1Lo);
  switch (cmd) {
    case MMUEXT_PIN_L1_TABLE:
    case MMUEXT_PIN_L1_TABLE + 1:
    case MMUEXT_PIN_L1_TABLE + 2:
    case MMUEXT_PIN_L4_TABLE: {
      const rc = pinTable(d, mfn, cmd - MMUEXT_PIN_L1_TABLE + 1, d.id);
      if (rc === 0) d.counts[PV_PIN]++;
      return rc;
    }
    case MMUEXT_UNPIN_TABLE: {
      const rc = unpinTable(d, mfn, d.id);
      if (rc === 0) d.counts[PV_UNPIN]++;
      return rc;
    }
    case MMUEXT_NEW_BASEPTR:
      return newGuestCr3(d, mfn);
    case MMUEXT_NEW_USER_BASEPTR:
      return newUserBaseptr(d, mfn);
    case MMUEXT_TLB_FLUSH_LOCAL:
    case MMUEXT_TLB_FLUSH_ALL:
      d.flushTlbAll();
      return 0;
    case MMUEXT_INVLPG_LOCAL:
    case MMUEXT_INVLPG_ALL:
      if (linear >= 0 && d.isGuestRange(linear, 1)) d.flushTlbOne(linear);
      return 0;
    case MMUEXT_TLB_FLUSH_MULTI:
    case MMUEXT_INVLPG_MULTI: {
      // vcpumask_to_pcpumask: a bitmap of vCPUs; this domain has vCPU 0 only.
      const mask = canonicalToLinear(arg2Hi, arg2Lo);
      if (mask < 0 || !d.isGuestRange(mask, 8) || !d.readGuest32(mask)) return -XEN_EINVAL;
      if ((d.lo & 1) === 0) return 0;
      if (cmd === MMUEXT_TLB_FLUSH_MULTI) d.flushTlbAll();
      else if (linear >= 0 && d.isGuestRange(linear, 1)) d.flushTlbOne(linear);
      return 0;
    }
    case MMUEXT_FLUSH_CACHE:
      return -XEN_EACCES; // no cache-flush permission (no device passthrough)
    case MMUEXT_FLUSH_CACHE_GLOBAL:
      return -XEN_EINVAL;
    case MMUEXT_SET_LDT: {
      const ents = arg2Lo;
      const base = ents !== 0 ? linear : 0;
      if (base < 0 || (base & 0xfff) !== 0 || !d.isGuestRange(base, 1) || ents > 8192) {
        return -XEN_EINVAL;
      }
      return 0; // segments are not modelled: the LDT is recorded nowhere
    }
    case MMUEXT_CLEAR_PAGE: {
      if (!getPage(d, mfn, d.id)) return -XEN_EINVAL;
      if (getPageType(d, mfn, PGT_WRITABLE) !== 0) {
        putPage(d, mfn);
        return -XEN_EINVAL;
      }
      d.memory.zeroFrame(mfn as Mfn);
      putPageAndType(d, mfn);
      return 0;
    }
    case MMUEXT_COPY_PAGE: {
      const src = arg2Hi * 2 ** 32 + arg2Lo;
      if (!getPage(d, src, d.id)) return -XEN_EINVAL;
      if (!getPage(d, mfn, d.id)) {
        putPage(d, src);
        return -XEN_EINVAL;
      }
      if (getPageType(d, mfn, PGT_WRITABLE) !== 0) {
        putPage(d, src);
        putPage(d, mfn);
        return -XEN_EINVAL;
      }
      d.memory.copyFrame(src as Mfn, mfn as Mfn);
      putPageAndType(d, mfn);
      putPage(d, src);
      return 0;
    }
    case MMUEXT_MARK_SUPER:
    case MMUEXT_UNMARK_SUPER:
      return -XEN_EOPNOTSUPP;
    default:
      return -XEN_ENOSYS;
  }
}

// MMUEXT_NEW_USER_BASEPTR: the user-mode L4 (0 clears it). The lab's kernel runs at CPL 0
// with one top level per process, so it never sets one; the operation keeps Xen's refs.
function newUserBaseptr(d: PvDomain, mfn: number): number {
  const old = d.guestTableUser;
  if (mfn === (old < 0 ? 0 : old)) return 0;
  if (mfn !== 0) {
    const rc = getPageAndType(d, mfn, PGT_L4);
    if (rc !== 0) return rc;
  }
  d.guestTableUser = mfn === 0 ? -1 : mfn;
  if (old >= 0) putPageAndType(d, old);
  return 0;
}
