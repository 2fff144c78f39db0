/**
 * The `classic` platform: trap-and-emulate as it was done on x86 before VT-x (the seeds'
 * lecture model; VMware's and 32-bit Xen's ring compression). The guest is the
 * unmodified native kernel text; a monitor (this TypeScript class) runs it deprivileged:
 *
 * - Ring compression: the guest kernel's code runs at CPL 1 (still supervisor for
 *   paging, so its pages work), with IOPL 0 < CPL, so CLI, STI, HLT, LIDT, IN/OUT, MOV
 *   CRn and INVLPG raise #GP. The monitor decodes the bytes at RIP (the slides'
 *   get_instr_length / get_instr_dest) and does what the processor would have done on
 *   the guest's virtual CPU state, then advances RIP.
 * - The guest's virtual CPU state is the "process control block for the guest OS"
 *   ({@link ClassicPcb}): virtual kernel mode, virtual IF, virtual IDTR, the guest's
 *   TSS.RSP0, pending virtual interrupts (the CR3 is the shadow's guest CR3).
 * - The real IDT is the monitor's ({@link MONITOR_IDT_BASE}, in the hypervisor's reserved
 *   L4 slots), so every exception and interrupt enters the monitor first; it reflects
 *   them into the guest by doing what the processor would do (SDM Vol. 3A 6.12, 6.14):
 *   read the guest's gate, check it, switch to the guest's RSP0 from user mode, push the
 *   frame the guest would see natively, enter the handler at CPL 1.
 * - Memory: shadow page tables, as pre-VT-x monitors used (this class extends
 *   {@link HvmShadowPlatform}); every #PF, CR3 write and INVLPG is a trap.
 * - IRETQ to the guest's user mode (RPL 3) does not trap at CPL 1: the monitor only learns
 *   that the guest went to user mode at its next trap from CPL 3, when it sets virtual
 *   user mode and virtual IF = 1 ("user code runs with interrupts on") and delivers any
 *   interrupt held pending meanwhile. IRETQ to RPL 0 #GPs (RPL < CPL) and is emulated.
 *   A device interrupt that arrives while the virtual IF is 0 is held in the PCB; it is
 *   delivered at STI, at an IRETQ that sets IF, at HLT, or at the next trap from user
 *   mode (`classic.held`, `classic.deferred`). SYSCALL from user mode reaches the real
 *   LSTAR (the monitor), which enters the guest's; SYSRETQ #GPs at CPL 1 and is emulated.
 *
 * Why that was not enough (Popek & Goldberg 1974; Robin & Irvine 2000): PUSHF, POPF, SIDT
 * and SGDT are sensitive but do not trap at CPL 1. POPF silently keeps IF (the guest's
 * irqrestore is lost), PUSHF shows the real IF (1) instead of the virtual one, SIDT and
 * SGDT show the monitor's tables. The lab watches these instructions without changing
 * what they do and counts the divergences (`classic.untrapped.*`, `classic.popfIfLost`,
 * `classic.pushfIfWrong`, `classic.sidtLeak`). Those counters are the lab's omniscient
 * view: a real monitor sees nothing, which is the point. VMware answered with binary
 * translation, Xen with paravirtualization (the `pv` platform), Intel with VT-x
 * (`hvm-shadow`, `hvm-hap`).
 *
 * Counting: every real trap into the monitor (a fault, an intercepted INT n or SYSCALL, a
 * device interrupt) is `classic.trap` and `exit.total` (the cost model prices each as a
 * ring transition plus the monitor's work, instead of a VMX round trip); a #PF also counts `exit.pf`, a CR3 write `exit.cr3` and so on, as on
 * hvm-shadow; each emulated instruction `classic.emulate.<name>`, each event delivered
 * through the guest's IDT `classic.reflect` and `interpreter.deliveries[vector]`.
 * `classic.trap` = `exit.total` always. The monitor reads and writes guest memory (gates,
 * frames, LIDT's operand) through the guest's own tables, as Xen's hvm_copy_*_guest_virt
 * does: those accesses are the monitor's, not the processor's, and count no `cpu.*`.
 *
 * Not modelled: the monitor's own memory (its IDT at {@link MONITOR_IDT_BASE} is not
 * mapped: the monitor is TypeScript), segment descriptors (selectors are the lab's flat
 * ones; an IRETQ to a ring-1 or ring-2 CS runs in hardware, unnoticed), IST stacks, the
 * monitor hiding its reserved L4 slots from the guest, NMIs, LGDT/LLDT/LTR, WBINVD and
 * INVPCID (the guest kernel does not use them: the monitor crashes the domain if it
 * does), and binary translation.
 *
 * @module
 */

import {
  ACCESS_FETCH,
  ACCESS_IMPLICIT_READ,
  ACCESS_IMPLICIT_WRITE,
  ACCESS_READ,
  type AccessKind,
} from "../x86/access.ts";
import {
  canonicalToLinear,
  formatLinear,
  LINEAR_LIMIT,
  linearHigh32,
  PAGE_SIZE,
  UPPER_HALF_START,
} from "../x86/address.ts";
import {
  DecodedInstruction,
  decodeInstruction,
  FORM_IMM,
  formatInstruction,
  OP_CLI,
  OP_HLT,
  OP_IN,
  OP_INT,
  OP_INT3,
  OP_INVLPG,
  OP_INVPCID,
  OP_IRET,
  OP_LGDT,
  OP_LIDT,
  OP_MOV_FROM_CR,
  OP_MOV_TO_CR,
  OP_OUT,
  OP_POPF,
  OP_PUSHF,
  OP_SGDT,
  OP_SIDT,
  OP_STI,
  OP_SYSCALL,
  OP_SYSRET,
  OP_WBINVD,
} from "../x86/decode.ts";
import {
  CPU_INSTRUCTIONS,
  KERNEL_CS,
  KERNEL_SS,
  RFLAGS_IF,
  RFLAGS_IOPL,
  STEP_FAULT,
  STEP_INTERCEPT,
  STEP_OK,
  STEP_SERVICE,
  USER_CS,
  USER_SS,
  VECTOR_DF,
  VECTOR_NP,
  VECTOR_SS,
} from "../x86/interpreter.ts";
import { declareCounter } from "../x86/stats.ts";
import { TLB_HIT } from "../x86/tlb.ts";
import { CPU_FETCH, VECTOR_GP, VECTOR_PF } from "../x86/vcpu.ts";
import { emulateDataWrite } from "../shadow/emulate_pt_write.ts";
import { EXIT_TOTAL, HANDLED_COMPLETE, HANDLED_RETRY } from "./base_platform.ts";
import { type HvmShadowOptions, HvmShadowPlatform } from "./hvm_shadow.ts";
import { type GuestCpuState, type PlatformName, RUN_LIMIT } from "./platform.ts";

