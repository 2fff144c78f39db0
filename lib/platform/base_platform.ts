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
  CPU_INSTRUCTIONS,
  CPU_UD,
  type Interpreter,
  InterpreterContext,
  RFLAGS_IF,
  STEP_FAULT,
  STEP_HALT,
  STEP_INTERCEPT,
  STEP_LIMIT,
  STEP_OK,
  STEP_RETURN,
  STEP_SERVICE,
  STEP_TRIPLE_FAULT,
  STEP_UNSUPPORTED,
} from "../x86/interpreter.ts";
import { VECTOR_EPT_MISCONFIG, VECTOR_EPT_VIOLATION, VECTOR_UD } from "../x86/vcpu.ts";
import { CPU_IDLE, PcBoard } from "./pc_board.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";
import type { Vcpu } from "../x86/vcpu.ts";
import { CounterDevice } from "../memory/mmio_device.ts";
import {
  type GuestCpuState,
  type GuestService,
  type Platform,
  type PlatformName,
  RUN_ABANDONED,
  RUN_CRASHED,
  RUN_DONE,
  RUN_IDLE,
  RUN_LIMIT,
  SERVICE_STOP,
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
/** Guest services called by the guest kernel's entry text (its C code). */
export const GUEST_SERVICE_CALLS: number = declareCounter(
  "guest.serviceCalls",
  "calls from the guest's entry text into its kernel's C code (the trap service)",
  "calls",
);
/** Domains crashed. */
export const DOMAIN_CRASH: number = declareCounter(
  "domain.crash",
  "domains crashed (reason in the report)",
  "crashes",
);

// #callService(): the guest asked to stop (distinct from every RUN_* / HANDLED_* value).
const SERVICE_STOP_OUTCOME = 100;

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
/** Service calls nested deeper than this (a service whose kernel text calls one ...) crash. */
const MAX_SERVICE_DEPTH = 4;

// Exceptions that push an error code (SDM Vol. 3A Table 6-1): #DF, #TS, #NP, #SS, #GP,
// #PF, #AC, #CP.
function hasErrorCode(vector: number): boolean {
  return vector === 8 || (vector >= 10 && vector <= 14) || vector === 17 || vector === 21;
}

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
  /** The guest's port devices and virtual clock. */
  readonly board: PcBoard;
  /** CPL of the guest kernel's code: 0 unless a subclass deprivileges it. */
  guestKernelCpl = 0;
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
  #stopReason = "";
  #depth = 0;
  // Whether exceptions are delivered through the guest's IDT (runGuest at guest level)
  // rather than to the TypeScript trap handlers (access(), execute()).
  #guestLevel = false;
  #guestCr2 = 0;
  #inRun = false;
  #service: GuestService | null = null;
  #serviceDepth = 0;
  readonly #contexts: InterpreterContext[] = [];
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
    this.board = new PcBoard(stats);
    interpreter.ports = this.board;
    for (let i = 0; i < MAX_SERVICE_DEPTH; i++) this.#contexts.push(new InterpreterContext());
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

  /** Why the last runGuest() stopped short, or "". */
  get stopReason(): string {
    return this.#stopReason;
  }

  /** The address of the last page fault given to the guest. */
  get guestCr2(): number {
    return this.#guestCr2;
  }

  /** Whether an exception now goes through the guest's IDT (see runGuest()). */
  protected get isGuestLevel(): boolean {
    return this.#guestLevel;
  }

  /** Installs the guest kernel's service range; see {@link Platform.setServices}. */
  setServices(base: number, length: number, service: GuestService): void {
    if (!Number.isInteger(base) || base < 0 || !Number.isInteger(length) || length <= 0) {
      throw new RangeError(`Cannot install a service range at ${base} of ${length} bytes`);
    }
    this.interpreter.serviceBase = base;
    this.interpreter.serviceLimit = length;
    this.#service = service;
  }

  /** The native TSS store of RSP0: the processor's (and the VMCS guest's) own TSS. */
  setTssRsp0(top: number): void {
    this.interpreter.rsp0 = top;
  }

  /** What the guest believes about its processor: here, the processor itself. */
  guestCpuState(): GuestCpuState {
    const it = this.interpreter;
    const highest = it.pendingInterrupt; // the IRR's highest vector (the next one taken)
    return {
      kernelMode: this.cpu.ctl.cpl === 0,
      interruptsEnabled: (it.rflags & RFLAGS_IF) !== 0,
      idtBase: it.idtrBase,
      kernelStack: it.rsp0,
      cr3: this.cpu.ctl.cr3,
      cr2: this.#guestCr2,
      pending: highest >= 0 ? [highest] : [],
      keptIn: this.name === "native" ? "processor" : "vmcs",
    };
  }

  /** Runs the whole guest; see {@link Platform.runGuest}. */
  runGuest(maxInstructions: number): number {
    if (!Number.isInteger(maxInstructions) || maxInstructions < 0) {
      throw new RangeError(`Cannot run the guest for ${maxInstructions} instructions`);
    }
    this.#stopReason = "";
    if (this.#crashReason !== "") return RUN_CRASHED;
    const it = this.interpreter;
    const board = this.board;
    const counts = this.counts;
    const end = board.now + maxInstructions;
    it.systemInstructions = true;
    this.#guestLevel = true;
    this.#inRun = true;
    try {
      for (;;) {
        if (board.now >= board.nextEventAt) board.fireDue(this.#raise);
        if (this.#crashReason !== "") return RUN_CRASHED;
        if (board.now >= end) return this.#stepBound(maxInstructions);
        const chunk = Math.min(end, board.nextEventAt) - board.now;
        const before = counts[CPU_INSTRUCTIONS]!;
        const step = it.runGuest(chunk);
        const retired = counts[CPU_INSTRUCTIONS]! - before;
        // A chunk of deliveries that retired nothing still moves time on.
        board.now += step === STEP_LIMIT && retired === 0 ? 1 : retired;
        this.afterGuestChunk();
        let outcome: number;
        switch (step) {
          case STEP_LIMIT:
            continue;
          case STEP_SERVICE:
            outcome = this.#callService();
            if (outcome === SERVICE_STOP_OUTCOME) return RUN_DONE;
            break;
          case STEP_FAULT:
            outcome = this.onException(true, this.cpu.ctl.cpl === 3);
            break;
          case STEP_INTERCEPT:
            outcome = this.onIntercept();
            break;
          case STEP_HALT:
            outcome = this.onHalt();
            break;
          case STEP_UNSUPPORTED:
            // An encoding the interpreter decodes but does not execute (16-bit PUSH, IRETW
            // ...). From a user program it is the program's problem: #UD, as a processor
            // without the instruction would raise. In kernel code it ends the domain.
            if (this.cpu.ctl.cpl !== 3) return this.crashWith(this.#stepFailure(step, "guest"));
            this.counts[CPU_UD]++;
            this.cpu.exception.vector = VECTOR_UD;
            this.cpu.exception.errorCode = 0;
            outcome = this.onException(true, true);
            break;
          default:
            return this.crashWith(this.#stepFailure(step, "guest"));
        }
        if (outcome === RUN_IDLE) return RUN_IDLE;
        if (outcome === RUN_CRASHED || this.#crashReason !== "") return RUN_CRASHED;
        if (outcome === RUN_ABANDONED) {
          return this.crashWith("a trap handler abandoned guest-level work (a kernel bug)");
        }
      }
    } finally {
      this.#guestLevel = false;
      this.#inRun = false;
    }
  }

  /**
   * HLT at guest level (RIP already past it). With IF = 1 the processor sleeps until the
   * next device event: the virtual clock jumps there (counted as idle time). With IF = 0
   * nothing but an NMI wakes it; Xen takes that as the vCPU going down (hvm_hlt), so the
   * domain ends. A subclass counts its exit first.
   */
  protected onHalt(): number {
    const it = this.interpreter;
    if ((it.rflags & RFLAGS_IF) === 0) {
      return this.crashWith(
        `hlt at ${
          formatLinear(it.rip)
        } with interrupts disabled: the vCPU is down (as Xen's hvm_hlt)`,
      );
    }
    return this.idleUntilEvent();
  }

  /** Sleeps until the next device event; RUN_IDLE when none will come. */
  protected idleUntilEvent(): number {
    const board = this.board;
    if (this.interpreter.pendingInterrupt >= 0) return HANDLED_RETRY;
    const next = board.nextEventAt;
    if (next === Infinity) {
      this.#stopReason = `idle at ${
        formatLinear(this.interpreter.rip)
      }: the guest waits for an interrupt and no device event is scheduled`;
      return RUN_IDLE;
    }
    if (next > board.now) {
      this.counts[CPU_IDLE] += next - board.now;
      board.now = next;
    }
    return HANDLED_RETRY;
  }

  /**
   * Called after every stretch of guest execution in {@link runGuest} (between device
   * events, services, faults and intercepts), for a platform's bookkeeping (VT-x's
   * interrupt-window exits). The default does nothing.
   */
  protected afterGuestChunk(): void {}

  /**
   * A device raises interrupt `vector`. Natively the processor's pin: the interpreter
   * delivers it at the next instruction boundary with IF = 1. Hypervisors override.
   */
  protected raiseGuestInterrupt(vector: number): void {
    this.interpreter.raiseInterrupt(vector);
  }

  /**
   * Delivers exception `vector` to the guest's own handler at guest level, as the
   * processor does (natively, or an injection at VM entry): through the guest's IDT, with
   * the double-fault rules. Returns HANDLED_COMPLETE or RUN_CRASHED. PV and the classic
   * monitor override it (a bounce frame, a reflection).
   */
  protected injectException(vector: number, errorCode: number, cr2: number): number {
    const it = this.interpreter;
    // Only these exceptions push an error code (SDM Vol. 3A Table 6-1): #UD's frame has
    // none, whatever cpu.exception.errorCode holds.
    const code = hasErrorCode(vector) ? errorCode : -1;
    for (let attempt = 0; attempt <= MAX_FAULT_RETRIES; attempt++) {
      const step = it.deliverEvent(vector, code, false);
      if (step === STEP_OK) return HANDLED_COMPLETE;
      if (step === STEP_TRIPLE_FAULT) {
        const where = vector === 14 ? ` (cr2 ${formatLinear(cr2)})` : "";
        return this.crashWith(
          `triple fault delivering vector ${vector} at ${
            formatLinear(it.rip)
          }${where}: a fault while delivering a double fault`,
        );
      }
      // An EPT exit while delivering: the hypervisor fixes the mapping, then retries.
      const e = this.cpu.exception.vector;
      if (e !== VECTOR_EPT_VIOLATION && e !== VECTOR_EPT_MISCONFIG) break;
      const saved = this.#guestLevel;
      this.#guestLevel = false;
      const outcome = this.onException(true, false);
      this.#guestLevel = saved;
      if (outcome !== HANDLED_RETRY && outcome !== HANDLED_COMPLETE) return outcome;
    }
    return this.crashWith(`cannot deliver vector ${vector} at ${formatLinear(it.rip)}`);
  }

  /** Records the CR2 the guest will read for a delivered page fault. */
  protected setGuestCr2(cr2: number): void {
    this.#guestCr2 = cr2;
  }

  readonly #raise = (vector: number): void => this.raiseGuestInterrupt(vector);

  // STEP_SERVICE: run the kernel's C code with the guest's registers saved, then return
  // from the call (on the stack the service left, which a context switch changes).
  #callService(): number {
    const it = this.interpreter;
    const service = this.#service;
    if (service === null) return this.crashWith("a service call with no service installed");
    if (this.#serviceDepth >= MAX_SERVICE_DEPTH) {
      return this.crashWith(`service calls nested ${this.#serviceDepth} deep`);
    }
    this.counts[GUEST_SERVICE_CALLS]++;
    const context = this.#contexts[this.#serviceDepth]!;
    const number = it.serviceNumber;
    it.saveContext(context);
    this.#serviceDepth++;
    const savedLevel = this.#guestLevel;
    this.#guestLevel = false;
    let verdict: number;
    try {
      verdict = service(number, context);
    } finally {
      this.#serviceDepth--;
      this.#guestLevel = savedLevel;
    }
    if (this.#crashReason !== "") return RUN_CRASHED;
    it.restoreContext(context);
    it.systemInstructions = true;
    // The RET of the call: a fault on the kernel stack is the kernel's own (an oops).
    for (let attempt = 0;; attempt++) {
      const step = it.returnFromService();
      if (step === STEP_OK) break;
      if (step !== STEP_FAULT || attempt === MAX_FAULT_RETRIES) {
        return this.crashWith(this.#stepFailure(step, "service return"));
      }
      this.#guestLevel = false;
      const outcome = this.onException(true, false);
      this.#guestLevel = savedLevel;
      if (outcome !== HANDLED_RETRY && outcome !== HANDLED_COMPLETE) return outcome;
    }
    return verdict === SERVICE_STOP ? SERVICE_STOP_OUTCOME : HANDLED_COMPLETE;
  }

  #stepBound(maxInstructions: number): number {
    const it = this.interpreter;
    const where = `${this.cpu.ctl.cpl === 3 ? "user" : "kernel"} code at ${formatLinear(it.rip)}`;
    this.#stopReason = (it.rflags & RFLAGS_IF) === 0
      ? `step bound: ${maxInstructions} instructions ran without finishing; the guest is ` +
        `spinning in ${where} with interrupts disabled (IF=0), so no timer interrupt can ` +
        `preempt it`
      : `step bound: ${maxInstructions} instructions ran without finishing (now in ${where})`;
    return RUN_LIMIT;
  }

  #stepFailure(step: number, what: string): string {
    const it = this.interpreter;
    const at = formatLinear(it.rip);
    return step === STEP_LIMIT
      ? `runaway kernel code: ${MAX_ROUTINE_STEPS} instructions without RET (at ${at})`
      : step === STEP_HALT
      ? `kernel halted at ${at}`
      : step === STEP_UNSUPPORTED
      ? `unsupported instruction at ${at}: ${formatInstruction(it.decoded)}`
      : step === STEP_TRIPLE_FAULT
      ? `triple fault at ${at}: a fault while delivering a double fault`
      : step === STEP_RETURN
      ? `RET with no caller in ${what} code at ${at}`
      : `${what}: unexpected interpreter result ${step} at ${at}`;
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
    return this.#access(va, size, kind, lo, hi, user, false);
  }

  /** The access faulted on the vCPU just now; see {@link Platform.accessFaulted}. */
  accessFaulted(
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo: number,
    hi: number,
    user: boolean,
  ): number {
    if (this.#crashReason !== "") return RUN_CRASHED;
    return this.#access(va, size, kind, lo, hi, user, true);
  }

  // The loop of access(): try, take the exception, retry. `faulted`: the first try was
  // already made (by the caller, on the vCPU) and its exception is in cpu.exception.
  #access(
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo: number,
    hi: number,
    user: boolean,
    faulted: boolean,
  ): number {
    const cpu = this.cpu;
    const cpl = user ? 3 : 0;
    for (let attempt = 0;; attempt++) {
      cpu.ctl.cpl = cpl;
      // 4-byte data accesses take the vCPU's fast paths (a TLB hit without a call).
      const ok = attempt === 0 && faulted
        ? false
        : size === 4 && kind === ACCESS_READ
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
    const savedLevel = this.#guestLevel;
    this.#guestLevel = false;
    // Outside a guest run the routine is the lab's TypeScript kernel work: no interrupt
    // may be taken inside it, whatever IF the guest left (the guest's own flags return).
    const outside = !this.#inRun;
    const interpreter = this.interpreter;
    const flags = interpreter.rflags;
    if (outside) interpreter.rflags = flags & ~RFLAGS_IF;
    try {
      return this.#execute(rip);
    } finally {
      this.#guestLevel = savedLevel;
      if (outside) interpreter.rflags = (interpreter.rflags & ~RFLAGS_IF) | (flags & RFLAGS_IF);
    }
  }

  #execute(rip: number): number {
    const cpu = this.cpu;
    const interpreter = this.interpreter;
    const kernelCpl = this.guestKernelCpl;
    cpu.ctl.cpl = kernelCpl;
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
        return this.crashWith(this.#stepFailure(step, "kernel"));
      }
      if (outcome !== HANDLED_RETRY && outcome !== HANDLED_COMPLETE) return outcome;
      cpu.ctl.cpl = kernelCpl;
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
    if (this.#guestLevel) {
      if (vector === 14) this.#guestCr2 = cr2;
      this.counts[TRAP_DELIVERED]++;
      return this.injectException(vector, errorCode, cr2);
    }
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
