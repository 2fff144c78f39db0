/**
 * HYPERVISOR_callback_op (xen/arch/x86/pv/callback.c do_callback_op): where Xen sends the
 * guest for events it did not ask for: the event-channel upcall (CALLBACKTYPE_event), a
 * return to the guest that cannot be made (failsafe), and SYSCALL from user mode
 * (syscall). struct callback_register {u16 type; u16 flags; u64 address}.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import {
  CALLBACKOP_REGISTER,
  CALLBACKOP_UNREGISTER,
  CALLBACKTYPE_EVENT,
  CALLBACKTYPE_FAILSAFE,
  CALLBACKTYPE_NMI,
  CALLBACKTYPE_SYSCALL,
  CALLBACKTYPE_SYSCALL32,
  CALLBACKTYPE_SYSENTER,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOSYS,
} from "./abi.ts";
import { HC_CALLBACK_OP, type PvDomain } from "./pv_domain.ts";

/**
 * callback_op(`cmd`, arg at guest linear `argVa`) for domain `d`. CALLBACKOP_register
 * stores the address and flags of the callback type: -EFAULT when the argument cannot be
 * read, -EINVAL for an address that is not canonical, -ENOSYS for an unknown type (as
 * register_guest_callback). CALLBACKOP_unregister: -EINVAL for every type but NMI (those
 * "cannot be unregistered"), 0 for NMI. Other commands: -ENOSYS. Counts
 * `hypercall.callback_op`.
 *
 * @example An unreadable argument
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doCallbackOp } from "./callback_op.ts";
 * import { XEN_EFAULT } from "./abi.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doCallbackOp(platform.domain, 0, -1), -XEN_EFAULT);
 * ```
 */
export function doCallbackOp(d: PvDomain, cmd: number, argVa: number): number {
  d.counts[HC_CALLBACK_OP]++;
  if (cmd !== CALLBACKOP_REGISTER && cmd !== CALLBACKOP_UNREGISTER) return -XEN_ENOSYS;
  const size = cmd === CALLBACKOP_REGISTER ? 16 : 4;
  if (argVa < 0 || !d.isGuestRange(argVa, size) || !d.readGuest32(argVa)) return -XEN_EFAULT;
  const type = d.lo & 0xffff;
  const flags = d.lo >>> 16;
  if (cmd === CALLBACKOP_UNREGISTER) {
    switch (type) {
      case CALLBACKTYPE_NMI:
        d.vcpu.callbacks[type] = 0;
        return 0;
      case CALLBACKTYPE_EVENT:
      case CALLBACKTYPE_FAILSAFE:
      case CALLBACKTYPE_SYSCALL:
      case CALLBACKTYPE_SYSCALL32:
      case CALLBACKTYPE_SYSENTER:
        return -XEN_EINVAL;
      default:
        return -XEN_ENOSYS;
    }
  }
  if (!d.readGuest64(argVa + 8)) return -XEN_EFAULT;
  const address = canonicalToLinear(d.hi, d.lo);
  if (address < 0) return -XEN_EINVAL; // is_canonical_address
  switch (type) {
    case CALLBACKTYPE_EVENT:
    case CALLBACKTYPE_FAILSAFE:
    case CALLBACKTYPE_SYSCALL:
    case CALLBACKTYPE_SYSCALL32:
    case CALLBACKTYPE_SYSENTER:
    case CALLBACKTYPE_NMI:
      d.vcpu.callbacks[type] = address;
      d.vcpu.callbackFlags[type] = flags;
      return 0;
    default:
      return -XEN_ENOSYS;
  }
}
