/**
 * Emulate-on-write: the guest kernel wrote to one of its page tables, which the shadows
 * keep read-only. The hypervisor fetches the instruction at the guest's RIP through the
 * guest's own tables, decodes and executes it against guest-physical memory (the lab's
 * interpreter is the emulator, as x86_emulate is Xen's), then re-validates exactly the
 * shadow entries that shadow the guest entries written, and advances RIP. An instruction
 * it cannot emulate unshadows the page (the guest is probably using it as data), as Xen
 * does; a fault during emulation is the guest's.
 *
 * Two heuristics from Xen's check_for_early_unshadow: two emulated zero writes in a row
 * to one frame mean a process's tables are being torn down (exit, exec), and a REP store
 * clearing the frame means it is being reused: either way the frame stops being shadowed,
 * so the rest of the work runs without exits.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";
import { OP_MOVS, OP_STOS } from "../x86/decode.ts";
import { type Interpreter, STEP_FAULT, STEP_OK } from "../x86/interpreter.ts";
import { declareCounter } from "../x86/stats.ts";
import {
  SHADOW_UNSHADOW_EARLY,
  SHADOW_UNSHADOW_EMULATE_FAIL,
  SHADOW_UNSHADOW_REUSED,
  type ShadowMmu,
} from "./shadow_mmu.ts";

/** Guest page-table writes emulated. */
export const EMULATE_PT_WRITE: number = declareCounter(
  "emulate.ptWrite",
  "guest writes to write-protected page tables emulated by the hypervisor",
  "instructions",
);
/** Emulations that failed (the page was unshadowed instead). */
export const EMULATE_FAILED: number = declareCounter(
  "emulate.failed",
  "page-table writes the emulator could not handle (the page is unshadowed, the write retried)",
  "instructions",
);

/** The instruction was emulated; RIP is past it. */
export const EMULATE_DONE = 0;
/** Emulation raised an exception for the guest (in `mmu.emulator.cpu.exception`). */
export const EMULATE_FAULT = 1;
/** Could not emulate: the frame was unshadowed; retry the instruction natively. */
export const EMULATE_UNSHADOWED = 2;

/** The frame of the last emulated zero write, for the early-unshadow heuristic. */
const lastZeroWrite = new WeakMap<ShadowMmu, number>();

/** Forgets the early-unshadow history (a real fault came in between, as in Xen). */
export function resetEarlyUnshadow(mmu: ShadowMmu): void {
  lastZeroWrite.delete(mmu);
}

/**
 * Emulates the instruction at `hardware.rip` that faulted writing guest page-table frame
 * `gfn`. Copies the register state to the emulator and back.
 */
export function emulatePtWrite(mmu: ShadowMmu, hardware: Interpreter, gfn: number): number {
  const emulator = mmu.emulator;
  emulator.regs.set(hardware.regs);
  emulator.rip = hardware.rip;
  emulator.rflags = hardware.rflags;
  emulator.fsBase = hardware.fsBase;
  emulator.gsBase = hardware.gsBase;
  mmu.guestCtl.cpl = hardware.cpu.ctl.cpl;
  const view = mmu.view;
  view.writeLog.length = 0;
  view.logWrites = true;
  const step = emulator.step();
  view.logWrites = false;
  if (step !== STEP_OK && step !== STEP_FAULT) {
    mmu.stats.counts[EMULATE_FAILED]++;
    mmu.unshadow(gfn, SHADOW_UNSHADOW_EMULATE_FAIL);
    return EMULATE_UNSHADOWED;
  }
  // Registers, flags and RIP as the instruction left them (a REP store interrupted by a
  // fault keeps its progress, as on hardware).
  hardware.regs.set(emulator.regs);
  hardware.rip = emulator.rip;
  hardware.rflags = emulator.rflags;
  const wroteZeros = revalidateWrites(mmu);
  if (step === STEP_FAULT) return EMULATE_FAULT;
  mmu.stats.counts[EMULATE_PT_WRITE]++;
  const d = emulator.decoded;
  if (wroteZeros >= 0) {
    if (d.rep !== 0 && (d.op === OP_STOS || d.op === OP_MOVS)) {
      mmu.unshadow(wroteZeros, SHADOW_UNSHADOW_REUSED);
    } else if (lastZeroWrite.get(mmu) === wroteZeros) {
      mmu.unshadow(wroteZeros, SHADOW_UNSHADOW_EARLY);
      lastZeroWrite.delete(mmu);
    } else {
      lastZeroWrite.set(mmu, wroteZeros);
    }
  } else {
    // Any other emulated write breaks the run of zero writes (Xen's sh_emulate_unmap_dest).
    lastZeroWrite.delete(mmu);
  }
  return EMULATE_DONE;
}

/**
 * Emulates a data write the platform made outside an instruction (a kernel store the
 * lab models as a plain access) to a write-protected page table. False if the guest's
 * tables refuse it (the fault is in `mmu.emulator.cpu.exception`).
 */
export function emulateDataWrite(
  mmu: ShadowMmu,
  va: number,
  size: 1 | 2 | 4 | 8,
  lo: number,
  hi: number,
  cpl: number,
): boolean {
  mmu.guestCtl.cpl = cpl;
  const view = mmu.view;
  view.writeLog.length = 0;
  view.logWrites = true;
  const ok = mmu.emulator.cpu.write(va, size, lo, hi);
  view.logWrites = false;
  revalidateWrites(mmu);
  if (ok) mmu.stats.counts[EMULATE_PT_WRITE]++;
  return ok;
}

// sh_validate_guest_pt_write for every logged write: each 8-byte guest entry touched is
// re-propagated into every shadow of its frame. Returns the frame if every write stored
// zeros into one shadowed table frame, else -1.
function revalidateWrites(mmu: ShadowMmu): number {
  const log = mmu.view.writeLog;
  let zeroFrame = -2;
  let lastEntry = -1;
  let reduced = false;
  for (let i = 0; i < log.length; i += 2) {
    const gpa = log[i]!;
    const size = log[i + 1]!;
    const gfn = Math.floor(gpa / PAGE_SIZE);
    if (zeroFrame !== -1) {
      // As Xen: a zero write stores at least 4 bytes of zeros (a shorter store is not one).
      const zero = size >= 4 && mmu.view.read32(gpa) === 0;
      zeroFrame = zero && (zeroFrame === -2 || zeroFrame === gfn) && mmu.isShadowedTable(gfn)
        ? gfn
        : -1;
    }
    for (let entry = gpa - (gpa % 8); entry < gpa + size; entry += 8) {
      if (entry === lastEntry) continue;
      lastEntry = entry;
      if (mmu.validateEntry(Math.floor(entry / PAGE_SIZE), (entry % PAGE_SIZE) / 8)) {
        reduced = true;
      }
    }
  }
  log.length = 0;
  if (reduced) mmu.flushTlb(); // SHADOW_SET_FLUSH: a TLB entry may hold what was taken
  return zeroFrame >= 0 ? zeroFrame : -1;
}
