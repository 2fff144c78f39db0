/**
 * The hypercall table: which handler serves which hypercall number, with the arguments as
 * the 64-bit registers carry them (Xen's pv_hypercall_table). A multicall runs its calls
 * through the same table; {@link doHypercall} adds the multicall itself.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import {
  HYPERVISOR_MMU_UPDATE,
  HYPERVISOR_MMUEXT_OP,
  HYPERVISOR_MULTICALL,
  HYPERVISOR_UPDATE_VA_MAPPING,
  HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
} from "./abi.ts";
import { doMmuUpdate } from "./mmu_update.ts";
import { doMmuextOp } from "./mmuext_op.ts";
import { HC_REJECTED, type PvDomain } from "./pv_domain.ts";
import { doUpdateVaMapping, doUpdateVaMappingOtherDomain } from "./update_va_mapping.ts";

/**
 * Six 64-bit hypercall arguments as u32 halves (RDI, RSI, RDX, R10, R8, R9, or a
 * multicall entry's args[]), kept in one preallocated array.
 *
 * @example
 * ```ts
 * import { HypercallArgs } from "./hypercall_table.ts";
 * import assert from "node:assert/strict";
 * const args = new HypercallArgs();
 * args.set(0, 0x1000, 0xffff8880); // a canonical upper-half pointer
 * assert.equal(args.linear(0), 0x8880_0000_1000);
 * assert.equal(args.u32(0), 0x1000);
 * ```
 */
export class HypercallArgs {
  /** args[i] is words[2i] (low) and words[2i + 1] (high). */
  readonly words: Uint32Array = new Uint32Array(12);

  /** Sets argument `i` to (`hi`:`lo`). */
  set(i: number, lo: number, hi: number): void {
    this.words[2 * i] = lo;
    this.words[2 * i + 1] = hi;
  }

  /** Low half of argument `i` (an `unsigned int` argument). */
  u32(i: number): number {
    return this.words[2 * i]!;
  }

  /** High half of argument `i`. */
  hi(i: number): number {
    return this.words[2 * i + 1]!;
  }

  /** Argument `i` as a 48-bit linear address, or -1 when it is not canonical. */
  linear(i: number): number {
    return canonicalToLinear(this.words[2 * i + 1]!, this.words[2 * i]!);
  }
}

/**
 * Runs hypercall `op` (anything but multicall) for domain `d` with `args`; returns its
 * result (0, a count, or -errno). Unknown numbers give -ENOSYS; a non-canonical pointer
 * -EFAULT. Every negative result is counted in `hypercall.rejected`.
 */
export function callHandler(d: PvDomain, op: number, args: HypercallArgs): number {
  let rc: number;
  switch (op) {
    case HYPERVISOR_MMU_UPDATE:
    case HYPERVISOR_MMUEXT_OP: {
      const list = args.linear(0);
      const pdone = args.linear(2);
      if (list < 0 || pdone < 0) rc = -XEN_EFAULT;
      else if (op === HYPERVISOR_MMU_UPDATE) {
        rc = doMmuUpdate(d, list, args.u32(1), pdone, args.u32(3));
      } else rc = doMmuextOp(d, list, args.u32(1), pdone, args.u32(3));
      break;
    }
    case HYPERVISOR_UPDATE_VA_MAPPING:
    case HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: {
      const va = args.linear(0);
      const flags = args.linear(2);
      if (va < 0 || flags < 0) rc = -XEN_EFAULT;
      else if (op === HYPERVISOR_UPDATE_VA_MAPPING) {
        rc = doUpdateVaMapping(d, va, args.u32(1), args.hi(1), flags);
      } else {
        rc = doUpdateVaMappingOtherDomain(d, va, args.u32(1), args.hi(1), flags, args.u32(3));
      }
      break;
    }
    case HYPERVISOR_MULTICALL:
      rc = -XEN_EINVAL; // reached only from inside a multicall: re-entry is refused
      break;
    default:
      rc = -XEN_ENOSYS;
  }
  if (rc < 0) d.counts[HC_REJECTED]++;
  return rc;
}
