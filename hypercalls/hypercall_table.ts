/**
 * The hypercall table: which handler serves which hypercall number, with the arguments as
 * the 64-bit registers carry them (Xen's pv_hypercall_table): the MMU's (mmu_update,
 * mmuext_op, update_va_mapping) and the CPU's (set_trap_table, stack_switch,
 * xen_version, vcpu_op, sched_op, callback_op, event_channel_op, physdev_op). A
 * multicall runs its calls through the same table; {@link doHypercall} adds the
 * multicall itself.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import {
  HYPERVISOR_CALLBACK_OP,
  HYPERVISOR_EVENT_CHANNEL_OP,
  HYPERVISOR_MMU_UPDATE,
  HYPERVISOR_MMUEXT_OP,
  HYPERVISOR_MULTICALL,
  HYPERVISOR_PHYSDEV_OP,
  HYPERVISOR_SCHED_OP,
  HYPERVISOR_SET_TRAP_TABLE,
  HYPERVISOR_STACK_SWITCH,
  HYPERVISOR_UPDATE_VA_MAPPING,
  HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN,
  HYPERVISOR_VCPU_OP,
  HYPERVISOR_XEN_VERSION,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
} from "./abi.ts";
import { doCallbackOp } from "./callback_op.ts";
import { doEventChannelOp } from "./event_channel_op.ts";
import { doMmuUpdate } from "./mmu_update.ts";
import { doMmuextOp } from "./mmuext_op.ts";
import { doPhysdevOp } from "./physdev_op.ts";
import { HC_REJECTED, type PvDomain } from "./pv_domain.ts";
import { doSchedOp } from "./sched_op.ts";
import { doSetTrapTable } from "./set_trap_table.ts";
import { doStackSwitch } from "./stack_switch.ts";
import { doUpdateVaMapping, doUpdateVaMappingOtherDomain } from "./update_va_mapping.ts";
import { doVcpuOp } from "./vcpu_op.ts";
import { doXenVersion } from "./xen_version.ts";

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
 * -EFAULT. Every negative result is counted in `hypercall.rejected`. HYPERVISOR_iret is
 * not here: it rewrites the whole vCPU state, so the platform's hypercall entry runs it
 * (inside a multicall it is -ENOSYS).
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
    case HYPERVISOR_SET_TRAP_TABLE:
      rc = doSetTrapTable(d, args.linear(0));
      break;
    case HYPERVISOR_STACK_SWITCH:
      rc = doStackSwitch(d, args.u32(0), args.u32(1), args.hi(1));
      break;
    case HYPERVISOR_XEN_VERSION:
      rc = doXenVersion(d, args.u32(0));
      break;
    case HYPERVISOR_VCPU_OP:
      rc = doVcpuOp(d, args.u32(0), args.u32(1), args.linear(2));
      break;
    case HYPERVISOR_SCHED_OP:
      rc = doSchedOp(d, args.u32(0));
      break;
    case HYPERVISOR_CALLBACK_OP:
      rc = doCallbackOp(d, args.u32(0), args.linear(1));
      break;
    case HYPERVISOR_EVENT_CHANNEL_OP:
      rc = doEventChannelOp(d, args.u32(0), args.linear(1));
      break;
    case HYPERVISOR_PHYSDEV_OP:
      rc = doPhysdevOp(d, args.u32(0), args.linear(1));
      break;
    default:
      rc = -XEN_ENOSYS;
  }
  if (rc < 0) d.counts[HC_REJECTED]++;
  return rc;
}
