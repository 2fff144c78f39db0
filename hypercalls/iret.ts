/**
 * HYPERVISOR_iret (xen/arch/x86/pv/iret.c do_iret): the PV kernel's return from its
 * handlers. A 64-bit PV kernel cannot use IRETQ to leave a handler (it runs deprivileged
 * and Xen must switch the mode and the event mask), so its exit path pushes the registers
 * the hypercall page's SYSCALL clobbers and jumps to the iret hypercall, with
 *
 * ```
 * struct iret_context at RSP (lowest first):  rax, r11, rcx, flags, rip, cs, rflags, rsp, ss
 * ```
 *
 * Xen reads it from the guest stack (a fault: domain_crash), switches to user mode when
 * CS.RPL is 3, loads RIP, RSP and RFLAGS (IOPL and VM cleared, IF always set: the real
 * interrupt flag of a PV guest is always on), R11 and RCX unless `flags` has
 * VGCF_in_syscall, sets the event upcall mask from the saved RFLAGS.IF, and returns the
 * saved RAX in RAX. The lab keeps a PV kernel at CPL 0, so "kernel mode" is CPL 0 and
 * "user mode" CPL 3.
 *
 * A RIP that is not canonical cannot be returned to: Xen's IRETQ faults, and its fixup
 * (entry.S .Lfx0 / .Ldf0) bounces to the guest's failsafe callback with the selectors
 * pushed too, or crashes the domain when none is registered.
 *
 * @module
 */

import { canonicalToLinear, formatLinear } from "../lib/x86/address.ts";
import { RFLAGS_IF, RFLAGS_IOPL } from "../lib/x86/interpreter.ts";
import {
  CALLBACKF_MASK_EVENTS,
  CALLBACKTYPE_FAILSAFE,
  IRET_CONTEXT_SIZE,
  VGCF_IN_SYSCALL,
} from "./abi.ts";
import {
  type CpuUserRegs,
  createBounceFrame,
  TBF_FAILSAFE,
  TBF_INTERRUPT,
} from "./bounce_frame.ts";
import { HC_IRET, PV_FAILSAFE, type PvDomain } from "./pv_domain.ts";

// The RFLAGS bits that exist (SDM Vol. 1 3.4.3): CF PF AF ZF SF TF IF DF OF IOPL NT RF VM
// AC VIF VIP ID. The reserved ones are not loaded; bit 1 reads as 1.
const RFLAGS_DEFINED = 0x3f7fd5;
const RFLAGS_VM = 0x20000;
const RFLAGS_AC = 0x40000;

// struct iret_context, read into u32 halves: qword k is [2k] (low), [2k + 1] (high).
const context = new Uint32Array(IRET_CONTEXT_SIZE / 4);
const RAX = 0;
const R11 = 1;
const RCX = 2;
const FLAGS = 3;
const RIP = 4;
const CS = 5;
const RFLAGS = 6;
const RSP = 7;
const SS = 8;

/**
 * do_iret for domain `d`: pops struct iret_context from the guest's RSP and restores the
 * state it describes (see the module doc). `scratch` receives the restored state when the
 * return needs the failsafe callback. Counts `hypercall.iret`. Returns "" (the vCPU now
 * runs the restored state, RAX = the saved RAX) or why the domain must crash.
 *
 * @example A frame on an unmapped stack crashes the domain, with the reason
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { CpuUserRegs } from "./bounce_frame.ts";
 * import { doIret } from "./iret.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * platform.interpreter.setReg(4, 0xfff0, 0xffff_8000); // RSP in Xen's hole
 * assert.match(doIret(platform.domain, new CpuUserRegs()), /cannot read the frame/);
 * ```
 */
