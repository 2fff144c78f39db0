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

import { ACCESS_WRITE, type AccessKind } from "../x86/access.ts";
import { formatLinear, PAGE_SIZE } from "../x86/address.ts";
import { formatInstruction } from "../x86/decode.ts";
import {
  Interpreter,
  STEP_FAULT,
  STEP_HALT,
  STEP_INTERCEPT,
  STEP_LIMIT,
  STEP_RETURN,
  STEP_UNSUPPORTED,
} from "../x86/interpreter.ts";
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
import { declareCounter, Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu } from "../x86/vcpu.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import {
  type Platform,
  type PlatformName,
  RUN_ABANDONED,
  RUN_CRASHED,
  RUN_DONE,
  TRAP_RETRY,
  type TrapHandler,
} from "./platform.ts";

/** Exceptions delivered to the guest's handlers, by any platform. */
export const TRAP_DELIVERED: number = declareCounter(
  "trap.delivered",
  "exceptions delivered to a guest handler",
  "exceptions",
);
/** Domains crashed. */
export const DOMAIN_CRASH: number = declareCounter(
  "domain.crash",
  "domains crashed (reason in the report)",
  "crashes",
);

/**
 * How often one access may fault and be "resolved" by the guest before the platform
 * declares a livelock and crashes the domain. A correct kernel needs at most a few
 * (e.g. swap-in, then COW, then a dirty-bit walk).
 */
export const MAX_FAULT_RETRIES = 16;
/** Exceptions nested deeper than this (a fault in a handler in a handler ...) crash the domain. */
export const MAX_TRAP_DEPTH = 3;
/** Instructions one {@link Platform.execute} may retire before it is stopped as a runaway. */
export const MAX_ROUTINE_STEPS = 1_000_000;

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
export class NativePlatform implements Platform {
  /** Always "native". */
  readonly name: PlatformName = "native";
  /** The run's counters. */
  readonly stats: Stats;
  /** The processor. */
  readonly cpu: Vcpu;
  /** The kernel-text interpreter on {@link cpu}. */
  readonly interpreter: Interpreter;
  /** Guest-physical memory size in frames. */
  readonly guestFrames: number;
  /** The machine memory (identical to guest-physical memory here). */
  readonly memory: MachineMemory;
  #crashReason = "";
  #started = false;
  #depth = 0;
  readonly #handlers: (TrapHandler | undefined)[] = new Array(32).fill(undefined);
  readonly #counts: Float64Array;

  /** A machine with `options.frames` frames of memory, paging off. */
  constructor(options: NativePlatformOptions) {
    this.guestFrames = options.frames;
    this.stats = options.stats ?? new Stats();
    this.#counts = this.stats.counts;
    this.memory = new MachineMemory({ frames: options.frames, stats: this.stats });
    // Reset state of a 64-bit capable processor before the kernel turns paging on.
    const ctl = new PagingControl({
      cr0: CR0_PE | CR0_WP,
      cr4: CR4_PAE,
      efer: EFER_LME | EFER_NXE,
    });
    const vcpuOptions: { tlb?: TlbConfig; tlbEnabled?: boolean } = {};
    if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
    if (options.tlbEnabled !== undefined) vcpuOptions.tlbEnabled = options.tlbEnabled;
    this.cpu = new Vcpu(this.memory, ctl, this.stats, vcpuOptions);
    this.interpreter = new Interpreter(this.cpu);
  }

  /** Why the domain crashed, or "". */
  get crashReason(): string {
    return this.#crashReason;
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
    const cpu = this.cpu;
    const ctl = cpu.ctl;
    const saved = [ctl.efer, ctl.cr0, ctl.cr3, ctl.cr4] as const;
    ctl.efer = ctl.efer | EFER_LMA; // PG with LME set activates long mode (SDM 9.8.5)
    if (
      !cpu.writeCr3(l4Gpa) || !cpu.writeCr0(CR0_PE | CR0_WP | CR0_PG) ||
      !cpu.writeCr4(CR4_PAE | cr4)
    ) {
      [ctl.efer, ctl.cr0, ctl.cr3, ctl.cr4] = saved; // a refused start changes nothing
      throw new RangeError(
        `Cannot start the guest: CR3 ${l4Gpa} / CR4 ${cr4} refused with #GP`,
      );
    }
    this.#started = true;
  }

