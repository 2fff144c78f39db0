/**
 * The guest at instruction level: user programs made of x86-64 bytes, and the kernel's
 * entry side that runs when they trap. It sits on {@link GuestKernel} (processes, memory,
 * page faults) and adds what a processor's system side needs from an OS:
 *
 * - an exception/interrupt table (a 64-bit IDT natively; a trap table given to Xen by
 *   set_trap_table for PV), and the kernel stack of the running thread (the TSS's RSP0
 *   natively; HYPERVISOR_stack_switch for PV);
 * - entry stubs, a common entry/exit and an idle loop of real instructions
 *   (entry_text.ts), whose `call` into the service range runs this module's trap service:
 *   the kernel's C code;
 * - system calls by `int 0x80` (read, write, sched_yield, getpid, exit; Linux x86-64
 *   numbers), a keyboard driver (IRQ 1, `in al, 0x60`), a serial console (`out` to
 *   0x3f8, under an interrupt-flag save/restore as a console spinlock would take), and a
 *   timer interrupt (IRQ 0) that preempts: a round-robin scheduler switching kernel
 *   stacks and address spaces;
 * - for PV: the event-channel upcall (VIRQ_TIMER and the keyboard's PIRQ bound to
 *   ports, pending bits in shared memory, PHYSDEVOP_eoi for the PIRQ).
 *
 * The kernel's C code is TypeScript reached through the service gate; everything the
 * processor (or a hypervisor) can see is instructions and memory: every trap frame,
 * saved register and gate is in guest memory, read and written through the platform.
 *
 * @module
 */

import { ACCESS_READ, ACCESS_WRITE } from "../x86/access.ts";
import { linearHigh32, PAGE_SIZE } from "../x86/address.ts";
import {
  InterpreterContext,
  KERNEL_CS,
  KERNEL_SS,
  RFLAGS_IF,
  USER_CS,
  USER_SS,
} from "../x86/interpreter.ts";
import { declareCounter } from "../x86/stats.ts";
import { VECTOR_PF } from "../x86/vcpu.ts";
import {
  type GuestService,
  type Platform,
  RUN_CRASHED,
  RUN_DONE,
  RUN_IDLE,
  RUN_LIMIT,
  SERVICE_CONTINUE,
  SERVICE_STOP,
  TRAP_RETRY,
} from "../platform/platform.ts";
import { VECTOR_KEYBOARD, VECTOR_TIMER } from "../platform/pc_board.ts";
import {
  FRAME_QWORDS,
  FRAME_SLOT,
  HYPERCALL_PAGE_OFFSET,
  STUB_VECTORS,
  type SystemLabel,
  VECTOR_UPCALL,
} from "./entry_text.ts";
import { FRAME_USE_KERNEL } from "./frame_allocator.ts";
import type { GuestKernel } from "./kernel.ts";
import { DIRECT_MAP_BASE, IMAGE_DATA_START, IMAGE_TEXT_START, STACK_TOP } from "./layout.ts";

// The context's RSP as a 48-bit linear value.
function linearRsp(context: InterpreterContext): number {
  return (context.regs[9]! & 0xffff) * 2 ** 32 + context.regs[8]!;
}

/** read(fd, buf, count). */
export const SYS_READ = 0;
/** write(fd, buf, count). */
export const SYS_WRITE = 1;
/** sched_yield(). */
export const SYS_SCHED_YIELD = 24;
/** getpid(). */
export const SYS_GETPID = 39;
/** exit(code). */
export const SYS_EXIT = 60;
/** Bad file descriptor. */
export const EBADF = 9;
/** Bad address. */
export const EFAULT = 14;
/** Function not implemented. */
export const ENOSYS = 38;

/** Where a loaded program's text starts (its entry point). */
export const PROGRAM_TEXT: number = IMAGE_TEXT_START;
/** Where a loaded program's data page starts (a scratch buffer for its calls). */
export const PROGRAM_DATA: number = IMAGE_DATA_START;

/** System calls made by guest programs. */
export const GUEST_SYSCALL: number = declareCounter(
  "guest.syscall",
  "system calls (int 0x80) handled by the guest kernel",
  "calls",
);
/** Timer interrupts handled by the guest kernel. */
export const GUEST_TIMER_IRQ: number = declareCounter(
  "guest.timerIrq",
  "timer interrupts handled by the guest kernel",
  "interrupts",
);
/** Keyboard interrupts handled by the guest kernel. */
export const GUEST_KEYBOARD_IRQ: number = declareCounter(
  "guest.keyboardIrq",
  "keyboard interrupts handled by the guest kernel",
  "interrupts",
);
/**
 * Times the console lock's irqSave, inside write() (entered through an interrupt gate, so
 * with interrupts off), read the interrupt flag as set: 0 wherever the processor tells
 * the kernel the truth; under a classic monitor PUSHF shows the real IF. Guest-visible,
 * yet not a `guest.*` counter: those must match native on every platform (DESIGN.md
 * invariant 1), and this one exists to show where they cannot.
 */
