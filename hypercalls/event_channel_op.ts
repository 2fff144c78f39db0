/**
 * HYPERVISOR_event_channel_op (xen/common/event_channel.c): binding the sources of the
 * guest's interrupts to event-channel ports. A PV guest has no interrupt controller:
 * its timer is VIRQ_TIMER (a per-vCPU virtual IRQ) and a device's interrupt line is a
 * PIRQ it may bind only if the domain was given it (`irqs=`, pirq_access_permitted).
 * When the source fires, Xen sets the port's bit in shared_info (evtchn_2l_set_pending)
 * and, if the vCPU has events unmasked, bounces to its event callback.
 *
 * ```
 * struct evtchn_bind_virq { u32 virq; u32 vcpu; u32 port OUT; }
 * struct evtchn_bind_pirq { u32 pirq; u32 flags; u32 port OUT; }
 * ```
 *
 * @module
 */

import {
  EVTCHNOP_BIND_PIRQ,
  EVTCHNOP_BIND_VIRQ,
  NR_VIRQS,
  VIRQ_TIMER,
  XEN_EEXIST,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOENT,
  XEN_ENOSYS,
  XEN_EPERM,
} from "./abi.ts";
import { HC_EVENT_CHANNEL_OP, type PvDomain } from "./pv_domain.ts";
import { ECS_PIRQ, ECS_VIRQ, NR_PIRQS } from "./pv_vcpu.ts";

/**
 * event_channel_op(`cmd`, arg at guest linear `argVa`) for domain `d`: EVTCHNOP_bind_virq
 * and EVTCHNOP_bind_pirq allocate the lowest free port (port 0 is reserved) and write it
 * to the argument's `port`. Errors as evtchn_bind_virq / evtchn_bind_pirq: -EFAULT when
 * the argument cannot be read or the port written (the binding then stays, as in Xen);
 * -EINVAL for a VIRQ >= NR_VIRQS or a PIRQ >= nr_pirqs; -ENOENT for a vCPU other than 0;
 * -EPERM for a PIRQ the domain was not given; -EEXIST when already bound; -ENOSPC when no
 * port is free. Other commands (close, send, unmask ...) are not modelled: -ENOSYS.
 * Counts `hypercall.event_channel_op`.
 *
 * @example A PIRQ the domain was not given
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
 * import { ACCESS_WRITE } from "../lib/x86/access.ts";
 * import { doEventChannelOp } from "./event_channel_op.ts";
 * import { XEN_EPERM } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const arg = DIRECT_MAP_BASE + 900 * 4096;
 * platform.access(arg, 4, ACCESS_WRITE, 4, 0, false); // pirq 4 (COM1): not given
 * assert.equal(doEventChannelOp(platform.domain, 2, arg), -XEN_EPERM);
 * ```
 */
export function doEventChannelOp(d: PvDomain, cmd: number, argVa: number): number {
  d.counts[HC_EVENT_CHANNEL_OP]++;
  if (cmd !== EVTCHNOP_BIND_VIRQ && cmd !== EVTCHNOP_BIND_PIRQ) return -XEN_ENOSYS;
  if (argVa < 0 || !d.isGuestRange(argVa, 12) || !d.readGuest32(argVa)) return -XEN_EFAULT;
  const source = d.lo;
  if (!d.readGuest32(argVa + 4)) return -XEN_EFAULT;
  const second = d.lo; // vcpu (bind_virq) or flags (bind_pirq)
  const v = d.vcpu;
  let port: number;
  if (cmd === EVTCHNOP_BIND_VIRQ) {
    if (source >= NR_VIRQS) return -XEN_EINVAL;
    // VIRQ_TIMER, VIRQ_DEBUG (1) and VIRQ_XENOPROF (7) are per-vCPU (virq_is_global);
    // the rest are global and bind on vCPU 0 only.
    const perVcpu = source === VIRQ_TIMER || source === 1 || source === 7;
    if (!perVcpu && second !== 0) return -XEN_EINVAL;
    if (second !== 0) return -XEN_ENOENT;
    if (v.virqToPort[source] !== 0) return -XEN_EEXIST;
    port = v.allocatePort();
    if (port < 0) return port;
    v.portState[port] = ECS_VIRQ;
    v.portTarget[port] = source;
    v.virqToPort[source] = port;
  } else {
    if (source >= NR_PIRQS) return -XEN_EINVAL;
    if (!d.isPirqPermitted(source)) return -XEN_EPERM;
    if (v.pirqToPort[source] !== 0) return -XEN_EEXIST;
    port = v.allocatePort();
    if (port < 0) return port;
    v.portState[port] = ECS_PIRQ;
    v.portTarget[port] = source;
    v.pirqToPort[source] = port;
  }
  // "Cleaning up here would be a mess!": a failed copy back leaves the binding.
  return d.writeGuest32(argVa + 8, port) ? 0 : -XEN_EFAULT;
}
