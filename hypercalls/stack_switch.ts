/**
 * HYPERVISOR_stack_switch (xen/arch/x86/pv/misc-hypercalls.c do_stack_switch): the stack
 * Xen switches to when it bounces an event that came from user mode, the PV kernel's
 * TSS.RSP0. The guest calls it on every thread switch. Xen stores the values unchecked;
 * a bad one shows when a bounce frame cannot be written.
 *
 * @module
 */

import { canonicalToLinear } from "../lib/x86/address.ts";
import { HC_STACK_SWITCH, type PvDomain } from "./pv_domain.ts";

/**
 * stack_switch for domain `d`: kernel_ss = `ss`, kernel_sp = (`spHi`:`spLo`) (kept as a
 * 48-bit linear value, -1 when not canonical). Returns 0. Counts
 * `hypercall.stack_switch`.
 *
 * @example
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doStackSwitch } from "./stack_switch.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * assert.equal(doStackSwitch(platform.domain, 0x10, 0x9000, 0xffff_8880), 0);
 * assert.equal(platform.domain.vcpu.kernelSp, 0x8880_0000_9000);
 * ```
 */
export function doStackSwitch(d: PvDomain, ss: number, spLo: number, spHi: number): number {
  d.counts[HC_STACK_SWITCH]++;
  d.vcpu.kernelSs = ss & 0xffff;
  d.vcpu.kernelSp = canonicalToLinear(spHi, spLo);
  return 0;
}
