/**
 * HYPERVISOR_xen_version (xen/common/kernel.c do_xen_version). Besides answering it, a PV
 * guest uses it as the cheapest hypercall there is: Linux's xen_force_evtchn_callback
 * calls it after unmasking events with an upcall pending, so that Xen's exit path
 * (test_all_events) delivers the upcall.
 *
 * @module
 */

import { XEN_ENOSYS, XEN_MAJOR_VERSION, XEN_MINOR_VERSION, XENVER_VERSION } from "./abi.ts";
import { HC_XEN_VERSION, type PvDomain } from "./pv_domain.ts";

/**
 * xen_version for domain `d`: XENVER_version returns major << 16 | minor (4.19); the
 * other commands (extraversion, capabilities ...) are not modelled: -ENOSYS. Counts
 * `hypercall.xen_version`.
 *
 * @example
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doXenVersion } from "./xen_version.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doXenVersion(platform.domain, 0), 0x40013);
 * ```
 */
export function doXenVersion(d: PvDomain, cmd: number): number {
  d.counts[HC_XEN_VERSION]++;
  if (cmd === XENVER_VERSION) return (XEN_MAJOR_VERSION << 16) | XEN_MINOR_VERSION;
  return -XEN_ENOSYS;
}