/**
 * The monitor's IDT: 0xffff_8000_0000_0000 (as a 48-bit linear value), the first of the
 * L4 slots Xen reserves for itself (256..271). SIDT at CPL 1 shows this, not the guest's.
 */
export const MONITOR_IDT_BASE = 0x8000_0000_0000;
/** The monitor's IDT limit: 256 gates of 16 bytes. */
export const MONITOR_IDT_LIMIT = 0xfff;
/** The monitor's GDT, a page above its IDT. SGDT at CPL 1 shows this. */
export const MONITOR_GDT_BASE: number = MONITOR_IDT_BASE + PAGE_SIZE;
/** The monitor's GDT limit. */
export const MONITOR_GDT_LIMIT = 0x7f;
/** The CPL the guest kernel runs at (ring compression). */
export const CLASSIC_GUEST_KERNEL_CPL = 1;

/** Real traps into the monitor (faults, intercepted INT n, device interrupts). */
export const CLASSIC_TRAP: number = declareCounter(
  "classic.trap",
  "traps into the classic monitor (privileged-instruction #GP, #PF, INT n, device interrupts)",
  "traps",
);
/** Exceptions, software interrupts and device interrupts reflected into the guest. */
export const CLASSIC_REFLECT: number = declareCounter(
  "classic.reflect",
  "events the classic monitor reflected through the guest's IDT (as the processor would)",
  "events",
);
/** Device interrupts that arrived while the guest's virtual IF was 0. */
export const CLASSIC_HELD: number = declareCounter(
  "classic.held",
  "device interrupts held pending by the classic monitor (the guest's virtual IF was 0)",
  "interrupts",
);

/** Traps from user mode at which the monitor first delivered a held interrupt. */
export const CLASSIC_DEFERRED: number = declareCounter(
  "classic.deferred",
  "traps from guest user mode that delivered a held interrupt first (the instruction reruns)",
  "traps",
);

/** The instructions the monitor emulates, by counter suffix. */
export const CLASSIC_EMULATED = [
  "cli",
  "sti",
  "hlt",
  "lidt",
  "in",
  "out",
  "iret",
  "movcr",
  "invlpg",
  "syscall",
  "sysret",
] as const;
const EMULATE_COUNTERS = CLASSIC_EMULATED.map((name) =>
  declareCounter(
    `classic.emulate.${name}`,
    name === "syscall"
      ? "SYSCALLs of guest user code taken by the monitor (its LSTAR) and emulated on the PCB"
      : `privileged ${name} instructions of the guest kernel trapped (#GP at CPL 1) and emulated`,
    "instructions",
  )
);
const [
  EMULATE_CLI,
  EMULATE_STI,
  EMULATE_HLT,
  EMULATE_LIDT,
  EMULATE_IN,
  EMULATE_OUT,
  EMULATE_IRET,
  EMULATE_MOVCR,
  EMULATE_INVLPG,
  EMULATE_SYSCALL,
  EMULATE_SYSRET,
] = EMULATE_COUNTERS as number[] as [
  number,
  number,
  number,
  number,
  number,
  number,
  number,
  number,
  number,
  number,
  number,
];

/** The sensitive instructions that do not trap, by counter suffix. */
export const CLASSIC_UNTRAPPED = ["popf", "pushf", "sidt", "sgdt"] as const;
const UNTRAPPED_COUNTERS = CLASSIC_UNTRAPPED.map((name) =>
  declareCounter(
    `classic.untrapped.${name}`,
    `sensitive ${name} instructions that ran without trapping (the lab's view; not a trap)`,
    "instructions",
  )
);
/** POPF by the guest kernel whose IF differed from the virtual IF: the change was lost. */
export const CLASSIC_POPF_IF_LOST: number = declareCounter(
  "classic.popfIfLost",
  "guest-kernel POPFs meant to change IF that the monitor never saw (the lab's view)",
  "instructions",
);
/** PUSHF by the guest kernel that pushed the real IF (1) where the virtual IF differs. */
export const CLASSIC_PUSHF_IF_WRONG: number = declareCounter(
  "classic.pushfIfWrong",
  "guest-kernel PUSHFs that showed the real IF instead of the virtual one (the lab's view)",
  "instructions",
);
/** SIDT/SGDT that showed the monitor's table instead of the guest's. */
export const CLASSIC_SIDT_LEAK: number = declareCounter(
  "classic.sidtLeak",
  "SIDT/SGDT that showed the monitor's tables to the guest (the lab's view)",
  "instructions",
);

const RFLAGS_TF = 0x100;
const RFLAGS_NT = 0x4000;
const RFLAGS_RF = 0x10000;
const RFLAGS_VM = 0x20000;
const RFLAGS_AC = 0x40000;
// What IRETQ loads at CPL 0 besides IF and IOPL (SDM Vol. 2 IRET): CF PF AF ZF SF TF DF OF
// NT RF AC ID; VM, VIF, VIP are not loaded in 64-bit mode by this lab.
const IRET_LOADED = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | RFLAGS_TF | 0x400 | 0x800 | RFLAGS_NT |
  RFLAGS_RF | RFLAGS_AC | 0x200000;

// How an event is delivered (SDM Vol. 3A 6.12): an exception, INT n / INT3, an interrupt.
const EVENT_EXCEPTION = 0;
const EVENT_SOFTWARE = 1;
const EVENT_EXTERNAL = 2;
// Fault classes for the double-fault rules (SDM Vol. 3A Table 6-5).
const CLASS_BENIGN = 0;
const CLASS_CONTRIBUTORY = 1;
const CLASS_PAGE_FAULT = 2;
const MAX_LENGTH = 15;
// Rounds of "a fault while delivering": benign -> contributory/#PF -> #DF -> shutdown.
const MAX_DELIVERY_ROUNDS = 5;

function faultClass(vector: number): number {
  if (vector === VECTOR_PF) return CLASS_PAGE_FAULT;
  return vector === 0 || (vector >= 10 && vector <= 13) ? CLASS_CONTRIBUTORY : CLASS_BENIGN;
}

