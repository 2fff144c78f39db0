/**
 * What every platform does the same way: the loop of a guest access (try, take the
 * exception, retry), the loop of kernel text execution (step, take the exception or the
 * intercepted instruction, resume), delivery of an exception to the guest's handler (its
 * IDT), and crashing the domain with a reason. A platform supplies what happens when the
 * processor raises an exception or intercepts an instruction: natively the guest gets it
 * at once; under a hypervisor it is a VM exit first.
 *
 * @module
 */

import { ACCESS_READ, ACCESS_WRITE, type AccessKind } from "../x86/access.ts";
import { formatLinear } from "../x86/address.ts";
import { formatInstruction } from "../x86/decode.ts";
import {
  type Interpreter,
  STEP_FAULT,
  STEP_HALT,
  STEP_INTERCEPT,
  STEP_LIMIT,
  STEP_RETURN,
  STEP_TRIPLE_FAULT,
  STEP_UNSUPPORTED,
} from "../x86/interpreter.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";
import type { Vcpu } from "../x86/vcpu.ts";
import { CounterDevice } from "../memory/mmio_device.ts";
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
/** VM exits of any reason, on every virtualized platform. */
export const EXIT_TOTAL: number = declareCounter("exit.total", "VM exits, all reasons", "exits");
/** Domains crashed. */
export const DOMAIN_CRASH: number = declareCounter(
  "domain.crash",
  "domains crashed (reason in the report)",
  "crashes",
);

/**
 * How often one access may fault at one address and be "resolved" before the platform
 * declares a livelock and crashes the domain. A correct kernel needs a few (a hidden
 * fault, then a genuine one, then a dirty-bit fault ...).
 */
export const MAX_FAULT_RETRIES = 16;
/** Exceptions nested deeper than this (a fault in a handler in a handler ...) crash the domain. */
export const MAX_TRAP_DEPTH = 3;
/** Instructions one {@link Platform.execute} may retire before it is stopped as a runaway. */
export const MAX_ROUTINE_STEPS = 1_000_000;

/** A platform's answer to an exception or intercept: retry the access / instruction. */
export const HANDLED_RETRY: number = RUN_DONE;
/**
 * A platform's answer: the hypervisor completed the access or instruction itself (it
 * emulated it and, for an instruction, advanced RIP), so it is not retried.
 */
export const HANDLED_COMPLETE = 3;

/**
 * The shared machinery of the platforms. Subclasses implement memory loading, start, and
 * {@link onException} (and {@link onIntercept} if they intercept instructions).
 */
export abstract class BasePlatform implements Platform {
  /** Which platform. */
  abstract readonly name: PlatformName;
  /** The run's counters. */
  readonly stats: Stats;
  /** The processor. */
  readonly cpu: Vcpu;
  /** The kernel-text interpreter on {@link cpu}. */
  readonly interpreter: Interpreter;
  /** Guest-physical memory in frames. */
  readonly guestFrames: number;
  /** The guest's device. */
  readonly device: CounterDevice;
  /** The device's guest frame (just above guest RAM). */
  readonly deviceGfn: number;
  /** The access being retried by {@link access}: its address, size, kind and value. */
  protected readonly request: {
    va: number;
    size: 1 | 2 | 4 | 8;
    kind: AccessKind;
    lo: number;
    hi: number;
  } = { va: 0, size: 4, kind: 0, lo: 0, hi: 0 };
  /** The run's counter array. */
  protected readonly counts: Float64Array;
  #crashReason = "";
  #depth = 0;
  readonly #handlers: (TrapHandler | undefined)[] = new Array(32).fill(undefined);

  /** The machinery around `cpu` and `interpreter`, counting into `stats`. */
  constructor(stats: Stats, cpu: Vcpu, interpreter: Interpreter, guestFrames: number) {
    this.stats = stats;
    this.counts = stats.counts;
    this.cpu = cpu;
    this.interpreter = interpreter;
    this.guestFrames = guestFrames;
    this.device = new CounterDevice(stats);
    this.deviceGfn = guestFrames;
  }

  abstract loadGuestPhysical32(gpa: number, value: number): void;
  abstract peekGuestPhysical32(gpa: number): number;
  abstract dmaRead(gfn: number, into: Uint32Array): void;
  abstract dmaWrite(gfn: number, from: Uint32Array): void;
  abstract start(l4Gpa: number, cr4: number): void;

  /**
   * The processor raised `cpu.exception` during a data access (`inInterpreter` false; the
   * access is in {@link request}) or an instruction (true). Returns HANDLED_RETRY,
   * HANDLED_COMPLETE, RUN_ABANDONED or RUN_CRASHED.
   */
  protected abstract onException(inInterpreter: boolean, fromUser: boolean): number;

