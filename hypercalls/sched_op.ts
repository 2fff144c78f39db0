/**
 * HYPERVISOR_sched_op (xen/common/sched/core.c do_sched_op): the PV guest's HLT.
 * SCHEDOP_block enables event delivery (clears the upcall mask) and blocks the vCPU,
 * unless an event is already waiting (vcpu_block: "Check for events /after/ blocking").
 * The platform then idles the vCPU until a device event wakes it; the upcall is
 * delivered on the way back to the guest.
 *
 * @module
 */

import { XEN_ENOSYS, XEN_SCHEDOP_BLOCK, XEN_SCHEDOP_YIELD } from "./abi.ts";
import { HC_SCHED_OP, type PvDomain } from "./pv_domain.ts";

/**
 * sched_op for domain `d`: SCHEDOP_yield returns 0 (one vCPU: nothing else to run);
 * SCHEDOP_block clears the upcall mask and sets `vcpu.blocked` unless an upcall is now
 * deliverable, and returns 0; any other command (shutdown, poll ... not modelled) is
 * -ENOSYS. Counts `hypercall.sched_op`.
 *
 * @example Blocking with nothing pending
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doSchedOp } from "./sched_op.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doSchedOp(platform.domain, 1), 0);
 * assert.equal(platform.domain.vcpu.blocked, true);
 * assert.equal(platform.domain.vcpu.upcallMask, 0);
 * ```
 */
export function doSchedOp(d: PvDomain, cmd: number): number {
  d.counts[HC_SCHED_OP]++;
  const v = d.vcpu;
  switch (cmd) {
    case XEN_SCHEDOP_YIELD:
      return 0;
    case XEN_SCHEDOP_BLOCK:
      v.setUpcallMask(0); // local_event_delivery_enable
      v.blocked = !v.eventsNeedDelivery();
      return 0;
    default:
      return -XEN_ENOSYS;
  }
}