// Exceptions that push an error code (SDM Vol. 3A Table 6-1): #DF, #TS, #NP, #SS, #GP,
// #PF, #AC, #CP.
function hasErrorCode(vector: number): boolean {
  return vector === 8 || (vector >= 10 && vector <= 14) || vector === 17 || vector === 21;
}

// 48-bit linear `va` + `delta` with 64-bit wraparound, or -1 across the non-canonical hole.
function linearAdd(va: number, delta: number): number {
  const sum = va + delta;
  if (sum < 0) return sum + LINEAR_LIMIT;
  if (sum >= LINEAR_LIMIT) return sum - LINEAR_LIMIT;
  return (va < UPPER_HALF_START) === (sum < UPPER_HALF_START) ? sum : -1;
}

/**
 * The seeds' "process control block for the guest OS": what the guest kernel believes
 * about its processor, kept by the monitor because the real processor state is the
 * monitor's (real IF is always 1, real IDTR is the monitor's, real CPL is 1 or 3).
 */
export class ClassicPcb {
  /** Whether the guest is in virtual kernel mode (stale while its user code runs). */
  kernelMode = true;
  /** The guest's virtual IF (reset: 0). */
  interruptsEnabled = false;
  /** The guest's IDTR base (48-bit linear), loaded by its trapped LIDT. */
  idtBase = 0;
  /** The guest's IDTR limit (reset: 0xffff). */
  idtLimit = 0xffff;
  /** The guest's TSS.RSP0 (48-bit linear): its kernel stack for entries from user mode. */
  kernelStack = 0;
  /** Pending virtual interrupts, one bit per vector (a virtual IRR). */
  readonly pending: Uint32Array = new Uint32Array(8);

  /** The highest pending vector, or -1. */
  get highestPending(): number {
    const irr = this.pending;
    for (let w = 7; w >= 0; w--) {
      const word = irr[w]!;
      if (word !== 0) return 32 * w + 31 - Math.clz32(word);
    }
    return -1;
  }
}

/**
 * The classic trap-and-emulate monitor: shadow paging for memory, ring compression for
 * the CPU (see the module doc).
 *
 * @example The guest kernel runs at ring 1; its LIDT trapped and went into the PCB
 * ```ts
 * import { ClassicPlatform, MONITOR_IDT_BASE } from "./classic.ts";
 * import { GuestKernel } from "../guest/kernel.ts";
 * import { GuestOs } from "../guest/guest_os.ts";
 * import assert from "node:assert/strict";
 * const platform = new ClassicPlatform({ frames: 2048 });
 * const kernel = new GuestKernel(platform);
 * kernel.boot();
 * const os = new GuestOs(kernel);
 * os.boot();
 * assert.equal(platform.guestKernelCpl, 1);
 * assert.equal(platform.guestCpuState().idtBase, os.idtBase);
 * assert.equal(platform.stats.get("classic.emulate.lidt"), 1);
 * assert.equal(os.storeIdt(), MONITOR_IDT_BASE); // SIDT does not trap: the monitor's table
 * ```
 */
export class ClassicPlatform extends HvmShadowPlatform {
  /** "classic". */
  override readonly name: PlatformName = "classic";
  /** The guest's virtual CPU state. */
  readonly pcb: ClassicPcb = new ClassicPcb();
  // The instruction at RIP as the monitor decodes it from guest memory.
  readonly #insn = new DecodedInstruction();
  readonly #bytes = new Uint8Array(MAX_LENGTH);
  readonly #views: Uint8Array[] = [];
  // The fault a monitor access (or a delivery check) raised: vector, error code, CR2.
  #faultVector = 0;
  #faultCode = 0;
  #faultCr2 = 0;
  #stopNote = "";
  // IRETQ's five popped values as u32 halves.
  readonly #popped = new Uint32Array(10);

  /** A monitor over a domain of `options.frames` guest frames (see HvmShadowOptions). */
  constructor(options: HvmShadowOptions) {
    super(options);
    this.guestKernelCpl = CLASSIC_GUEST_KERNEL_CPL;
    const it = this.interpreter;
    it.idtrBase = MONITOR_IDT_BASE;
    it.idtrLimit = MONITOR_IDT_LIMIT;
    it.gdtrBase = MONITOR_GDT_BASE;
    it.gdtrLimit = MONITOR_GDT_LIMIT;
    // INT n / INT3 go through the real IDT, SYSCALL to the real LSTAR: to the monitor. The
    // sensitive
    // unprivileged instructions are watched (the lab's view), not trapped.
    for (const op of [OP_INT, OP_INT3, OP_SYSCALL, OP_POPF, OP_PUSHF, OP_SIDT, OP_SGDT]) {
      it.intercepts[op] = 1;
    }
    for (let n = 0; n <= MAX_LENGTH; n++) this.#views.push(this.#bytes.subarray(0, n));
  }

  /** The guest's TSS.RSP0 is the monitor's copy: the real TSS is the monitor's. */
  override setTssRsp0(top: number): void {
    this.pcb.kernelStack = top;
  }

  /** The PCB: what the guest believes, kept by the monitor. */
  override guestCpuState(): GuestCpuState {
    const pcb = this.pcb;
    const pending: number[] = [];
    for (let v = 255; v >= 0; v--) {
      if ((pcb.pending[v >>> 5]! & (1 << (v & 31))) !== 0) pending.push(v);
    }
    return {
      kernelMode: pcb.kernelMode,
      interruptsEnabled: pcb.interruptsEnabled,
      idtBase: pcb.idtBase,
      kernelStack: pcb.kernelStack,
      cr3: this.mmu.guestCtl.cr3,
      cr2: this.guestCr2,
      pending,
      keptIn: "monitor",
    };
  }

  /**
   * Runs the guest (see BasePlatform.runGuest) with the real IF set and IOPL 0: the
   * monitor always runs guest code with interrupts on (it must see the devices), and IOPL
   * 0 < CPL 1 keeps CLI/STI/IN/OUT trapping.
   */
  override runGuest(maxInstructions: number): number {
    const it = this.interpreter;
    it.rflags = ((it.rflags | RFLAGS_IF) & ~RFLAGS_IOPL) >>> 0;
    this.#stopNote = "";
    const outcome = super.runGuest(maxInstructions);
    if (outcome === RUN_LIMIT && !this.pcb.interruptsEnabled && this.cpu.ctl.cpl !== 3) {
      this.#stopNote = "; the guest kernel's virtual IF is 0 (it ran cli), so the classic " +
        "monitor holds every device interrupt pending";
    }
    return outcome;
  }