export function doIret(d: PvDomain, scratch: CpuUserRegs): string {
  d.counts[HC_IRET]++;
  const it = d.regs;
  if (it === null) return "iret: the domain has no vCPU registers";
  const regs = it.regs;
  const rsp = canonicalToLinear(regs[9]!, regs[8]!);
  if (rsp < 0 || !d.isGuestRange(rsp, IRET_CONTEXT_SIZE)) {
    return `iret: cannot read the frame at RSP ${formatRaw(regs[9]!, regs[8]!)}: ` +
      "not a guest address (do_iret: domain_crash)";
  }
  d.cpu.ctl.cpl = 0; // copy_from_user in guest kernel mode
  for (let k = 0; k < IRET_CONTEXT_SIZE / 8; k++) {
    if (!d.readGuest64(rsp + 8 * k)) {
      return `iret: cannot read the frame at ${formatLinear(rsp)}: a fault reading the ` +
        "guest stack (do_iret: domain_crash)";
    }
    context[2 * k] = d.lo;
    context[2 * k + 1] = d.hi;
  }
  const v = d.vcpu;
  const cs = context[2 * CS]! & 0xffff;
  const toUser = (cs & 3) === 3;
  const savedFlags = context[2 * RFLAGS]!;
  const rflags = ((savedFlags & RFLAGS_DEFINED & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF | 0x2) >>>
    0;
  const inSyscall = (context[2 * FLAGS]! & VGCF_IN_SYSCALL) !== 0;
  const rip = canonicalToLinear(context[2 * RIP + 1]!, context[2 * RIP]!);
  // The registers: RAX, RSP, RFLAGS, and RCX/R11 (or SYSRET's view of them).
  regs[0] = context[2 * RAX]!;
  regs[1] = context[2 * RAX + 1]!;
  regs[8] = context[2 * RSP]!;
  regs[9] = context[2 * RSP + 1]!;
  if (!inSyscall) {
    regs[22] = context[2 * R11]!;
    regs[23] = context[2 * R11 + 1]!;
    regs[2] = context[2 * RCX]!;
    regs[3] = context[2 * RCX + 1]!;
  } else {
    regs[22] = rflags;
    regs[23] = 0;
    regs[2] = context[2 * RIP]!;
    regs[3] = context[2 * RIP + 1]!;
  }
  it.rflags = rflags;
  const ctl = d.cpu.ctl;
  ctl.rflags = ((ctl.rflags & ~RFLAGS_AC) | (rflags & RFLAGS_AC)) >>> 0;
  // "Restore upcall mask from supplied EFLAGS.IF."
  v.setUpcallMask((savedFlags & RFLAGS_IF) === 0 ? 1 : 0);
  ctl.cpl = toUser ? 3 : 0; // toggle_guest_mode when returning to user mode
  if (rip >= 0) {
    it.rip = rip;
    return "";
  }
  // The exit to the guest faults: the failsafe callback, or the end of the domain.
  const failsafe = v.callbacks[CALLBACKTYPE_FAILSAFE]!;
  if (failsafe === 0) {
    return `iret: return to the non-canonical RIP ${
      formatRaw(context[2 * RIP + 1]!, context[2 * RIP]!)
    } faults and no failsafe callback is registered`;
  }
  d.counts[PV_FAILSAFE]++;
  scratch.ripLo = context[2 * RIP]!;
  scratch.ripHi = context[2 * RIP + 1]!;
  scratch.cs = cs;
  scratch.rflags = rflags;
  scratch.rspLo = context[2 * RSP]!;
  scratch.rspHi = context[2 * RSP + 1]!;
  scratch.ss = context[2 * SS]! & 0xffff;
  scratch.rcxLo = regs[2]!;
  scratch.rcxHi = regs[3]!;
  scratch.r11Lo = regs[22]!;
  scratch.r11Hi = regs[23]!;
  scratch.fromUser = toUser;
  const mask = (v.callbackFlags[CALLBACKTYPE_FAILSAFE]! & CALLBACKF_MASK_EVENTS) !== 0
    ? TBF_INTERRUPT
    : 0;
  const reason = createBounceFrame(d, scratch, failsafe, TBF_FAILSAFE | mask, 0);
  return reason === "" ? "" : `iret: failsafe callback: ${reason}`;
}

function formatRaw(hi: number, lo: number): string {
  return "0x" + hi.toString(16).padStart(8, "0") + lo.toString(16).padStart(8, "0");
}