  /** Installs the guest's handler for `vector`. */
  setTrapHandler(vector: number, handler: TrapHandler): void {
    if (!Number.isInteger(vector) || vector < 0 || vector > 31) {
      throw new RangeError(`Cannot set a trap handler for vector ${vector}: must be 0..31`);
    }
    this.#handlers[vector] = handler;
  }

  /** One guest data access; see {@link Platform.access}. */
  access(
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo: number,
    hi: number,
    user: boolean,
  ): number {
    if (this.#crashReason !== "") return RUN_CRASHED;
    const cpu = this.cpu;
    const cpl = user ? 3 : 0;
    for (let attempt = 0;; attempt++) {
      cpu.ctl.cpl = cpl;
      const ok = kind === ACCESS_WRITE ? cpu.write(va, size, lo, hi) : cpu.read(va, size, kind);
      if (ok) return RUN_DONE;
      if (attempt === MAX_FAULT_RETRIES) {
        return this.#crashWith(
          `livelock: the access at ${formatLinear(va)} still faults after ${attempt} retries`,
        );
      }
      const outcome = this.#deliver(user);
      if (outcome !== RUN_DONE) return outcome;
    }
  }

  /** Runs kernel text at `rip` until RET; see {@link Platform.execute}. */
  execute(rip: number): number {
    if (this.#crashReason !== "") return RUN_CRASHED;
    const cpu = this.cpu;
    const interpreter = this.interpreter;
    cpu.ctl.cpl = 0;
    let step = interpreter.run(rip, MAX_ROUTINE_STEPS);
    // A livelock is one instruction faulting at one address again and again; a REP string
    // instruction faulting on page after page is making progress.
    let faults = 0;
    let lastRip = -1;
    let lastCr2 = -1;
    for (;;) {
      if (step === STEP_RETURN) return RUN_DONE;
      if (step === STEP_FAULT) {
        const cr2 = cpu.exception.cr2;
        if (interpreter.rip !== lastRip || cr2 !== lastCr2) faults = 0;
        lastRip = interpreter.rip;
        lastCr2 = cr2;
      }
      if (step === STEP_FAULT && faults < MAX_FAULT_RETRIES) {
        faults++;
        const outcome = this.#deliver(false);
        if (outcome !== RUN_DONE) return outcome;
        cpu.ctl.cpl = 0;
        step = interpreter.resume(MAX_ROUTINE_STEPS);
        continue;
      }
      const at = formatLinear(interpreter.rip);
      const what = formatInstruction(interpreter.decoded);
      return this.#crashWith(
        step === STEP_FAULT
          ? `livelock: kernel code at ${at} still faults after ${faults} retries`
          : step === STEP_LIMIT
          ? `runaway kernel code: ${MAX_ROUTINE_STEPS} instructions without RET (at ${at})`
          : step === STEP_HALT
          ? `kernel halted at ${at}`
          : step === STEP_UNSUPPORTED || step === STEP_INTERCEPT
          ? `unsupported instruction at ${at}: ${what}`
          : `unexpected interpreter result ${step} at ${at}`,
      );
    }
  }

  /** Crashes the domain with `reason` (the first reason is kept). */
  crash(reason: string): void {
    if (this.#crashReason !== "") return;
    this.#crashReason = reason;
    this.#counts[DOMAIN_CRASH]++;
  }

  // Delivers the exception in cpu.exception to the guest's handler at CPL 0.
  #deliver(fromUser: boolean): number {
    const e = this.cpu.exception;
    const handler = this.#handlers[e.vector];
    if (handler === undefined) {
      return this.#crashWith(
        `triple fault: no handler for vector ${e.vector} (error code ${e.errorCode}, cr2 ${
          formatLinear(e.cr2)
        })`,
      );
    }
    if (this.#depth >= MAX_TRAP_DEPTH) {
      return this.#crashWith(
        `double fault: vector ${e.vector} at cr2 ${formatLinear(e.cr2)} nested ${this.#depth} deep`,
      );
    }
    this.#counts[TRAP_DELIVERED]++;
    const vector = e.vector;
    const errorCode = e.errorCode;
    const cr2 = e.cr2;
    this.cpu.ctl.cpl = 0;
    this.#depth++;
    let answer: number;
    try {
      answer = handler(vector, errorCode, cr2, fromUser);
    } finally {
      this.#depth--;
    }
    if (this.#crashReason !== "") return RUN_CRASHED;
    return answer === TRAP_RETRY ? RUN_DONE : RUN_ABANDONED;
  }

  #crashWith(reason: string): number {
    this.crash(reason);
    return RUN_CRASHED;
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