  /** No VT-x, so no interrupt-window exits to count: the monitor delivers in software. */
  protected override afterGuestChunk(): void {}

  /** Why the last runGuest() stopped short, with the monitor's view of the virtual IF. */
  override get stopReason(): string {
    return super.stopReason + this.#stopNote;
  }

  // --- Traps ------------------------------------------------------------------------------

  /**
   * Every exception enters the monitor: a #PF goes through the shadow code (hidden,
   * genuine, emulated), a #GP from the guest kernel's privileged instruction is emulated,
   * anything else is reflected into the guest.
   */
  protected override onException(inInterpreter: boolean, fromUser: boolean): number {
    const counts = this.counts;
    counts[CLASSIC_TRAP]++;
    const e = this.cpu.exception;
    const cpl = this.cpu.ctl.cpl;
    if (this.isGuestLevel) {
      const outcome = this.#enteredFrom(cpl);
      if (outcome !== HANDLED_COMPLETE) {
        counts[EXIT_TOTAL]++;
        return outcome;
      }
    }
    if (e.vector === VECTOR_PF) return super.onException(inInterpreter, fromUser); // exit.pf
    if (
      inInterpreter && e.vector === VECTOR_GP && cpl === CLASSIC_GUEST_KERNEL_CPL &&
      this.#decodeAtRip()
    ) {
      const op = this.#insn.op;
      if (op === OP_MOV_TO_CR || op === OP_MOV_FROM_CR || op === OP_INVLPG) {
        return this.#emulateControl(); // exit.total counted by hvm-shadow's handler
      }
      counts[EXIT_TOTAL]++;
      const outcome = this.#emulatePrivileged(e.errorCode);
      if (outcome >= 0) return outcome;
    } else {
      counts[EXIT_TOTAL]++;
    }
    return this.deliverToGuest(fromUser, e.vector, e.errorCode, e.cr2);
  }

  /**
   * INT n / INT3 (through the real IDT to the monitor: reflected), and the lab's watch on
   * POPF, PUSHF, SIDT, SGDT (not a trap: the instruction runs as hardware runs it).
   */
  protected override onIntercept(): number {
    const it = this.interpreter;
    const d = it.decoded;
    const op = d.op;
    if (op === OP_POPF || op === OP_PUSHF || op === OP_SIDT || op === OP_SGDT) {
      return this.#watchSensitive(op);
    }
    if (op !== OP_INT && op !== OP_INT3 && op !== OP_SYSCALL) return super.onIntercept();
    const counts = this.counts;
    counts[CLASSIC_TRAP]++;
    counts[EXIT_TOTAL]++;
    if (this.isGuestLevel) {
      const outcome = this.#enteredFrom(this.cpu.ctl.cpl);
      if (outcome !== HANDLED_COMPLETE) return outcome;
    }
    if (op === OP_SYSCALL) return this.#emulateSyscall();
    const vector = op === OP_INT3 ? 3 : d.imm & 0xff;
    const next = linearAdd(it.rip, d.length);
    if (next < 0) return this.deliverToGuest(this.cpu.ctl.cpl === 3, VECTOR_GP, 0, 0);
    return this.#reflect(vector, -1, EVENT_SOFTWARE, next);
  }

  /**
   * A device interrupt: the real one enters the monitor (real IF is always 1). With the
   * guest's virtual IF = 1 it is reflected at once; else it waits in the PCB.
   */
  protected override raiseGuestInterrupt(vector: number): void {
    const counts = this.counts;
    counts[CLASSIC_TRAP]++;
    counts[EXIT_TOTAL]++;
    const pcb = this.pcb;
    const bit = 1 << (vector & 31);
    pcb.pending[vector >>> 5] = (pcb.pending[vector >>> 5]! | bit) >>> 0;
    if (this.cpu.ctl.cpl === 3) {
      pcb.kernelMode = false;
      pcb.interruptsEnabled = true;
    } else {
      pcb.kernelMode = true;
    }
    if (!pcb.interruptsEnabled) {
      counts[CLASSIC_HELD]++;
      return;
    }
    this.#deliverPending();
  }

  /**
   * An exception the platform decided the guest gets (a genuine #PF, a #GP from user
   * mode, #UD ...): reflected through the guest's IDT as the processor would deliver it.
   */
  protected override injectException(vector: number, errorCode: number, _cr2: number): number {
    const code = hasErrorCode(vector) ? errorCode : -1;
    return this.#reflect(vector, code, EVENT_EXCEPTION, this.interpreter.rip);
  }

