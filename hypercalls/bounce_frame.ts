/**
 * create_bounce_frame (xen/arch/x86/x86_64/entry.S): how Xen hands an event to a PV
 * guest's kernel. There is no IDT delivery for a PV guest: every exception, system call
 * and event upcall enters Xen first, which writes a frame on the guest kernel's stack
 * and rewrites the saved registers so that the return to the guest lands in the
 * guest's handler (its trap table entry, or a callback).
 *
 * ```
 * from user mode: switch to kernel mode and to kernel_sp (stack_switch)
 * from kernel mode: the current RSP
 * then align down to 16 and push, highest first:
 *   SS, RSP, RFLAGS (IF = !saved upcall mask), CS | saved_upcall_mask << 32, RIP,
 *   [error code], [DS, ES, FS, GS: failsafe only], R11, RCX      <- new RSP
 * CS is the kernel's (RPL 0) when the event came from kernel mode, the user's (RPL 3)
 * otherwise: the guest reads it to know where it came from.
 * TBF_INTERRUPT sets the upcall mask (after its old value was saved into the frame).
 * ```
 *
 * A fault writing the frame, a stack pointer in Xen's hole, or a handler address of 0
 * crash the domain (the frame writes' exception table entries point at
 * dom_crash_sync_extable; create_bounce_frame_bad_sp / _bad_bounce_ip).
 *
 * @module
 */

import { canonicalToLinear, formatLinear } from "../lib/x86/address.ts";
import {
  type Interpreter,
  KERNEL_CS,
  KERNEL_SS,
  RFLAGS_IF,
  USER_CS,
  USER_SS,
} from "../lib/x86/interpreter.ts";
import { type PvDomain, XEN_HOLE_END, XEN_HOLE_START } from "./pv_domain.ts";

/** trap_bounce flag: an exception (from the trap table). */
export const TBF_EXCEPTION = 1;
/** trap_bounce flag: push the error code. */
export const TBF_EXCEPTION_ERRCODE = 2;
/** trap_bounce flag: mask events (set vcpu_info.evtchn_upcall_mask). */
export const TBF_INTERRUPT = 8;
/** trap_bounce flag: the failsafe callback (push DS, ES, FS, GS too). */
export const TBF_FAILSAFE = 16;

// RFLAGS bits create_bounce_frame clears in the guest's state (entry.S: "TF, VM, RF and
// NT flags are cleared on trap", and AC).
const RFLAGS_TF = 0x100;
const RFLAGS_NT = 0x4000;
const RFLAGS_RF = 0x10000;
const RFLAGS_VM = 0x20000;
const RFLAGS_AC = 0x40000;
const RFLAGS_CLEARED_ON_BOUNCE = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM | RFLAGS_AC;

/**
 * The guest state Xen saved on entry (its struct cpu_user_regs, the part a bounce frame
 * records): RIP, CS, RFLAGS, RSP, SS, RCX, R11 as u32 halves (RIP and RSP raw, so a
 * non-canonical value from an iret frame can be recorded), and whether the guest was in
 * user mode. One instance is reused; nothing is allocated per bounce.
 */
export class CpuUserRegs {
  /** RIP, low and high halves. */
  ripLo = 0;
  /** RIP, high half. */
  ripHi = 0;
  /** CS selector. */
  cs = 0;
  /** RFLAGS (low 32 bits). */
  rflags = 0;
  /** RSP, low half. */
  rspLo = 0;
  /** RSP, high half. */
  rspHi = 0;
  /** SS selector. */
  ss = 0;
  /** RCX, low half. */
  rcxLo = 0;
  /** RCX, high half. */
  rcxHi = 0;
  /** R11, low half. */
  r11Lo = 0;
  /** R11, high half. */
  r11Hi = 0;
  /** Whether the guest was in user mode (then the frame goes on kernel_sp). */
  fromUser = false;

  /** Records the state of `it` now, at CPL `cpl` (3: user mode; else kernel mode). */
  capture(it: Interpreter, cpl: number): void {
    const regs = it.regs;
    const rip = it.rip;
    this.ripLo = rip >>> 0;
    this.ripHi = canonicalHigh(rip);
    this.fromUser = cpl === 3;
    this.cs = this.fromUser ? USER_CS : KERNEL_CS;
    this.ss = this.fromUser ? USER_SS : KERNEL_SS;
    this.rflags = it.rflags >>> 0;
    this.rspLo = regs[8]!;
    this.rspHi = regs[9]!;
    this.rcxLo = regs[2]!;
    this.rcxHi = regs[3]!;
    this.r11Lo = regs[22]!;
    this.r11Hi = regs[23]!;
  }
}

// Why a frame could not be written (the writes' extable entries: domain_crash).
function frameFault(bottom: number, sp: number): string {
  return `bounce frame: cannot write the frame at ${formatLinear(bottom)} (stack ` +
    `${formatLinear(sp)}): a fault on the guest kernel's stack`;
}