export const DIVERGENCE_IRQ_SAVE_SAW_IF: number = declareCounter(
  "divergence.irqSaveSawIf",
  "console-lock irqSave calls that read IF = 1 inside a system call (the kernel was lied to)",
  "calls",
);
/** Thread switches made by the guest's scheduler (to idle included). */
export const GUEST_THREAD_SWITCH: number = declareCounter(
  "guest.threadSwitch",
  "kernel-stack switches made by the guest's scheduler (idle included)",
  "switches",
);
/** Exceptions from guest user programs handled by the guest kernel (#PF, #GP, #UD ...). */
export const GUEST_USER_EXCEPTION: number = declareCounter(
  "guest.userException",
  "exceptions raised by guest user programs and handled by the guest kernel",
  "exceptions",
);

// Xen's shared_info layout (xen/include/public/xen.h, x86-64): vcpu_info[0] at 0 with
// evtchn_upcall_pending (byte 0), evtchn_upcall_mask (byte 1), evtchn_pending_sel (8);
// evtchn_pending[] at 2048 and evtchn_mask[] at 2560 (after 32 vcpu_info of 64 bytes).
/** vcpu_info.evtchn_upcall_pending. */
export const VCPU_INFO_UPCALL_PENDING = 0;
/** vcpu_info.evtchn_upcall_mask. */
export const VCPU_INFO_UPCALL_MASK = 1;
/** vcpu_info.evtchn_pending_sel. */
export const VCPU_INFO_PENDING_SEL = 8;
/** shared_info.evtchn_pending[]. */
export const SHARED_INFO_EVTCHN_PENDING = 2048;
/** shared_info.evtchn_mask[]. */
export const SHARED_INFO_EVTCHN_MASK = 2560;

// Xen hypercalls the PV kernel makes at boot and per interrupt (xen/include/public/).
const HYPERCALL_VCPU_OP = 24;
const HYPERCALL_CALLBACK_OP = 30;
const HYPERCALL_EVENT_CHANNEL_OP = 32;
const HYPERCALL_PHYSDEV_OP = 33;
const VCPUOP_REGISTER_VCPU_INFO = 10;
const CALLBACKOP_REGISTER = 0;
const CALLBACKTYPE_EVENT = 0;
const EVTCHNOP_BIND_VIRQ = 1;
const EVTCHNOP_BIND_PIRQ = 2;
const VIRQ_TIMER = 0;
const PHYSDEVOP_EOI = 12;
const PHYSDEVOP_SET_IOPL = 6;
/** The keyboard's legacy IRQ, bound as a PIRQ by a PV kernel with the device. */
const KEYBOARD_IRQ = 1;

/** A thread's state. */
export type ThreadState = "ready" | "blocked" | "exited";

/** One schedulable thread: a user program (pid > 0) or the idle thread (pid 0). */
export interface GuestThread {
  /** The process, or 0 for idle. */
  readonly pid: number;
  /** Top of its kernel stack (linear). */
  readonly kernelTop: number;
  /** Its kernel RSP while switched out (pointing at its return address into commonTail). */
  savedRsp: number;
  /** Ready, blocked in read(), or exited. */
  state: ThreadState;
  /** The user buffer of a read() it is blocked in, or -1. */
  readBuffer: number;
}

/** How a program ended. */
export interface ProgramExit {
  /** The process. */
  pid: number;
  /** exit()'s code (0 when killed). */
  exitCode: number;
  /** The signal that killed it (SIGSEGV ...), or 0. */
  signal: number;
  /** Why it was killed, or "". */
  reason: string;
}

/** What {@link GuestOs.run} ended with. */
export interface GuestRunResult {
  /** "done" (every program exited), "limit", "idle" or "crashed". */
  outcome: "done" | "limit" | "idle" | "crashed";
  /** The platform's stop or crash reason ("" when done). */
  reason: string;
}

/** Options of {@link GuestOs}. */
export interface GuestOsOptions {
  /**
   * PV only: the guest's phys-to-machine list (gfn -> mfn), which Xen gives a PV guest,
   * to name frames in hypercalls. Required for a "pv" kernel text.
   */
  gfnToMfn?: (gfn: number) => number;
}