  /**
   * The interpreter stopped at an intercepted instruction (`interpreter.decoded`).
   * Returns HANDLED_COMPLETE (emulated, RIP advanced), HANDLED_RETRY, RUN_ABANDONED or
   * RUN_CRASHED. The default intercepts nothing, so reaching it is a crash.
   */
  protected onIntercept(): number {
    return this.crashWith(
      `unexpected intercept of ${formatInstruction(this.interpreter.decoded)}`,
    );
  }

  /** Why the domain crashed, or "". */
  get crashReason(): string {
    return this.#crashReason;
  }

  /** Installs the guest's handler for `vector` (0..31). */
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
      // 4-byte data accesses take the vCPU's fast paths (a TLB hit without a call).
      const ok = size === 4 && kind === ACCESS_READ
        ? cpu.read32(va)
        : size === 4 && kind === ACCESS_WRITE
        ? cpu.write32(va, lo)
        : kind === ACCESS_WRITE
        ? cpu.write(va, size, lo, hi)
        : cpu.read(va, size, kind);
      if (ok) return RUN_DONE;
      if (attempt === MAX_FAULT_RETRIES) {
        return this.crashWith(
          `livelock: the access at ${formatLinear(va)} still faults after ${attempt} retries`,
        );
      }
      const request = this.request;
      request.va = va;
      request.size = size;
      request.kind = kind;
      request.lo = lo;
      request.hi = hi;
      const outcome = this.onException(false, user);
      if (outcome === HANDLED_COMPLETE) return RUN_DONE;
      if (outcome !== HANDLED_RETRY) return outcome;
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
      let outcome: number;
      if (step === STEP_INTERCEPT) {
        outcome = this.onIntercept();
      } else if (step === STEP_FAULT) {
        const cr2 = cpu.exception.cr2;
        if (interpreter.rip !== lastRip || cr2 !== lastCr2) faults = 0;
        lastRip = interpreter.rip;
        lastCr2 = cr2;
        if (faults === MAX_FAULT_RETRIES) {
          return this.crashWith(
            `livelock: kernel code at ${
              formatLinear(interpreter.rip)
            } still faults after ${faults} retries`,
          );
        }
        faults++;
        outcome = this.onException(true, false);
      } else {
        const at = formatLinear(interpreter.rip);
        return this.crashWith(
          step === STEP_LIMIT
            ? `runaway kernel code: ${MAX_ROUTINE_STEPS} instructions without RET (at ${at})`
            : step === STEP_HALT
            ? `kernel halted at ${at}`
            : step === STEP_UNSUPPORTED
            ? `unsupported instruction at ${at}: ${formatInstruction(interpreter.decoded)}`
            : step === STEP_TRIPLE_FAULT
            ? `triple fault at ${at}: a fault while delivering a double fault`
            : `unexpected interpreter result ${step} at ${at}`,
        );
      }
      if (outcome !== HANDLED_RETRY && outcome !== HANDLED_COMPLETE) return outcome;
      cpu.ctl.cpl = 0;
      step = interpreter.resume(MAX_ROUTINE_STEPS);
    }
  }

  /** Crashes the domain with `reason` (the first reason is kept). */
  crash(reason: string): void {
    if (this.#crashReason !== "") return;
    this.#crashReason = reason;
    this.counts[DOMAIN_CRASH]++;
  }

  /** Crashes the domain and returns RUN_CRASHED. */
  protected crashWith(reason: string): number {
    this.crash(reason);
    return RUN_CRASHED;
  }

  /**
   * Delivers an exception to the guest's handler at CPL 0 (a native exception, or one a
   * hypervisor injects). Returns HANDLED_RETRY, RUN_ABANDONED or RUN_CRASHED.
   */
  protected deliverToGuest(
    fromUser: boolean,
    vector: number,
    errorCode: number,
    cr2: number,
  ): number {
    const handler = this.#handlers[vector];
    if (handler === undefined) {
      return this.crashWith(
        `triple fault: no handler for vector ${vector} (error code ${errorCode}, cr2 ${
          formatLinear(cr2)
        })`,
      );
    }
    if (this.#depth >= MAX_TRAP_DEPTH) {
      return this.crashWith(
        `double fault: vector ${vector} at cr2 ${formatLinear(cr2)} nested ${this.#depth} deep`,
      );
    }
    this.counts[TRAP_DELIVERED]++;
    this.cpu.ctl.cpl = 0;
    this.#depth++;
    let answer: number;
    try {
      answer = handler(vector, errorCode, cr2, fromUser);
    } finally {
      this.#depth--;
    }
    if (this.#crashReason !== "") return RUN_CRASHED;
    return answer === TRAP_RETRY ? HANDLED_RETRY : RUN_ABANDONED;
  }
}