// The canonical high half of a 48-bit linear value.
function canonicalHigh(va: number): number {
  const high = Math.floor(va / 2 ** 32);
  return (va >= 2 ** 47 ? high | 0xffff0000 : high) >>> 0;
}

/**
 * create_bounce_frame for domain `d`: writes the frame of the interrupted state `from` on
 * the guest kernel's stack and makes the vCPU resume at `eip` (a 48-bit linear value) in
 * kernel mode (CPL 0 in the lab), with `flags` (TBF_*) and `errorCode` (pushed when
 * TBF_EXCEPTION_ERRCODE is set). Returns "" or why the domain must crash; after a crash
 * reason the vCPU's state is not meaningful.
 *
 * @example Bounce a user-mode event to a handler (see tests/hypercalls for full frames)
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { createBounceFrame, CpuUserRegs } from "./bounce_frame.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 64 });
 * // No kernel stack registered yet, paging off: the write faults, the domain would crash.
 * const from = new CpuUserRegs();
 * from.capture(platform.interpreter, 3);
 * platform.domain.vcpu.kernelSp = -1;
 * assert.match(createBounceFrame(platform.domain, from, 0x1000, 0, 0), /not canonical/);
 * ```
 */
export function createBounceFrame(
  d: PvDomain,
  from: CpuUserRegs,
  eip: number,
  flags: number,
  errorCode: number,
): string {
  const it = d.regs;
  if (it === null) return "bounce frame: the domain has no vCPU registers";
  const v = d.vcpu;
  let sp: number;
  if (from.fromUser) {
    sp = v.kernelSp; // toggle_guest_mode, then the registered guest-OS stack
    if (sp < 0) return "bounce frame: the kernel stack from stack_switch is not canonical";
  } else {
    sp = canonicalToLinear(from.rspHi, from.rspLo);
    if (sp < 0) return "bounce frame: the kernel's RSP is not canonical";
  }
  d.cpu.ctl.cpl = 0; // guest kernel mode: the frame is written as the kernel would
  sp -= sp % 16; // "Stack frames are 16-byte aligned"
  if (sp >= XEN_HOLE_START && sp < XEN_HOLE_END + 60) {
    return `bounce frame: the stack ${formatLinear(sp)} is in Xen's area`;
  }
  const slots = 5 + ((flags & TBF_EXCEPTION_ERRCODE) !== 0 ? 1 : 0) +
    ((flags & TBF_FAILSAFE) !== 0 ? 4 : 0) + 2;
  const bottom = sp - 8 * slots;
  if (bottom < 0) return frameFault(0, sp);
  const savedMask = v.upcallMask;
  if ((flags & TBF_INTERRUPT) !== 0) v.setUpcallMask(savedMask | 1);
  const rflags = ((from.rflags & ~RFLAGS_IF) | (savedMask === 0 ? RFLAGS_IF : 0)) >>> 0;
  let at = sp - 40;
  let ok = d.writeGuest64(sp - 8, from.ss, 0) &&
    d.writeGuest64(sp - 16, from.rspLo, from.rspHi) &&
    d.writeGuest64(sp - 32, from.cs, savedMask & 0xff) &&
    d.writeGuest64(sp - 24, rflags, 0) &&
    d.writeGuest64(at, from.ripLo, from.ripHi);
  if (ok && (flags & TBF_EXCEPTION_ERRCODE) !== 0) {
    at -= 8;
    ok = d.writeGuest64(at, errorCode >>> 0, 0);
  }
  if (ok && (flags & TBF_FAILSAFE) !== 0) {
    // DS, ES, FS, GS: the lab's flat segments are all null selectors.
    for (let k = 1; k <= 4 && ok; k++) ok = d.writeGuest64(at - 8 * k, 0, 0);
    at -= 32;
  }
  ok = ok && d.writeGuest64(at - 8, from.r11Lo, from.r11Hi) &&
    d.writeGuest64(at - 16, from.rcxLo, from.rcxHi);
  if (!ok) return frameFault(bottom, sp);
  // Rewrite the saved state: kernel stack, kernel CS/SS, the handler.
  const regs = it.regs;
  regs[8] = bottom >>> 0;
  regs[9] = canonicalHigh(bottom);
  const newFlags = ((from.rflags & ~RFLAGS_CLEARED_ON_BOUNCE) | RFLAGS_IF | 0x2) >>> 0;
  it.rflags = newFlags;
  const ctl = d.cpu.ctl;
  ctl.rflags = ((ctl.rflags & ~RFLAGS_AC) | (newFlags & RFLAGS_AC)) >>> 0;
  if (eip === 0) return "bounce frame: no handler address (create_bounce_frame_bad_bounce_ip)";
  it.rip = eip;
  return "";
}