/**
 * The guest's system side.
 *
 * @example Run a program that makes a system call and exits
 * ```ts
 * import { createLab } from "../lab/lab.ts";
 * import { GuestOs } from "./guest_os.ts";
 * import assert from "node:assert/strict";
 * const lab = createLab({ platform: "native", memoryMiB: 8 });
 * const os = GuestOs.forLab(lab);
 * // mov eax, 39 (getpid); int 0x80; mov edi, eax; mov eax, 60 (exit); int 0x80
 * const pid = os.spawnProgram([0xb8, 39, 0, 0, 0, 0xcd, 0x80, 0x89, 0xc7, 0xb8, 60, 0, 0, 0, 0xcd, 0x80]);
 * assert.equal(os.run(100_000).outcome, "done");
 * assert.deepEqual(os.exits, [{ pid, exitCode: pid, signal: 0, reason: "" }]);
 * ```
 */
export class GuestOs {
  /** The memory side of the kernel. */
  readonly kernel: GuestKernel;
  /** The platform it runs on. */
  readonly platform: Platform;
  /** Threads by pid (0: idle). */
  readonly threads: Map<number, GuestThread> = new Map();
  /** How programs ended, in order. */
  readonly exits: ProgramExit[] = [];
  /** Exceptions and interrupts the kernel's trap service saw, by vector (0x100: upcall). */
  readonly vectorCounts: Float64Array = new Float64Array(VECTOR_UPCALL + 1);
  /** Bytes typed and not yet read by a program. */
  readonly input: number[] = [];
  /** Timer interrupts handled. */
  ticks = 0;
  /** Whether the interrupt flag save/restore in write() saw interrupts enabled each time. */
  irqSaveSawEnabled = 0;
  /** Times write()'s irqSave ran. */
  irqSaves = 0;

  readonly #pv: boolean;
  readonly #counts: Float64Array;
  readonly #gfnToMfn: ((gfn: number) => number) | null;
  readonly #context: InterpreterContext;
  #current: GuestThread | null = null;
  #idle: GuestThread | null = null;
  #booted = false;
  #started = false;
  #stop = false;
  #idtBase = 0;
  #scratch = 0; // a kernel page for descriptors and hypercall arguments
  #sharedInfo = 0; // PV: the shared_info page (linear, in the direct map)
  #timerPort = -1;
  #keyboardPort = -1;

  /** The system side of `kernel` (booted), not yet booted itself. */
  constructor(kernel: GuestKernel, options: GuestOsOptions = {}) {
    this.kernel = kernel;
    this.platform = kernel.platform;
    this.#pv = kernel.code.text.flavour === "pv";
    this.#counts = kernel.platform.stats.counts;
    this.#gfnToMfn = options.gfnToMfn ?? null;
    if (this.#pv && this.#gfnToMfn === null) {
      throw new RangeError("Cannot build a PV guest OS without its gfn-to-mfn list");
    }
    this.#context = new InterpreterContext();
  }

  /**
   * The system side of a lab's guest, booted: its kernel, and for PV the
   * phys-to-machine list of the lab's platform.
   */
  static forLab(
    lab: { kernel: GuestKernel; platform: Platform },
  ): GuestOs {
    const p2m = (lab.platform as { p2mList?: Int32Array }).p2mList;
    const os = new GuestOs(
      lab.kernel,
      p2m === undefined ? {} : { gfnToMfn: (gfn: number) => p2m[gfn]! },
    );
    os.boot();
    return os;
  }

  /** The serial console's output so far. */
  get console(): string {
    return this.platform.board.serialOutput;
  }

  /** The exception table the kernel loaded: its IDT (native) or trap table (PV). */
  get idtBase(): number {
    return this.#idtBase;
  }

