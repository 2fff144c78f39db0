/**
 * The `native` platform: the guest runs on the bare processor. Guest-physical memory is
 * machine memory (GFN = MFN), the hardware CR3 is the guest's, CR3 writes and INVLPG take
 * effect directly, and every exception goes straight to the guest's handler.
 *
 * It is the reference the virtualized platforms are compared against: the same guest work
 * gives the same guest-visible outcome everywhere (DESIGN.md invariant 1), and only the
 * costs differ.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";
import { Interpreter } from "../x86/interpreter.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  PagingControl,
} from "../x86/paging_control.ts";
import { Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu } from "../x86/vcpu.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import { BasePlatform } from "./base_platform.ts";
import type { PlatformName } from "./platform.ts";

/** Options of {@link NativePlatform}. */
export interface NativePlatformOptions {
  /** Guest-physical (here: machine) memory in 4 KiB frames. */
  frames: number;
  /** Counters; a new set when omitted. */
  stats?: Stats;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Whether the vCPU uses its TLB; default true. */
  tlbEnabled?: boolean;
}

/** Control state of a 64-bit capable processor before the kernel turns paging on. */
export function resetPagingControl(): PagingControl {
  return new PagingControl({ cr0: CR0_PE | CR0_WP, cr4: CR4_PAE, efer: EFER_LME | EFER_NXE });
}

/**
 * Enters IA-32e paging on `cpu` with CR3 = `cr3` and CR4 = PAE | `cr4`; a refused state
 * (#GP) changes nothing and throws a RangeError.
 */
export function enterLongMode(cpu: Vcpu, cr3: number, cr4: number): void {
  const ctl = cpu.ctl;
  const saved = [ctl.efer, ctl.cr0, ctl.cr3, ctl.cr4] as const;
  ctl.efer = ctl.efer | EFER_LMA; // PG with LME set activates long mode (SDM 9.8.5)
  if (
    !cpu.writeCr3(cr3) || !cpu.writeCr0(CR0_PE | CR0_WP | CR0_PG) || !cpu.writeCr4(CR4_PAE | cr4)
  ) {
    [ctl.efer, ctl.cr0, ctl.cr3, ctl.cr4] = saved; // a refused start changes nothing
    throw new RangeError(`Cannot start the guest: CR3 ${cr3} / CR4 ${cr4} refused with #GP`);
  }
}

/**
 * The bare-metal platform.
 *
 * @example Load a value, start paging, read it through the guest's own tables
 * ```ts
 * import { NativePlatform } from "./native.ts";
 * import { RUN_DONE } from "./platform.ts";
 * import { ACCESS_READ } from "../x86/access.ts";
 * import assert from "node:assert/strict";
 *
 * const native = new NativePlatform({ frames: 16 });
 * // l4 at 0x1000 -> l3 at 0x2000 -> l2 at 0x3000 -> l1 at 0x4000 -> va 0 maps 0x5000
 * for (const [entry, to] of [[0x1000, 0x2000], [0x2000, 0x3000], [0x3000, 0x4000], [0x4000, 0x5000]]) {
 *   native.loadGuestPhysical32(entry, to | 0x3); // present, writable
 * }
 * native.loadGuestPhysical32(0x5010, 42);
 * native.start(0x1000, 0);
 * assert.equal(native.access(0x10, 4, ACCESS_READ, 0, 0, false), RUN_DONE);
 * assert.equal(native.cpu.data, 42);
 * ```
 */
export class NativePlatform extends BasePlatform {
  /** Always "native". */
  readonly name: PlatformName = "native";
  /** The machine memory (identical to guest-physical memory here). */
  readonly memory: MachineMemory;
  #started = false;

  /** A machine with `options.frames` frames of memory, paging off. */
  constructor(options: NativePlatformOptions) {
    const stats = options.stats ?? new Stats();
    const memory = new MachineMemory({ frames: options.frames, stats });
    const vcpuOptions: { tlb?: TlbConfig; tlbEnabled?: boolean } = {};
    if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
    if (options.tlbEnabled !== undefined) vcpuOptions.tlbEnabled = options.tlbEnabled;
    const cpu = new Vcpu(memory, resetPagingControl(), stats, vcpuOptions);
    super(stats, cpu, new Interpreter(cpu), options.frames);
    this.memory = memory;
    memory.attachIo(this.deviceGfn, 1, this.device); // the MMIO hole right above RAM
  }

  /** Stores into memory before {@link start}; RangeError outside memory or after start. */
  loadGuestPhysical32(gpa: number, value: number): void {
    if (this.#started) throw new RangeError("Cannot load guest memory: the guest has started");
    this.#checkGpa(gpa);
    this.memory.write32(gpa, value);
  }

  /** Reads guest-physical memory without the processor. */
  peekGuestPhysical32(gpa: number): number {
    this.#checkGpa(gpa);
    return this.memory.read32(gpa);
  }

  /** DMA out of guest frame `gfn`. */
  dmaRead(gfn: number, into: Uint32Array): void {
    this.#checkGfn(gfn);
    const words = this.memory.hostFrame(gfn, false);
    if (words === undefined) into.fill(0, 0, PAGE_SIZE / 4); // never written: reads as zero
    else into.set(words);
  }

  /** DMA into guest frame `gfn`. */
  dmaWrite(gfn: number, from: Uint32Array): void {
    this.#checkGfn(gfn);
    this.memory.hostFrame(gfn, true)!.set(from.subarray(0, PAGE_SIZE / 4));
  }

  /** Enters IA-32e paging with CR3 = `l4Gpa` and CR4 = PAE | `cr4`. */
  start(l4Gpa: number, cr4: number): void {
    enterLongMode(this.cpu, l4Gpa, cr4);
    this.#started = true;
  }

  /** Natively every exception goes to the guest's handler. */
  protected onException(_inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    return this.deliverToGuest(fromUser, e.vector, e.errorCode, e.cr2);
  }

  #checkGfn(gfn: number): void {
    if (!Number.isInteger(gfn) || gfn < 0 || gfn >= this.guestFrames) {
      throw new RangeError(
        `Cannot access guest frame ${gfn}: memory is ${this.guestFrames} frames`,
      );
    }
  }

  #checkGpa(gpa: number): void {
    if (!Number.isInteger(gpa) || gpa < 0 || gpa + 4 > this.guestFrames * PAGE_SIZE) {
      throw new RangeError(
        `Cannot access guest-physical ${gpa}: memory is ${this.guestFrames} frames`,
      );
    }
  }
}
