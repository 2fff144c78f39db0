/**
 * Trap-and-emulate of memory-mapped I/O: the shadow entry of a device frame carries
 * reserved bits (Xen's MMIO magic entry), so every guest access to it faults with RSVD=1
 * and exits; the hypervisor decodes the instruction (or takes the access the platform
 * modelled) and performs it against the device model through the guest-physical view.
 *
 * @module
 */

import { declareCounter } from "../x86/stats.ts";
import { type Interpreter, STEP_FAULT, STEP_OK } from "../x86/interpreter.ts";
import { EMULATE_DONE, EMULATE_FAULT, EMULATE_UNSHADOWED } from "./emulate_pt_write.ts";
import type { ShadowMmu } from "./shadow_mmu.ts";

/** MMIO accesses emulated by the hypervisor. */
export const EMULATE_MMIO: number = declareCounter(
  "emulate.mmio",
  "guest accesses to device registers emulated by the hypervisor",
  "accesses",
);

/**
 * Emulates the instruction at `hardware.rip` that accessed a device frame: EMULATE_DONE
 * (RIP advanced), EMULATE_FAULT (the exception is in `mmu.emulator.cpu.exception`) or
 * EMULATE_UNSHADOWED meaning "could not emulate".
 */
export function emulateMmio(mmu: ShadowMmu, hardware: Interpreter): number {
  const emulator = mmu.emulator;
  emulator.regs.set(hardware.regs);
  emulator.rip = hardware.rip;
  emulator.rflags = hardware.rflags;
  emulator.fsBase = hardware.fsBase;
  emulator.gsBase = hardware.gsBase;
  mmu.guestCtl.cpl = hardware.cpu.ctl.cpl;
  const step = emulator.step();
  if (step !== STEP_OK && step !== STEP_FAULT) return EMULATE_UNSHADOWED;
  hardware.regs.set(emulator.regs);
  hardware.rip = emulator.rip;
  hardware.rflags = emulator.rflags;
  if (step === STEP_FAULT) return EMULATE_FAULT;
  mmu.stats.counts[EMULATE_MMIO]++;
  return EMULATE_DONE;
}

/** A device read of `size` bytes at guest-physical `gpa`; the value lands in the emulator's `cpu.data`/`dataHi`. */
export function mmioRead(mmu: ShadowMmu, gpa: number, size: number): void {
  mmu.stats.counts[EMULATE_MMIO]++;
  const cpu = mmu.emulator.cpu;
  const view = mmu.view;
  if (size === 8) {
    cpu.data = view.read32(gpa);
    cpu.dataHi = view.read32(gpa + 4);
  } else {
    cpu.data = size === 4 ? view.read32(gpa) : size === 2 ? view.read16(gpa) : view.read8(gpa);
    cpu.dataHi = 0;
  }
}

/** A device write of `size` bytes of (`hi`:`lo`) at guest-physical `gpa`. */
export function mmioWrite(
  mmu: ShadowMmu,
  gpa: number,
  size: number,
  lo: number,
  hi: number,
): void {
  mmu.stats.counts[EMULATE_MMIO]++;
  const view = mmu.view;
  if (size === 8) {
    view.write32(gpa, lo);
    view.write32(gpa + 4, hi);
  } else if (size === 4) view.write32(gpa, lo);
  else if (size === 2) view.write16(gpa, lo);
  else view.write8(gpa, lo);
}