  /**
   * store_idt: what the kernel reads back as its IDT base. Natively `sidt` (which does
   * not trap at CPL > 0 without CR4.UMIP, so a deprivileged kernel sees the monitor's
   * table); a PV kernel returns its own copy (Linux's xen_store_idt). Equals
   * {@link idtBase} wherever the processor does not lie to the kernel.
   */
  storeIdt(): number {
    if (this.#pv) return this.#idtBase;
    const at = this.#scratch + 3072;
    this.#call("storeIdt", at);
    // Limit in bytes 0..1, base in bytes 2..9 (canonical; bits 63..48 dropped).
    return (this.#read32(at + 6) & 0xffff) * 2 ** 32 + this.#read32(at + 2);
  }

  /** The running thread's pid (0: idle), or -1 before the first run. */
  get currentPid(): number {
    return this.#current?.pid ?? -1;
  }

  /**
   * Installs the exception table, the service range and the idle thread (and for PV
   * the vcpu_info, the event callback and the event channels). Throws a RangeError if
   * called twice or if the kernel's memory runs out.
   */
  boot(): void {
    if (this.#booted) throw new RangeError("Cannot boot the guest OS twice");
    this.#booted = true;
    // The kernel now uses the processor's system side (LIDT, IRETQ, port I/O ...).
    this.platform.interpreter.systemInstructions = true;
    const text = this.kernel.code.text;
    const range = text.serviceRange;
    this.platform.setServices(range.base, range.length, this.#service);
    this.#scratch = this.#kernelPage();
    const idleStack = this.#kernelPage();
    if (this.#pv) {
      // The hypercall page pushes RCX and R11: boot on the idle thread's stack, below the
      // frame forged for it (Xen's domain builder starts a PV kernel on a bootstrap stack).
      const sp = idleStack + PAGE_SIZE - FRAME_QWORDS * 8 - 8;
      this.platform.interpreter.setReg(4, sp >>> 0, linearHigh32(sp));
      this.#bootPv();
    } else this.#bootNative();
    // The idle thread: a kernel thread entering `idle` with interrupts off.
    const idle: GuestThread = {
      pid: 0,
      kernelTop: idleStack + PAGE_SIZE,
      savedRsp: 0,
      state: "ready",
      readBuffer: -1,
    };
    idle.savedRsp = this.#forgeFrame(
      idle.kernelTop,
      text.entry("idle"),
      KERNEL_CS,
      idle.kernelTop,
      KERNEL_SS,
      0x2,
    );
    this.#idle = idle;
    this.threads.set(0, idle);
  }

  /**
   * Creates a process running `code` (x86-64 bytes, at most 16 pages) from
   * {@link PROGRAM_TEXT}, with its data area at {@link PROGRAM_DATA} and the stack below
   * STACK_TOP, ready to run. Returns its pid; throws a RangeError when memory runs out.
   */
  spawnProgram(code: Uint8Array | readonly number[]): number {
    if (!this.#booted) throw new RangeError("Cannot spawn a program before boot()");
    const bytes = code instanceof Uint8Array ? code : Uint8Array.from(code);
    if (bytes.length === 0 || bytes.length > 16 * PAGE_SIZE) {
      throw new RangeError(`Cannot load a program of ${bytes.length} bytes: 1..65536`);
    }
    const kernel = this.kernel;
    const pid = kernel.spawn();
    if (pid < 0) throw new RangeError(`Cannot spawn a program: error ${pid}`);
    for (let offset = 0; offset < bytes.length; offset += PAGE_SIZE) {
      const rc = kernel.loadPage(
        pid,
        PROGRAM_TEXT + offset,
        bytes.subarray(offset, offset + PAGE_SIZE),
      );
      if (rc !== 0) throw new RangeError(`Cannot load program page ${offset}: error ${rc}`);
    }
    const process = kernel.process(pid)!;
    const kernelTop = DIRECT_MAP_BASE + (process.taskGfn + 1) * PAGE_SIZE;
    const thread: GuestThread = { pid, kernelTop, savedRsp: 0, state: "ready", readBuffer: -1 };
    thread.savedRsp = this.#forgeFrame(
      kernelTop,
      PROGRAM_TEXT,
      USER_CS,
      STACK_TOP,
      USER_SS,
      0x2 | RFLAGS_IF,
    );
    this.threads.set(pid, thread);
    return pid;
  }

  /**
   * Runs the guest for at most `maxInstructions` instruction times (see
   * {@link Platform.runGuest}); can be called again to go on. "done" once every program
   * has exited.
   */
  run(maxInstructions: number): GuestRunResult {
    if (!this.#booted) throw new RangeError("Cannot run the guest OS before boot()");
    const platform = this.platform;
    const it = platform.interpreter;
    if (platform.crashReason !== "") return { outcome: "crashed", reason: platform.crashReason };
    if (!this.#anyProgramLeft()) return { outcome: "done", reason: "" };
    this.#stop = false;
    if (!this.#started) {
      this.#started = true;
      const first = this.#pickNext(null);
      this.#enter(first);
      it.rip = this.kernel.code.text.entry("commonTail");
      it.setReg(4, (first.savedRsp + 8) >>> 0, linearHigh32(first.savedRsp + 8));
      it.rflags = 0x2;
      platform.cpu.ctl.cpl = platform.guestKernelCpl;
      it.saveContext(this.#context);
    }
    it.restoreContext(this.#context);
    const outcome = platform.runGuest(maxInstructions);
    it.saveContext(this.#context);
    switch (outcome) {
      case RUN_DONE:
        return { outcome: "done", reason: "" };
      case RUN_LIMIT:
        return { outcome: "limit", reason: platform.stopReason };
      case RUN_IDLE:
        return { outcome: "idle", reason: platform.stopReason };
      case RUN_CRASHED:
      default:
        return { outcome: "crashed", reason: platform.crashReason };
    }
  }

  // --- Boot ------------------------------------------------------------------------------

  // A zeroed kernel frame; returns its linear address in the direct map.
  #kernelPage(): number {
    const gfn = this.kernel.frames.allocate(FRAME_USE_KERNEL);
    if (gfn < 0) throw new RangeError("Cannot boot the guest OS: out of memory");
    this.platform.dmaWrite(gfn, new Uint32Array(PAGE_SIZE / 4));
    return DIRECT_MAP_BASE + gfn * PAGE_SIZE;
  }

  // The IDT: 64-bit interrupt gates (type 0xE) for each stub, DPL 3 for INT3 and 0x80
  // (as Linux's idt.c), loaded with LIDT from a pseudo-descriptor.
  #bootNative(): void {
    const text = this.kernel.code.text;
    const idt = this.#kernelPage();
    this.#idtBase = idt;
    for (const vector of STUB_VECTORS) {
      const offset = text.stub(vector);
      const dpl = vector === 3 || vector === 0x80 ? 3 : 0;
      const gate = idt + 16 * vector;
      this.#write32(gate, ((KERNEL_CS << 16) | (offset & 0xffff)) >>> 0);
      this.#write32(gate + 4, ((offset & 0xffff0000) | 0x8e00 | (dpl << 13)) >>> 0);
      this.#write32(gate + 8, linearHigh32(offset));
      this.#write32(gate + 12, 0);
    }
    // lidt [rdi]: limit (2 bytes) then base (8 bytes).
    const descriptor = this.#scratch;
    this.#write32(descriptor, 256 * 16 - 1 + ((idt & 0xffff) << 16));
    this.#write32(descriptor + 4, Math.floor(idt / 0x10000) >>> 0);
    this.#write32(descriptor + 8, linearHigh32(idt) >>> 16);
    this.#call("loadIdt", descriptor);
  }

  // PV: vcpu_info registration, the event callback, the trap table, event channels.
  #bootPv(): void {
    const text = this.kernel.code.text;
    const shared = this.#kernelPage();
    this.#sharedInfo = shared;
    const scratch = this.#scratch;
    const gfn = (shared - DIRECT_MAP_BASE) / PAGE_SIZE;
    // VCPUOP_register_vcpu_info(vcpu 0, {mfn, offset 0}).
    this.#write64(scratch, this.#gfnToMfn!(gfn));
    this.#write64(scratch + 8, 0);
    this.#hypercall(HYPERCALL_VCPU_OP, VCPUOP_REGISTER_VCPU_INFO, 0, scratch);
    // CALLBACKOP_register {type event, flags 0, address}.
    this.#write32(scratch, CALLBACKTYPE_EVENT);
    this.#write32(scratch + 4, 0);
    this.#write64(scratch + 8, text.entry("eventCallback"));
    this.#hypercall(HYPERCALL_CALLBACK_OP, CALLBACKOP_REGISTER, scratch, 0);
    // set_trap_table: {vector, flags (DPL | 4: mask events on entry), cs, address}, then 0.
    let entry = scratch;
    for (const vector of STUB_VECTORS) {
      if (vector === VECTOR_TIMER || vector === VECTOR_KEYBOARD) continue; // event channels
      const dpl = vector === 3 || vector === 0x80 ? 3 : 0;
      this.#write32(entry, vector | ((dpl | 4) << 8) | (KERNEL_CS << 16));
      this.#write32(entry + 4, 0);
      this.#write64(entry + 8, text.stub(vector));
      entry += 16;
    }
    this.#write64(entry, 0);
    this.#write64(entry + 8, 0);
    this.#idtBase = scratch;
    this.#call("loadIdt", scratch);
    // EVTCHNOP_bind_virq {virq, vcpu, port OUT}; EVTCHNOP_bind_pirq {pirq, flags, port OUT}.
    this.#write32(scratch + 1024, VIRQ_TIMER);
    this.#write32(scratch + 1028, 0);
    this.#hypercall(HYPERCALL_EVENT_CHANNEL_OP, EVTCHNOP_BIND_VIRQ, scratch + 1024, 0);
    this.#timerPort = this.#read32(scratch + 1032);
    this.#write32(scratch + 1040, KEYBOARD_IRQ);
    this.#write32(scratch + 1044, 0);
    this.#hypercall(HYPERCALL_EVENT_CHANNEL_OP, EVTCHNOP_BIND_PIRQ, scratch + 1040, 0);
    this.#keyboardPort = this.#read32(scratch + 1048);
    // PHYSDEVOP_set_iopl {iopl 1}: Xen emulates the drivers' IN/OUT (Linux's xen_start_kernel).
    this.#write32(scratch + 1056, 1);
    this.#hypercall(HYPERCALL_PHYSDEV_OP, PHYSDEVOP_SET_IOPL, scratch + 1056, 0);
  }

  // Writes a thread's first frame below `top` as if it had trapped and been switched out
  // in the trap service: the return address into commonTail, 15 zero registers, a zero
  // vector and error code, and the IRETQ frame. Returns the saved RSP.
  #forgeFrame(top: number, rip: number, cs: number, rsp: number, ss: number, rflags: number) {
    const frame = top - FRAME_QWORDS * 8;
    for (let k = 0; k < FRAME_SLOT.rip; k++) this.#write64(frame + 8 * k, 0);
    this.#write64(frame + 8 * FRAME_SLOT.rip, rip);
    this.#write64(frame + 8 * FRAME_SLOT.cs, cs);
    this.#write64(frame + 8 * FRAME_SLOT.rflags, rflags);
    this.#write64(frame + 8 * FRAME_SLOT.rsp, rsp);
    this.#write64(frame + 8 * FRAME_SLOT.ss, ss);
    this.#write64(frame - 8, this.kernel.code.text.entry("commonTail"));
    return frame - 8;
  }

  // --- The trap service (the kernel's C entry) ------------------------------------------

  readonly #service: GuestService = (_service, context) => {
    const frame = linearRsp(context) + 8;
    const vector = this.#read32(frame + 8 * FRAME_SLOT.vector);
    const errorCode = this.#read32(frame + 8 * FRAME_SLOT.errorCode);
    const fromUser = (this.#read32(frame + 8 * FRAME_SLOT.cs) & 3) === 3;
    if (vector <= VECTOR_UPCALL) this.vectorCounts[vector]++;
    const current = this.#current;
    if (current === null) {
      this.platform.crash("guest OS: a trap with no current thread");
      return SERVICE_STOP;
    }
    if (vector === VECTOR_TIMER) this.#timer(context);
    else if (vector === VECTOR_KEYBOARD) this.#keyboard(context);
    else if (vector === VECTOR_UPCALL) this.#upcall(context);
    else if (vector === 0x80) this.#syscall(context, frame, current);
    else if (!fromUser || current.pid === 0) {
      this.platform.crash(
        `guest kernel oops: vector ${vector} error code ${errorCode} in kernel mode`,
      );
      return SERVICE_STOP;
    } else {
      this.#counts[GUEST_USER_EXCEPTION]++;
      const cr2 = vector === VECTOR_PF ? this.platform.guestCr2 : 0;
      if (this.kernel.handleTrap(vector, errorCode, cr2, true) !== TRAP_RETRY) {
        this.#exited(current);
        this.#switchTo(context, this.#pickNext(null));
      }
    }
    if (this.platform.crashReason !== "") return SERVICE_STOP;
    return this.#stop ? SERVICE_STOP : SERVICE_CONTINUE;
  };

  #timer(context: InterpreterContext): void {
    this.#counts[GUEST_TIMER_IRQ]++;
    this.ticks++;
    if (!this.#pv) this.#call("picEoi", 0);
    this.#preempt(context);
  }

  #keyboard(context: InterpreterContext): void {
    this.#counts[GUEST_KEYBOARD_IRQ]++;
    const byte = this.#call("keyboardRead", 0) & 0xff;
    if (this.#pv) {
      // PHYSDEVOP_eoi {irq}.
      this.#write32(this.#scratch + 2048, KEYBOARD_IRQ);
      this.#hypercall(HYPERCALL_PHYSDEV_OP, PHYSDEVOP_EOI, this.#scratch + 2048, 0);
    } else {
      this.#call("picEoi", 0);
    }
    this.input.push(byte);
    if (this.#current === this.#idle) this.#switchTo(context, this.#pickNext(this.#idle));
  }

  // The event-channel upcall (Linux's xen_evtchn_do_upcall, 2-level ABI).
  #upcall(context: InterpreterContext): void {
    const shared = this.#sharedInfo;
    let timer = false;
    let keyboard = false;
    for (let round = 0; round < 4; round++) {
      this.#write8(shared + VCPU_INFO_UPCALL_PENDING, 0);
      const selector = this.#read32(shared + VCPU_INFO_PENDING_SEL);
      if (selector === 0) break;
      this.#write32(shared + VCPU_INFO_PENDING_SEL, 0);
      // Ports 0..31 are all this kernel binds: word 0 of the bitmaps.
      const pending = this.#read32(shared + SHARED_INFO_EVTCHN_PENDING) &
        ~this.#read32(shared + SHARED_INFO_EVTCHN_MASK);
      this.#write32(
        shared + SHARED_INFO_EVTCHN_PENDING,
        (this.#read32(shared + SHARED_INFO_EVTCHN_PENDING) & ~pending) >>> 0,
      );
      if ((pending & (1 << this.#timerPort)) !== 0) timer = true;
      if ((pending & (1 << this.#keyboardPort)) !== 0) keyboard = true;
    }
    if (keyboard) this.#keyboard(context);
    if (timer) this.#timer(context);
  }

  #syscall(context: InterpreterContext, frame: number, current: GuestThread): void {
    this.#counts[GUEST_SYSCALL]++;
    const number = this.#read32(frame + 8 * FRAME_SLOT.rax);
    const arg0 = this.#read64(frame + 8 * FRAME_SLOT.rdi);
    const arg1 = this.#read64(frame + 8 * FRAME_SLOT.rsi);
    const arg2 = this.#read64(frame + 8 * FRAME_SLOT.rdx);
    const result = (value: number) => this.#write64(frame + 8 * FRAME_SLOT.rax, value);
    switch (number) {
      case SYS_GETPID:
        result(current.pid);
        return;
      case SYS_SCHED_YIELD:
        result(0);
        this.#preempt(context);
        return;
      case SYS_WRITE: {
        if (arg0 !== 1) return result(-EBADF);
        const count = Math.min(arg2, 4096);
        // The console lock: spin_lock_irqsave / spin_unlock_irqrestore.
        const flags = this.#call("irqSave", this.#pv ? this.#sharedInfo : 0);
        this.irqSaves++;
        if (this.#pv ? (flags & 0xff) === 0 : (flags & RFLAGS_IF) !== 0) {
          this.irqSaveSawEnabled++;
          this.#counts[DIVERGENCE_IRQ_SAVE_SAW_IF]++;
        }
        let written = 0;
        for (; written < count; written++) {
          if (!this.#userRead8(arg1 + written)) break;
          this.#call("serialPut", this.platform.cpu.data & 0xff);
        }
        this.#call("irqRestore", this.#pv ? this.#sharedInfo : 0, 0, flags);
        if (this.#killed(context, current)) return; // a fault on its buffer killed it
        result(written === 0 && count > 0 ? -EFAULT : written);
        return;
      }
      case SYS_READ: {
        if (arg0 !== 0) return result(-EBADF);
        if (arg2 === 0) return result(0);
        if (this.input.length > 0) {
          const ok = this.#userWrite8(arg1, this.input.shift()!);
          if (!this.#killed(context, current)) result(ok ? 1 : -EFAULT);
          return;
        }
        // Fault the buffer in now (a bad one kills the reader here, not at wake-up).
        const ok = this.#userWrite8(arg1, 0);
        if (this.#killed(context, current)) return;
        if (!ok) return result(-EFAULT);
        current.state = "blocked";
        current.readBuffer = arg1;
        this.#switchTo(context, this.#pickNext(current));
        return;
      }
      case SYS_EXIT:
        this.kernel.exit(current.pid, arg0 | 0);
        this.#exited(current);
        this.#switchTo(context, this.#pickNext(null));
        return;
      default:
        result(-ENOSYS);
    }
  }

  // --- Scheduling -------------------------------------------------------------------------

  // The timer's (or sched_yield's) round robin: the next ready program after the current.
  #preempt(context: InterpreterContext): void {
    const next = this.#pickNext(this.#current);
    if (next !== this.#current) this.#switchTo(context, next);
  }

  // The next runnable program after `after` in pid order (wrapping), else `after` itself
  // if it is runnable, else idle. A reader blocked in read() is runnable while input waits
  // (the first one picked takes the byte; the others stay blocked if it was the last).
  #pickNext(after: GuestThread | null): GuestThread {
    const input = this.input.length > 0;
    const ready = [...this.threads.values()].filter((t) =>
      t.pid !== 0 && (t.state === "ready" || (t.state === "blocked" && input))
    );
    if (ready.length === 0) return this.#idle!;
    const from = after?.pid ?? 0;
    return ready.find((t) => t.pid > from) ?? ready[0]!;
  }

  // Switches kernel stacks: the service returns on `next`'s stack.
  #switchTo(context: InterpreterContext, next: GuestThread): void {
    const prev = this.#current;
    if (prev !== null && prev.state !== "exited") {
      prev.savedRsp = linearRsp(context);
    }
    this.#enter(next);
    context.regs[8] = next.savedRsp >>> 0;
    context.regs[9] = linearHigh32(next.savedRsp);
    if (!this.#anyProgramLeft()) this.#stop = true;
  }

  // Makes `next` current: its address space and kernel stack (for an entry from user).
  #enter(next: GuestThread): void {
    if (next !== this.#current) this.#counts[GUEST_THREAD_SWITCH]++;
    this.#current = next;
    if (next.pid === 0) return; // idle borrows the loaded address space (lazy TLB)
    this.kernel.switchTo(next.pid);
    if (this.#pv) {
      this.#call("setKernelStack", KERNEL_SS, next.kernelTop);
    } else {
      this.platform.setTssRsp0(next.kernelTop);
    }
    if (next.state === "blocked") {
      // Finish the read() it blocked in (#pickNext saw input): one byte, result 1 in its
      // saved RAX. Its buffer was faulted in when it blocked.
      const ok = this.#userWrite8(next.readBuffer, this.input.shift()!);
      const frame = next.savedRsp + 8;
      this.#write64(frame + 8 * FRAME_SLOT.rax, ok ? 1 : -EFAULT);
      next.readBuffer = -1;
      next.state = "ready";
    }
  }

  // Whether the kernel killed `current` (a fault in copy_to/from_user); if so it is
  // reaped and the next thread runs.
  #killed(context: InterpreterContext, current: GuestThread): boolean {
    if (this.kernel.process(current.pid)?.state === "running") return false;
    this.#exited(current);
    this.#switchTo(context, this.#pickNext(null));
    return true;
  }

  #exited(thread: GuestThread): void {
    thread.state = "exited";
    const process = this.kernel.process(thread.pid);
    const reaped = this.kernel.wait(0, thread.pid);
    this.exits.push({
      pid: thread.pid,
      exitCode: typeof reaped === "object" && reaped !== null ? reaped.exitCode : 0,
      signal: process?.signal ?? 0,
      reason: process?.killReason ?? "",
    });
    this.threads.delete(thread.pid);
  }

  #anyProgramLeft(): boolean {
    for (const t of this.threads.values()) if (t.pid !== 0 && t.state !== "exited") return true;
    return false;
  }

  // --- Kernel text and memory -------------------------------------------------------------

  // Runs system-text routine `name` with RDI, RSI and RAX loaded; returns RAX's low half.
  #call(name: SystemLabel, rdi: number, rsi = 0, rax = 0): number {
    return this.#run(this.kernel.code.text.entry(name), rdi, rsi, 0, rax);
  }

  // A PV hypercall through the hypercall page, arguments in RDI, RSI, RDX; the result.
  #hypercall(number: number, arg0: number, arg1: number, arg2 = 0): number {
    const page = this.kernel.code.text.base + HYPERCALL_PAGE_OFFSET;
    return this.#run(page + 32 * number, arg0, arg1, arg2, 0) | 0;
  }

  // Runs kernel text at `rip` to its RET with the argument registers loaded.
  #run(rip: number, rdi: number, rsi: number, rdx: number, rax: number): number {
    const it = this.platform.interpreter;
    it.setReg(7, rdi >>> 0, linearHigh32(rdi));
    it.setReg(6, rsi >>> 0, linearHigh32(rsi));
    it.setReg(2, rdx >>> 0, linearHigh32(rdx));
    it.setReg(0, rax >>> 0, 0);
    this.platform.execute(rip);
    return it.regLo(0);
  }

  #read32(va: number): number {
    this.platform.access(va, 4, ACCESS_READ, 0, 0, false);
    return this.platform.cpu.data;
  }

  #read64(va: number): number {
    this.platform.access(va, 8, ACCESS_READ, 0, 0, false);
    const cpu = this.platform.cpu;
    return cpu.dataHi >= 0x8000_0000
      ? (cpu.dataHi | 0) * 2 ** 32 + cpu.data
      : cpu.dataHi * 2 ** 32 + cpu.data;
  }

  #write8(va: number, value: number): void {
    this.platform.access(va, 1, ACCESS_WRITE, value & 0xff, 0, false);
  }

  #write32(va: number, value: number): void {
    this.platform.access(va, 4, ACCESS_WRITE, value >>> 0, 0, false);
  }

  // Stores a signed or linear value as a qword (negative numbers in two's complement).
  #write64(va: number, value: number): void {
    const lo = value >>> 0;
    const hi = value < 0 ? Math.floor(value / 2 ** 32) >>> 0 : linearHigh32(value);
    this.platform.access(va, 8, ACCESS_WRITE, lo, hi, false);
  }

  // copy_from_user / copy_to_user of one byte: a user access, so a fault on it is
  // handled as the user's own (demand paging, or SIGSEGV).
  #userRead8(va: number): boolean {
    return this.platform.access(va, 1, ACCESS_READ, 0, 0, true) === RUN_DONE;
  }

  #userWrite8(va: number, value: number): boolean {
    return this.platform.access(va, 1, ACCESS_WRITE, value & 0xff, 0, true) === RUN_DONE;
  }
}