  // A trap at guest level tells the monitor the guest's mode: the CS the processor pushed
  // has the trapping code's CPL, 1 for the guest kernel, 3 for its user code. From CPL 3
  // the guest is in user mode with interrupts on, whatever the PCB said (its IRETQ to
  // user did not trap). A held interrupt is then taken first, at this instruction
  // boundary, as the processor would have taken it when IF became 1: the trapping
  // instruction runs again after the guest's handler returns. Returns HANDLED_COMPLETE to
  // go on with the trap, HANDLED_RETRY or RUN_CRASHED if it delivered.
  #enteredFrom(cpl: number): number {
    const pcb = this.pcb;
    if (cpl !== 3) {
      pcb.kernelMode = true;
      return HANDLED_COMPLETE;
    }
    pcb.kernelMode = false;
    pcb.interruptsEnabled = true;
    if (pcb.highestPending < 0) return HANDLED_COMPLETE;
    this.counts[CLASSIC_DEFERRED]++;
    const outcome = this.#deliverPending();
    return outcome === HANDLED_COMPLETE ? HANDLED_RETRY : outcome;
  }

  // Reflects the highest pending interrupt while the virtual IF allows (at guest level;
  // at CPL 3 the guest is in user mode with interrupts on, whatever the PCB said).
  #deliverPending(): number {
    const pcb = this.pcb;
    if (this.cpu.ctl.cpl === 3) {
      pcb.kernelMode = false;
      pcb.interruptsEnabled = true;
    }
    for (let round = 0; round < 256 && pcb.interruptsEnabled; round++) {
      const vector = pcb.highestPending;
      if (vector < 0) break;
      pcb.pending[vector >>> 5] = (pcb.pending[vector >>> 5]! & ~(1 << (vector & 31))) >>> 0;
      const outcome = this.#reflect(vector, -1, EVENT_EXTERNAL, this.interpreter.rip);
      if (outcome !== HANDLED_COMPLETE) return outcome;
    }
    return HANDLED_COMPLETE;
  }

  // --- Emulation of privileged instructions (#GP at CPL 1) ---------------------------------

  // Decodes the instruction at RIP from guest memory (through the guest's tables) into
  // #insn and checks it is the one the processor faulted on (interpreter.decoded).
  #decodeAtRip(): boolean {
    const it = this.interpreter;
    const mmu = this.mmu;
    const cpu = mmu.emulator.cpu;
    const view = mmu.view;
    const bytes = this.#bytes;
    const d = this.#insn;
    mmu.guestCtl.cpl = this.cpu.ctl.cpl;
    const rip = it.rip;
    const pa = cpu.translate(rip, ACCESS_FETCH);
    if (pa < 0) return false;
    const offset = rip % PAGE_SIZE;
    const available = Math.min(PAGE_SIZE - offset, MAX_LENGTH);
    for (let k = 0; k < available; k++) bytes[k] = view.read8(pa + k);
    let length = decodeInstruction(this.#views[available]!, 0, d);
    if (length < 0 && available < MAX_LENGTH) {
      const second = linearAdd(rip, available);
      const pa2 = second < 0 ? -1 : cpu.translate(second, ACCESS_FETCH);
      if (pa2 < 0) return false;
      for (let k = available; k < MAX_LENGTH; k++) bytes[k] = view.read8(pa2 + k - available);
      length = decodeInstruction(this.#views[MAX_LENGTH]!, 0, d);
    }
    const f = it.decoded;
    return length > 0 && d.op === f.op && d.length === f.length && d.form === f.form &&
      d.operandSize === f.operandSize && d.rm === f.rm && d.reg === f.reg &&
      d.base === f.base && d.index === f.index && d.scale === f.scale && d.disp === f.disp &&
      d.imm === f.imm && d.crRegister === f.crRegister && d.segment === f.segment &&
      d.ripRelative === f.ripRelative && d.addressSize === f.addressSize;
  }

  // The emulations of #insn (at CPL 1, #GP with `errorCode`): an outcome, or -1 when the
  // #GP is the guest's own (the caller reflects it).
  #emulatePrivileged(errorCode: number): number {
    const it = this.interpreter;
    const d = this.#insn;
    const pcb = this.pcb;
    const counts = this.counts;
    const op = d.op;
    if (op === OP_IRET) return errorCode === 0 ? -1 : this.#emulateIret();
    if (errorCode !== 0) return -1;
    const at = it.rip;
    const next = linearAdd(at, d.length);
    const trace = this.stats.trace;
    if (
      trace !== null &&
      (op === OP_CLI || op === OP_STI || op === OP_HLT || op === OP_LIDT || op === OP_IN ||
        op === OP_OUT || op === OP_SYSRET)
    ) {
      trace("classic.emulate", at, formatInstruction(d));
    }
    switch (op) {
      case OP_CLI:
        counts[EMULATE_CLI]++;
        pcb.interruptsEnabled = false;
        it.rip = next;
        return HANDLED_COMPLETE;
      case OP_STI:
        counts[EMULATE_STI]++;
        it.rip = next;
        return this.#emulateSti();
      case OP_HLT:
        counts[EMULATE_HLT]++;
        it.rip = next;
        if (!pcb.interruptsEnabled) {
          return this.crashWith(
            `hlt at ${
              formatLinear(at)
            } with the guest's virtual IF = 0: the vCPU is down, nothing can wake it ` +
              `(the classic monitor, as Xen's hvm_hlt)`,
          );
        }
        if (pcb.highestPending >= 0 && this.isGuestLevel) return this.#deliverPending();
        return this.idleUntilEvent();
      case OP_LIDT:
        counts[EMULATE_LIDT]++;
        return this.#emulateLidt(next);
      case OP_IN:
      case OP_OUT: {
        counts[op === OP_IN ? EMULATE_IN : EMULATE_OUT]++;
        const size = d.operandSize;
        const port = d.form === FORM_IMM ? d.imm & 0xff : it.regs[4]! & 0xffff;
        const mask = size === 1 ? 0xff : size === 2 ? 0xffff : 0xffff_ffff;
        if (op === OP_IN) {
          const value = (this.board.read(port, size) & mask) >>> 0;
          // IN AL/AX keeps the rest of RAX; IN EAX zero-extends (SDM Vol. 2 IN).
          if (size === 4) it.setReg(0, value, 0);
          else it.regs[0] = ((it.regs[0]! & ~mask) | value) >>> 0;
        } else {
          this.board.write(port, size, (it.regs[0]! & mask) >>> 0);
        }
        it.rip = next;
        return HANDLED_COMPLETE;
      }
      case OP_SYSRET:
        return this.#emulateSysret();
      case OP_LGDT:
      case OP_WBINVD:
      case OP_INVPCID:
        return this.crashWith(
          `${formatInstruction(d)} at ${
            formatLinear(at)
          } trapped at CPL 1, and the classic monitor does not emulate it`,
        );
      default:
        return -1; // not a privileged instruction: the #GP is the guest's own
    }
  }

  // MOV to/from CRn and INVLPG: hvm-shadow's handlers (the same shadow code) on the
  // decoded instruction; CR2 reads see the guest's virtual CR2.
  #emulateControl(): number {
    const it = this.interpreter;
    const d = this.#insn;
    this.counts[d.op === OP_INVLPG ? EMULATE_INVLPG : EMULATE_MOVCR]++;
    const trace = this.stats.trace;
    if (trace !== null) trace("classic.emulate", it.rip, formatInstruction(d));
    if (d.op === OP_MOV_FROM_CR && d.crRegister === 2) {
      this.counts[EXIT_TOTAL]++;
      const cr2 = this.guestCr2;
      it.setReg(d.rm, cr2 >>> 0, linearHigh32(cr2));
      it.skip();
      return HANDLED_COMPLETE;
    }
    return super.onIntercept();
  }

  // STI: virtual IF = 1. Setting it from 0 blocks interrupts until the next instruction
  // completes (SDM Vol. 2 STI), so the monitor runs that one instruction before it
  // delivers what is pending (at guest level; `sti; hlt` wakes after the HLT).
  #emulateSti(): number {
    const pcb = this.pcb;
    const wasEnabled = pcb.interruptsEnabled;
    pcb.interruptsEnabled = true;
    if (!this.isGuestLevel) return HANDLED_COMPLETE;
    if (!wasEnabled) {
      const it = this.interpreter;
      const counts = this.counts;
      const before = counts[CPU_INSTRUCTIONS]!;
      const step = it.step();
      this.board.now += counts[CPU_INSTRUCTIONS]! - before;
      let outcome = HANDLED_COMPLETE;
      if (step === STEP_FAULT) outcome = this.onException(true, this.cpu.ctl.cpl === 3);
      else if (step === STEP_INTERCEPT) outcome = this.onIntercept();
      else if (step === STEP_SERVICE) return HANDLED_COMPLETE; // nothing ran; stays pending
      else if (step !== STEP_OK) {
        return this.crashWith(
          `the instruction after an emulated sti at ${
            formatLinear(it.rip)
          } stopped the processor (step result ${step})`,
        );
      }
      if (outcome !== HANDLED_COMPLETE && outcome !== HANDLED_RETRY) return outcome;
    }
    return this.#deliverPending();
  }

  // LIDT m16&64: the pseudo-descriptor read from guest memory into the virtual IDTR.
  #emulateLidt(next: number): number {
    const it = this.interpreter;
    const pcb = this.pcb;
    const va = it.operandAddress();
    const vb = va < 0 ? -1 : linearAdd(va, 2);
    if (vb < 0) return this.deliverToGuest(false, VECTOR_GP, 0, 0);
    const cpu = this.mmu.emulator.cpu;
    if (!this.#readGuest(va, 2, ACCESS_READ)) return this.#deliverFault();
    const limit = cpu.data & 0xffff;
    if (!this.#readGuest(vb, 8, ACCESS_READ)) return this.#deliverFault();
    const base = canonicalToLinear(cpu.dataHi, cpu.data);
    if (base < 0) return this.deliverToGuest(false, VECTOR_GP, 0, 0);
    pcb.idtBase = base;
    pcb.idtLimit = limit;
    it.rip = next;
    return HANDLED_COMPLETE;
  }

  // IRETQ/IRETD at CPL 1 that #GP'd with CS.RPL < CPL: a return within the guest's virtual
  // kernel mode if the popped CS has RPL 0. Pops the frame, checks it as the processor
  // does at CPL 0, stays at real CPL 1 with real IF = 1; the virtual IF comes from the
  // popped RFLAGS. Anything else is the guest's #GP (-1).
  #emulateIret(): number {
    const it = this.interpreter;
    const d = this.#insn;
    const size = d.operandSize === 8 ? 8 : 4;
    const regs = it.regs;
    const sp = canonicalToLinear(regs[9]!, regs[8]!);
    if (sp < 0) return -1;
    const cpu = this.mmu.emulator.cpu;
    const popped = this.#popped;
    for (let k = 0; k < 5; k++) {
      const va = linearAdd(sp, k * size);
      if (va < 0) return -1;
      if (!this.#readGuest(va, size, ACCESS_READ)) return this.#deliverFault();
      popped[2 * k] = cpu.data;
      popped[2 * k + 1] = size === 8 ? cpu.dataHi : 0;
    }
    const cs = popped[2]! & 0xffff;
    const ss = popped[8]! & 0xffff;
    if ((cs & 3) !== 0 || (cs & 0xfffc) === 0) return -1;
    if ((ss & 0xfffc) !== 0 && (ss & 3) !== 0) {
      return this.deliverToGuest(false, VECTOR_GP, ss & 0xfffc, 0);
    }
    const target = canonicalToLinear(popped[1]!, popped[0]!);
    if (target < 0) return this.deliverToGuest(false, VECTOR_GP, 0, 0);
    this.counts[EMULATE_IRET]++;
    const trace = this.stats.trace;
    if (trace !== null) trace("classic.emulate", it.rip, formatInstruction(d));
    const flags = popped[4]!;
    this.#setRealFlags((flags & IRET_LOADED) | RFLAGS_IF | 0x2);
    regs[8] = popped[6]!;
    regs[9] = popped[7]!;
    it.rip = target;
    const pcb = this.pcb;
    pcb.kernelMode = true;
    pcb.interruptsEnabled = (flags & RFLAGS_IF) !== 0;
    return this.isGuestLevel ? this.#deliverPending() : HANDLED_COMPLETE;
  }

  // SYSCALL (SDM Vol. 2) done on the PCB: RCX <- next RIP, R11 <- RFLAGS as the guest
  // would see it (its virtual IF), IF cleared in the PCB if the guest's IA32_FMASK says
  // so, virtual kernel mode at real CPL 1, RIP <- the guest's IA32_LSTAR. The
  // interpreter's `lstar`/`fmask` hold the guest's values (the monitor's own MSRs are not
  // modelled).
  #emulateSyscall(): number {
    const it = this.interpreter;
    const pcb = this.pcb;
    const d = it.decoded;
    this.counts[EMULATE_SYSCALL]++;
    const next = linearAdd(it.rip, d.length);
    const guestFlags = ((it.rflags & ~RFLAGS_IF) | (pcb.interruptsEnabled ? RFLAGS_IF : 0)) >>> 0;
    it.setReg(1, next >>> 0, linearHigh32(next));
    it.setReg(11, guestFlags, 0);
    this.#setRealFlags(((guestFlags & ~it.fmask) | RFLAGS_IF | 0x2) >>> 0);
    if ((it.fmask & RFLAGS_IF) !== 0) pcb.interruptsEnabled = false;
    pcb.kernelMode = true;
    this.cpu.ctl.cpl = CLASSIC_GUEST_KERNEL_CPL;
    it.rip = it.lstar;
    return HANDLED_COMPLETE;
  }

  // SYSRETQ at CPL 1 (#GP: CPL 0 only): RIP <- RCX (#GP(0) if not canonical), RFLAGS <-
  // R11 (virtual IF from it; the real IF stays 1), CPL 3, virtual user mode.
  #emulateSysret(): number {
    const it = this.interpreter;
    const pcb = this.pcb;
    if (this.#insn.operandSize !== 8) return -1;
    const regs = it.regs;
    const target = canonicalToLinear(regs[3]!, regs[2]!);
    if (target < 0) return -1;
    this.counts[EMULATE_SYSRET]++;
    const flags = regs[22]! & 0x3c7fd7;
    this.#setRealFlags((flags | RFLAGS_IF | 0x2) >>> 0);
    pcb.interruptsEnabled = (flags & RFLAGS_IF) !== 0;
    pcb.kernelMode = false;
    this.cpu.ctl.cpl = 3;
    it.rip = target;
    return HANDLED_COMPLETE;
  }

  // Real RFLAGS <- `flags`, keeping the AC copy the paging control holds for SMAP.
  #setRealFlags(flags: number): void {
    const it = this.interpreter;
    const old = it.rflags;
    it.rflags = flags >>> 0;
    if (((old ^ flags) & RFLAGS_AC) !== 0) {
      const ctl = this.cpu.ctl;
      ctl.rflags = ((ctl.rflags & ~RFLAGS_AC) | (flags & RFLAGS_AC)) >>> 0;
    }
  }

  // --- The sensitive instructions that do not trap (the lab's view) ---------------------

  // Counts what the instruction does differently from native, then runs it exactly as
  // the processor does at this CPL (the watch leaves no trace in the counters: the
  // second fetch and its TLB hit are taken back).
  #watchSensitive(op: number): number {
    const it = this.interpreter;
    const counts = this.counts;
    const pcb = this.pcb;
    const isKernel = this.cpu.ctl.cpl !== 3;
    const index = op === OP_POPF ? 0 : op === OP_PUSHF ? 1 : op === OP_SIDT ? 2 : 3;
    const rip = it.rip;
    const pushedIf = (it.rflags & RFLAGS_IF) !== 0;
    const fetches = counts[CPU_FETCH]!;
    const retired = counts[CPU_INSTRUCTIONS]!;
    it.intercepts[op] = 0;
    const step = it.step();
    it.intercepts[op] = 1;
    if (this.isGuestLevel) this.board.now += counts[CPU_INSTRUCTIONS]! - retired;
    const refetched = counts[CPU_FETCH]! - fetches;
    counts[CPU_FETCH] -= refetched;
    if (this.cpu.tlbEnabled && this.cpu.ctl.isPaging) counts[TLB_HIT] -= refetched;
    if (step === STEP_OK) {
      // Counted when the instruction completed (a faulting one runs again).
      if (index >= 2) {
        counts[UNTRAPPED_COUNTERS[index]!]++;
        counts[CLASSIC_SIDT_LEAK]++;
      } else if (isKernel) {
        counts[UNTRAPPED_COUNTERS[index]!]++;
        // POPF: the value it read is still in the vCPU's data register.
        const guestIf = op === OP_POPF ? (this.cpu.data & RFLAGS_IF) !== 0 : pushedIf;
        if (guestIf !== pcb.interruptsEnabled) {
          counts[op === OP_POPF ? CLASSIC_POPF_IF_LOST : CLASSIC_PUSHF_IF_WRONG]++;
        }
      }
      const trace = this.stats.trace;
      if (trace !== null && (isKernel || index >= 2)) {
        trace(`classic.untrapped.${CLASSIC_UNTRAPPED[index]}`, rip, "");
      }
      return HANDLED_COMPLETE;
    }
    if (step === STEP_FAULT) return this.onException(true, this.cpu.ctl.cpl === 3);
    return this.crashWith(
      `${formatInstruction(it.decoded)} at ${formatLinear(it.rip)}: step result ${step}`,
    );
  }

  // --- Reflection (SDM Vol. 3A 6.12, 6.14) -------------------------------------------------

  // Delivers `vector` into the guest as the processor would, with the double-fault rules
  // for a fault while delivering (SDM Vol. 3A 6.15, Table 6-5); a fault while delivering
  // #DF crashes the domain (a triple fault). Returns HANDLED_COMPLETE or RUN_CRASHED.
  #reflect(vector: number, errorCode: number, kind: number, returnRip: number): number {
    const it = this.interpreter;
    const counts = this.counts;
    let current = vector;
    let code = errorCode;
    let software = kind === EVENT_SOFTWARE;
    let rip = returnRip;
    let cls = kind === EVENT_EXTERNAL ? CLASS_BENIGN : faultClass(vector);
    for (let round = 0; round < MAX_DELIVERY_ROUNDS; round++) {
      if (this.#enterGuestHandler(current, code, software, rip)) {
        counts[CLASSIC_REFLECT]++;
        it.deliveries[current]++;
        const trace = this.stats.trace;
        if (trace !== null) trace("classic.reflect", rip, current);
        return HANDLED_COMPLETE;
      }
      const fault = this.#faultVector;
      if (software) {
        // INT n's fault is the instruction's: delivered with RIP at the INT.
        software = false;
        rip = it.rip;
      } else if (current === VECTOR_DF) {
        return this.crashWith(
          `triple fault reflecting a double fault at ${formatLinear(rip)}: vector ${fault} ` +
            `(error code ${this.#faultCode}, cr2 ${formatLinear(this.#faultCr2)})`,
        );
      } else if (
        (cls === CLASS_CONTRIBUTORY && faultClass(fault) === CLASS_CONTRIBUTORY) ||
        (cls === CLASS_PAGE_FAULT && faultClass(fault) !== CLASS_BENIGN)
      ) {
        current = VECTOR_DF;
        code = 0;
        cls = CLASS_CONTRIBUTORY;
        continue;
      }
      current = fault;
      code = hasErrorCode(fault) ? this.#faultCode : -1;
      cls = faultClass(fault);
      if (fault === VECTOR_PF) this.setGuestCr2(this.#faultCr2);
    }
    return this.crashWith(`cannot reflect vector ${vector} at ${formatLinear(rip)}`);
  }

  /*
   * One attempt to enter the guest's handler of `vector`, as the processor does in IA-32e
   * mode; false with the fault in #faultVector/#faultCode/#faultCr2 and registers, RIP,
   * CPL and the PCB unchanged (memory may hold part of the frame, as on hardware).
   *
   *   gate bytes 15..8: reserved | offset 63:32
   *   gate bytes  7..0: offset 31:16 | P | DPL | 0 | type | 0 | IST | selector | offset 15:0
   *                      63     48   47  46:45  44 43:40      34:32  31:16      15:0
   */
  #enterGuestHandler(
    vector: number,
    errorCode: number,
    software: boolean,
    returnRip: number,
  ): boolean {
    const it = this.interpreter;
    const pcb = this.pcb;
    const cpu = this.mmu.emulator.cpu;
    const ext = software ? 0 : 1;
    const idtError = vector * 8 + 2 + ext;
    if (vector * 16 + 15 > pcb.idtLimit) return this.#fail(VECTOR_GP, idtError);
    const gate = linearAdd(pcb.idtBase, vector * 16);
    const gateHigh = gate < 0 ? -1 : linearAdd(gate, 8);
    if (gateHigh < 0) return this.#fail(VECTOR_GP, idtError);
    if (!this.#readGuest(gate, 8, ACCESS_IMPLICIT_READ)) return false;
    const low = cpu.data;
    const attributes = cpu.dataHi;
    if (!this.#readGuest(gateHigh, 8, ACCESS_IMPLICIT_READ)) return false;
    const offsetHigh = cpu.data;
    const type = (attributes >>> 8) & 0xf;
    if (type !== 0xe && type !== 0xf) return this.#fail(VECTOR_GP, idtError);
    // Where the guest was: the real CPL says it (3: user code, 1: its kernel).
    const fromUser = this.cpu.ctl.cpl === 3;
    const virtualCpl = fromUser ? 3 : 0;
    if (software && ((attributes >>> 13) & 3) < virtualCpl) {
      return this.#fail(VECTOR_GP, idtError);
    }
    if ((attributes & 0x8000) === 0) return this.#fail(VECTOR_NP, idtError);
    if (((low >>> 16) & 0xfffc) === 0) return this.#fail(VECTOR_GP, ext);
    const target = canonicalToLinear(
      offsetHigh,
      ((attributes & 0xffff0000) | (low & 0xffff)) >>> 0,
    );
    if (target < 0) return this.#fail(VECTOR_GP, ext);

    // The guest's RSP0 from user mode, else the current RSP; aligned to 16 (SDM 6.14.2).
    const regs = it.regs;
    const oldSpLo = regs[8]!;
    const oldSpHi = regs[9]!;
    const rsp0 = pcb.kernelStack;
    const sp = fromUser
      ? rsp0 - (rsp0 % 16)
      : canonicalToLinear(oldSpHi, (oldSpLo & 0xfffffff0) >>> 0);
    if (sp < 0) return this.#fail(VECTOR_SS, ext);
    const slots = errorCode < 0 ? 5 : 6;
    const bottom = linearAdd(sp, -8 * slots);
    if (bottom < 0) return this.#fail(VECTOR_SS, ext);
    // What the guest would see natively: its IF, and the selectors of its virtual ring.
    const guestIf = fromUser || pcb.interruptsEnabled;
    const flags = ((it.rflags & ~RFLAGS_IF) | (guestIf ? RFLAGS_IF : 0)) >>> 0;
    const ok = this.#writeGuest(linearAdd(sp, -8), fromUser ? USER_SS : KERNEL_SS, 0) &&
      this.#writeGuest(linearAdd(sp, -16), oldSpLo, oldSpHi) &&
      this.#writeGuest(linearAdd(sp, -24), flags, 0) &&
      this.#writeGuest(linearAdd(sp, -32), fromUser ? USER_CS : KERNEL_CS, 0) &&
      this.#writeGuest(linearAdd(sp, -40), returnRip >>> 0, linearHigh32(returnRip)) &&
      (errorCode < 0 || this.#writeGuest(linearAdd(sp, -48), errorCode >>> 0, 0));
    if (!ok) return false;
    regs[8] = bottom >>> 0;
    regs[9] = linearHigh32(bottom);
    it.rip = target;
    // The real IF stays 1 (the monitor keeps the devices); TF, NT, RF, VM are cleared.
    this.#setRealFlags(
      ((it.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)) | RFLAGS_IF) >>> 0,
    );
    this.cpu.ctl.cpl = CLASSIC_GUEST_KERNEL_CPL;
    pcb.kernelMode = true;
    pcb.interruptsEnabled = type === 0xe ? false : guestIf; // an interrupt gate clears IF
    return true;
  }

  // --- The monitor's accesses to guest memory ---------------------------------------------

  // Reads guest-linear `va` through the guest's own tables (the shadow code's emulator: a
  // software walk over guest-physical memory, setting A bits as hardware would) at
  // supervisor privilege. False with the guest's fault recorded.
  #readGuest(va: number, size: 1 | 2 | 4 | 8, kind: AccessKind): boolean {
    const mmu = this.mmu;
    mmu.guestCtl.cpl = 0;
    const cpu = mmu.emulator.cpu;
    if (cpu.read(va, size, kind)) return true;
    return this.#recordFault(cpu.exception);
  }

  // Writes a qword at guest-linear `va` as the processor's implicit supervisor push does;
  // a write into a shadowed page table is emulated (its shadows re-validated).
  #writeGuest(va: number, lo: number, hi: number): boolean {
    if (va < 0) return this.#fail(VECTOR_SS, 1);
    const mmu = this.mmu;
    mmu.guestCtl.cpl = 0;
    const cpu = mmu.emulator.cpu;
    const gpa = cpu.translate(va, ACCESS_IMPLICIT_WRITE);
    if (gpa < 0) return this.#recordFault(cpu.exception);
    if (mmu.isShadowedTable(Math.floor(gpa / PAGE_SIZE))) {
      if (emulateDataWrite(mmu, va, 8, lo >>> 0, hi >>> 0, 0)) return true;
    } else if (cpu.write(va, 8, lo >>> 0, hi >>> 0, ACCESS_IMPLICIT_WRITE)) return true;
    return this.#recordFault(cpu.exception);
  }

  #recordFault(e: { vector: number; errorCode: number; cr2: number }): false {
    this.#faultVector = e.vector;
    this.#faultCode = e.errorCode;
    this.#faultCr2 = e.cr2;
    return false;
  }

  #fail(vector: number, errorCode: number): false {
    this.#faultVector = vector;
    this.#faultCode = errorCode;
    this.#faultCr2 = 0;
    return false;
  }

  // The recorded fault of an emulated instruction, given to the guest (RIP at it).
  #deliverFault(): number {
    return this.deliverToGuest(false, this.#faultVector, this.#faultCode, this.#faultCr2);
  }
}
