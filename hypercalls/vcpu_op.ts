/**
 * HYPERVISOR_vcpu_op (xen/common/domain.c do_vcpu_op, map_vcpu_info): here only
 * VCPUOP_register_vcpu_info, which moves the vCPU's vcpu_info (the event upcall flags
 * and mask the guest reads and writes without hypercalls) into a page of the guest.
 *
 * ```
 * struct vcpu_register_vcpu_info { u64 mfn; u32 offset; u32 rsvd; }
 * ```
 *
 * Xen takes a writable type reference on the frame, so it can never become a page table
 * while Xen writes into it, and copies the old vcpu_info's contents (the upcall mask the
 * domain builder set, in particular). Xen also marks a spurious upcall pending; the lab
 * does not (see PvVcpu.moveVcpuInfo).
 *
 * @module
 */

import { PAGE_SIZE } from "../lib/x86/address.ts";
import { PGT_WRITABLE } from "../lib/memory/page_types.ts";
import {
  VCPU_REGISTER_VCPU_INFO_SIZE,
  VCPUOP_REGISTER_VCPU_INFO,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOENT,
  XEN_ENOSYS,
} from "./abi.ts";
import { getPageAndType } from "./page_refs.ts";
import { HC_VCPU_OP, type PvDomain } from "./pv_domain.ts";
import { VCPUINFO_SIZE } from "./pv_vcpu.ts";

/**
 * vcpu_op(`cmd`, `vcpuId`, arg at guest linear `argVa`) for domain `d` (one vCPU, id 0).
 * Returns 0; -ENOENT for a vCPU that does not exist; -EFAULT when the argument cannot be
 * read; -EINVAL for an offset past PAGE_SIZE - 64, a second registration (Xen 4.18 and
 * later say -EBUSY), or a frame that is not the domain's or cannot be writable (a page
 * table); -ENOSYS for other commands. Counts `hypercall.vcpu_op`.
 *
 * @example A vCPU the domain does not have
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doVcpuOp } from "./vcpu_op.ts";
 * import { XEN_ENOENT } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doVcpuOp(platform.domain, 10, 1, 0), -XEN_ENOENT); // vCPU 1
 * ```
 */
export function doVcpuOp(d: PvDomain, cmd: number, vcpuId: number, argVa: number): number {
  d.counts[HC_VCPU_OP]++;
  if (vcpuId !== 0) return -XEN_ENOENT; // vcpuid >= d->max_vcpus
  if (cmd !== VCPUOP_REGISTER_VCPU_INFO) return -XEN_ENOSYS;
  if (argVa < 0 || !d.isGuestRange(argVa, VCPU_REGISTER_VCPU_INFO_SIZE)) return -XEN_EFAULT;
  if (!d.readGuest64(argVa)) return -XEN_EFAULT;
  const mfnLo = d.lo;
  const mfnHi = d.hi;
  if (!d.readGuest32(argVa + 8)) return -XEN_EFAULT;
  const offset = d.lo;
  // map_vcpu_info:
  if (offset > PAGE_SIZE - VCPUINFO_SIZE) return -XEN_EINVAL;
  const v = d.vcpu;
  if (v.vcpuInfoMfn >= 0) return -XEN_EINVAL; // already registered
  if (mfnHi >= 0x100000) return -XEN_EINVAL; // beyond 52-bit frame numbers
  const mfn = mfnHi * 2 ** 32 + mfnLo;
  // get_page_from_gfn (a PV guest names machine frames) + get_page_type(writable).
  if (getPageAndType(d, mfn, PGT_WRITABLE) !== 0) return -XEN_EINVAL;
  v.moveVcpuInfo(mfn * PAGE_SIZE, offset, mfn);
  return 0;
}
