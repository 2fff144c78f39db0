/**
 * HYPERVISOR_physdev_op (xen/arch/x86/physdev.c do_physdev_op): what a PV kernel with a
 * device needs from Xen instead of touching the interrupt controller and the I/O
 * privilege level itself. PHYSDEVOP_eoi acknowledges a PIRQ (instead of writing the
 * PIC's EOI port); PHYSDEVOP_set_iopl sets the vCPU's virtual IOPL, which Xen's
 * privileged-op emulation checks before it performs an IN or OUT for the guest kernel
 * (Linux's xen_start_kernel sets it to 1).
 *
 * @module
 */

import { PHYSDEVOP_EOI, PHYSDEVOP_SET_IOPL, XEN_EFAULT, XEN_EINVAL, XEN_ENOSYS } from "./abi.ts";
import { HC_PHYSDEV_OP, type PvDomain } from "./pv_domain.ts";
import { NR_PIRQS } from "./pv_vcpu.ts";

/**
 * physdev_op(`cmd`, arg at guest linear `argVa`) for domain `d`. PHYSDEVOP_eoi {u32 irq}:
 * 0 for a bound PIRQ, -EINVAL for an irq >= nr_pirqs or one with no binding
 * (pirq_info is NULL). The keyboard's ISA IRQ is edge-triggered, so Xen acknowledged it
 * already (ACKTYPE_NONE) and the EOI has nothing to unmask. PHYSDEVOP_set_iopl {u32
 * iopl}: -EINVAL above 3. -EFAULT when the argument cannot be read; other commands are
 * not modelled: -ENOSYS. Counts `hypercall.physdev_op`.
 *
 * @example
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doPhysdevOp } from "./physdev_op.ts";
 * import { XEN_EFAULT } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doPhysdevOp(platform.domain, 12, -1), -XEN_EFAULT);
 * ```
 */
export function doPhysdevOp(d: PvDomain, cmd: number, argVa: number): number {
  d.counts[HC_PHYSDEV_OP]++;
  if (cmd !== PHYSDEVOP_EOI && cmd !== PHYSDEVOP_SET_IOPL) return -XEN_ENOSYS;
  if (argVa < 0 || !d.isGuestRange(argVa, 4) || !d.readGuest32(argVa)) return -XEN_EFAULT;
  const value = d.lo;
  if (cmd === PHYSDEVOP_SET_IOPL) {
    if (value > 3) return -XEN_EINVAL;
    d.vcpu.iopl = value;
    return 0;
  }
  if (value >= NR_PIRQS) return -XEN_EINVAL;
  if (d.vcpu.pirqToPort[value] === 0) return -XEN_EINVAL; // pirq_info(d, irq) == NULL
  return 0;
}
