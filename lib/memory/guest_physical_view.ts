/**
 * Guest-physical memory as the hypervisor sees it: byte addresses are GPAs, translated
 * through the P2M to machine memory. The hypervisor's own software walks of the guest's
 * tables and its instruction emulator run over this view, so they read and write exactly
 * what the guest would (Xen's guest_walk_tables and x86_emulate callbacks do the same
 * through the p2m).
 *
 * Writes can be logged (GPA and size), so that after emulating an instruction the
 * hypervisor knows which guest entries changed. GFNs with no RAM read as all ones and drop
 * writes; MMIO GFNs go to the registered handler.
 *
 * @module
 */

import type { PhysicalMemory } from "../x86/physical_memory.ts";
import type { MachineMemory } from "./machine_memory.ts";
import type { MmioHandler } from "./mmio_device.ts";
import type { P2m } from "./p2m.ts";

/**
 * Guest-physical memory over a P2M.
 *
 * @example
 * ```ts
 * import { FrameTable, GuestPhysicalView, MachineMemory, P2m, Stats, asDomainId } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const stats = new Stats();
 * const memory = new MachineMemory({ frames: 64, stats });
 * const p2m = P2m.populate(new FrameTable({ frames: 64, stats, scatterSeed: 3 }), asDomainId(1), 8);
 * const view = new GuestPhysicalView(memory, p2m);
 * view.logWrites = true;
 * view.write32(0x2010, 7); // gfn 2
 * assert.equal(memory.read32(p2m.gfnToMfn(2) * 4096 + 0x10), 7);
 * assert.deepEqual(view.writeLog, [0x2010, 4]);
 * ```
 */
export class GuestPhysicalView implements PhysicalMemory {
  /** Machine memory behind the view. */
  readonly memory: MachineMemory;
  /** The P2M. */
  readonly p2m: P2m;
  /** Record writes in {@link writeLog}. */
  logWrites = false;
  /** Logged writes as [gpa, size, gpa, size, ...]; the caller clears it. */
  readonly writeLog: number[] = [];
  /** Where MMIO accesses go; null drops them (reads all ones). */
  mmio: MmioHandler | null = null;

  /** A view of `memory` through `p2m`. */
  constructor(memory: MachineMemory, p2m: P2m) {
    this.memory = memory;
    this.p2m = p2m;
  }

  /** The machine address of `gpa`, or -1 (no RAM) / -2 (MMIO). */
  gpaToMa(gpa: number): number {
    const mfn = this.p2m.gfnToMfn(Math.floor(gpa / 4096));
    return mfn < 0 ? mfn : mfn * 4096 + (gpa & 0xfff);
  }

  /** Reads a byte. */
  read8(gpa: number): number {
    return this.#read(gpa, 1);
  }

  /** Reads 16 bits. */
  read16(gpa: number): number {
    return this.#read(gpa, 2);
  }

  /** Reads 32 bits. */
  read32(gpa: number): number {
    return this.#read(gpa, 4);
  }

  /** Writes a byte. */
  write8(gpa: number, value: number): void {
    this.#write(gpa, 1, value);
  }

  /** Writes 16 bits. */
  write16(gpa: number, value: number): void {
    this.#write(gpa, 2, value);
  }

  /** Writes 32 bits. */
  write32(gpa: number, value: number): void {
    this.#write(gpa, 4, value);
  }

  /** No direct storage is lent: every access goes through the P2M (and the log). */
  hostFrame(_pfn: number, _materialize: boolean): Uint32Array | undefined {
    return undefined;
  }

  #read(gpa: number, size: number): number {
    if ((gpa & 0xfff) + size > 4096) {
      let value = 0;
      for (let k = 0; k < size; k++) value |= this.#read(gpa + k, 1) << (8 * k);
      return value >>> 0;
    }
    const ma = this.gpaToMa(gpa);
    if (ma === -2 && this.mmio !== null) return this.mmio.read(gpa, size) >>> 0;
    if (ma < 0) return size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    const memory = this.memory;
    return size === 4 ? memory.read32(ma) : size === 2 ? memory.read16(ma) : memory.read8(ma);
  }

  #write(gpa: number, size: number, value: number): void {
    if ((gpa & 0xfff) + size > 4096) {
      for (let k = 0; k < size; k++) this.#write(gpa + k, 1, (value >>> (8 * k)) & 0xff);
      return;
    }
    const ma = this.gpaToMa(gpa);
    if (ma === -2 && this.mmio !== null) {
      this.mmio.write(gpa, size, value);
      return;
    }
    if (ma < 0) return;
    if (this.logWrites) this.writeLog.push(gpa, size);
    const memory = this.memory;
    if (size === 4) memory.write32(ma, value);
    else if (size === 2) memory.write16(ma, value);
    else memory.write8(ma, value);
  }
}
