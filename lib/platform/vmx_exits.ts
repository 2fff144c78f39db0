/**
 * The VM exits both HVM platforms take for the guest's CPU work, as VT-x does under Xen:
 * port I/O, HLT, external interrupts and interrupt windows (the basic exit reasons of
 * SDM Vol. 3C Appendix C), counted by reason into `exit.*` and `exit.total`.
 *
 * What Xen programs into the VMCS for an HVM guest, and what follows for the lab:
 * - I/O bitmaps all ones but the PC debug ports 0x80 and 0xed (xen/arch/x86/hvm/hvm.c,
 *   hvm_enable(): "memset(hvm_io_bitmap, ~0, ...); __clear_bit(0x80 ...); __clear_bit(0xed
 *   ...)"): every IN/OUT exits (reason 30) except those two, which run at native speed.
 *   Xen's handle_pio() (hvm/io.c) emulates it: the ports of the devices Xen emulates
 *   itself (the vPIC 0x20/0x21, 0xa0/0xa1 and ELCR 0x4d0/0x4d1 of hvm/vpic.c, the vPIT
 *   0x40-0x43 and 0x61 of emul-i8254.c) are answered inside Xen; every other port goes
 *   to the device model (QEMU, the default ioreq server) as an ioreq, a round trip
 *   through dom0 counted as `hvm.ioreq` (the i8042 0x60/0x64, the 16550 0x3f8-0x3ff).
 *   The CPL > IOPL #GP takes priority over the exit (SDM Vol. 3C 25.1.1); the
 *   interpreter checks it before intercepts.
 * - HLT exiting (reason 12): vmx.c's EXIT_REASON_HLT -> hvm_hlt(), which blocks the
 *   vCPU unless an event is pending (and takes the vCPU down with IF = 0).
 * - External-interrupt exiting (reason 1): a host interrupt that arrives while the guest
 *   runs exits (vmx_do_extint); the guest's virtual interrupt (the vPIT's tick, the
 *   keyboard IRQ QEMU asserts) is then injected at VM entry (vmx_intr_assist in
 *   hvm/vmx/intr.c). An interrupt that wakes a vCPU blocked in HLT takes no exit: the
 *   vCPU is not in non-root mode, Xen just unblocks it and injects at the entry.
 * - Interrupt-window exiting (reason 7): when the guest cannot take the interrupt at the
 *   entry (hvm_interrupt_blocked(): RFLAGS.IF = 0, or blocking by STI / MOV SS), or
 *   another is already being injected ("Is there another IRQ to queue up behind this
 *   one?" in vmx_intr_assist), Xen sets CPU_BASED_VIRTUAL_INTR_PENDING and the guest
 *   exits as soon as it can take one; the next entry injects it.
 *
 * Interrupt-window accounting: an external interrupt delivered at the first instruction
 * boundary after a VM entry, with the guest able to take it there, was injected by that
 * entry; every other delivery (the guest itself made itself interruptible: IRET, STI,
 * POPF) was preceded by an interrupt-window exit. A delivery whose push faults (an EPT
 * violation or shadow #PF on the kernel stack) continues the same injection after that
 * exit (Xen re-injects from the IDT-vectoring information). Approximation: a state where
 * the guest became interruptible with an interrupt pending and the chunk ended on a
 * faulting instruction (not a faulting delivery) is counted as a window exit; the lab's
 * guest never does that (its only STI is followed by HLT).
 *
 * @module
 */

import { FORM_IMM, OP_IN, OP_OUT } from "../x86/decode.ts";
import {
  CPU_INSTRUCTIONS,
  CPU_INTERRUPTS,
  CPU_PORT_IO,
  type Interpreter,
  InterpreterContext,
  RFLAGS_IF,
} from "../x86/interpreter.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";
import { EXIT_TOTAL, HANDLED_COMPLETE, HANDLED_RETRY } from "./base_platform.ts";
import type { PcBoard } from "./pc_board.ts";

/** SDM Vol. 3C Appendix C basic exit reason: external interrupt. */
export const EXIT_REASON_EXTERNAL_INTERRUPT = 1;
/** SDM Vol. 3C Appendix C basic exit reason: interrupt window. */
export const EXIT_REASON_INTERRUPT_WINDOW = 7;
/** SDM Vol. 3C Appendix C basic exit reason: HLT. */
export const EXIT_REASON_HLT = 12;
/** SDM Vol. 3C Appendix C basic exit reason: I/O instruction. */
export const EXIT_REASON_IO_INSTRUCTION = 30;

/** IN / OUT exits. */
export const EXIT_IO: number = declareCounter(
  "exit.io",
  "VM exits for IN/OUT (exit reason 30: Xen's I/O bitmap traps every port but 0x80 and 0xed)",
  "exits",
);
/** HLT exits. */
export const EXIT_HLT: number = declareCounter(
  "exit.hlt",
  "VM exits for HLT (exit reason 12: the vCPU blocks in hvm_hlt until an interrupt)",
  "exits",
);
/** External-interrupt exits. */
export const EXIT_EXTERNAL_INTERRUPT: number = declareCounter(
  "exit.externalInterrupt",
  "VM exits for a host interrupt that arrived while the guest ran (exit reason 1)",
  "exits",
);
/** Interrupt-window exits. */
export const EXIT_INTERRUPT_WINDOW: number = declareCounter(
  "exit.interruptWindow",
  "VM exits when the guest became able to take a pending interrupt (exit reason 7)",
  "exits",
);
/** Port accesses forwarded to the device model. */
export const HVM_IOREQ: number = declareCounter(
  "hvm.ioreq",
  "port I/O Xen forwards to the device model (QEMU) as an ioreq: a round trip through dom0",
  "requests",
);

/**
 * Whether Xen emulates `port` itself (no device-model round trip): the vPIC and its
 * ELCR (hvm/vpic.c: register_portio_handler(d, 0x20, 2, ...), (d, 0xa0, 2, ...),
 * (d, 0x4d0, 2, ...)) and the vPIT with the speaker gate (emul-i8254.c:
 * register_portio_handler(d, PIT_BASE, 4, ...), (d, 0x61, 1, ...)).
 */
export function isPortEmulatedByXen(port: number): boolean {
  return port === 0x20 || port === 0x21 || port === 0xa0 || port === 0xa1 ||
    port === 0x4d0 || port === 0x4d1 || (port >= 0x40 && port <= 0x43) || port === 0x61;
}

/** Whether Xen's I/O bitmap lets `port` through without an exit (hvm.c, hvm_enable()). */
export function isPortPassedThrough(port: number): boolean {
  return port === 0x80 || port === 0xed;
}

// Operand-size masks by size in bytes.
const SIZE_MASK = [0, 0xff, 0xffff, 0, 0xffff_ffff];

/**
 * The exit bookkeeping of one HVM vCPU (VT-x under Xen): the port-I/O, HLT,
 * external-interrupt and interrupt-window exits. The platform calls it from its hooks:
 * {@link ioExit} from onIntercept, {@link hltExit} from onHalt, {@link raise} from
 * raiseGuestInterrupt, {@link afterChunk} from afterGuestChunk, and {@link entry} after
 * any other exit it handled at guest level (so the window accounting knows where the
 * VM entries were).
 *
 * @example Port I/O under Xen's VMX: every port exits but 0x80 and 0xed; the EOI is Xen's
 * ```ts
 * import { isPortEmulatedByXen, isPortPassedThrough, VmxExits } from "./vmx_exits.ts";
 * import { Interpreter } from "../x86/interpreter.ts";
 * import { MachineMemory } from "../memory/machine_memory.ts";
 * import { PagingControl } from "../x86/paging_control.ts";
 * import { Vcpu } from "../x86/vcpu.ts";
 * import { Stats } from "../x86/stats.ts";
 * import { PcBoard } from "./pc_board.ts";
 * import assert from "node:assert/strict";
 * const stats = new Stats();
 * const cpu = new Vcpu(new MachineMemory({ frames: 4 }), new PagingControl(), stats);
 * const exits = new VmxExits(stats, new Interpreter(cpu), new PcBoard(stats));
 * assert.equal(exits.isIoIntercepted, true); // I/O exiting: IN and OUT stop the guest
 * assert.deepEqual([0x20, 0x60, 0x3f8].map(isPortEmulatedByXen), [true, false, false]);
 * assert.equal(isPortPassedThrough(0x80), true); // Linux's I/O-delay port: no exit
 * ```
 */
export class VmxExits {
  readonly #stats: Stats;
  readonly #counts: Float64Array;
  readonly #it: Interpreter;
  readonly #board: PcBoard;
  readonly #scratch = new InterpreterContext();
  // Interrupt-window accounting (see the module doc).
  #deliveries = 0; // CPU_INTERRUPTS at the end of the last chunk
  #direct = false; // the next chunk starts at a VM entry that injects a pending interrupt
  #open = false; // an injection is under way (a delivery faulted and will be retried)
  #candidate = false; // the last chunk ended with the guest interruptible, one pending
  #halted = false; // the vCPU is blocked in HLT (no exit for the interrupt that wakes it)
  readonly #worldSwitch: (() => void) | null;

  /**
   * Sets the VMCS's I/O exiting for `interpreter` (IN and OUT intercepted).
   * `worldSwitch`, when given, is called at each VM exit and each VM entry these exits
   * make (hvm-hap flushes the TLB there without VPID); an interrupt-window exit is only
   * known after the stretch of guest execution it interrupted, so its two calls come
   * then (an approximation of the flush's timing, not of its count).
   */
  constructor(
    stats: Stats,
    interpreter: Interpreter,
    board: PcBoard,
    worldSwitch: (() => void) | null = null,
  ) {
    this.#stats = stats;
    this.#counts = stats.counts;
    this.#it = interpreter;
    this.#board = board;
    this.#worldSwitch = worldSwitch;
    interpreter.intercepts[OP_IN] = 1;
    interpreter.intercepts[OP_OUT] = 1;
  }

  /** Whether IN and OUT are intercepted (the VMCS's "use I/O bitmaps"). */
  get isIoIntercepted(): boolean {
    return this.#it.intercepts[OP_IN] !== 0 && this.#it.intercepts[OP_OUT] !== 0;
  }

  /** Whether `op` is one of the instructions this class handles in {@link ioExit}. */
  handles(op: number): boolean {
    return op === OP_IN || op === OP_OUT;
  }

  /**
   * The intercepted IN/OUT in `interpreter.decoded`: an I/O exit (unless the port is
   * 0x80 or 0xed, which the I/O bitmap lets through), emulated against the board as
   * the processor would have done it (IN: AL and AX keep the other bits, EAX
   * zero-extends into RAX), RIP advanced. Returns HANDLED_COMPLETE.
   */
  ioExit(guestLevel: boolean): number {
    const it = this.#it;
    const d = it.decoded;
    const isIn = d.op === OP_IN;
    const size = d.operandSize;
    const port = d.form === FORM_IMM ? d.imm & 0xff : it.regs[4]! & 0xffff;
    const mask = SIZE_MASK[size]!;
    const regs = it.regs;
    let value: number;
    if (isIn) {
      value = (this.#board.read(port, size) & mask) >>> 0;
      if (size === 4) {
        regs[0] = value;
        regs[1] = 0;
      } else {
        regs[0] = ((regs[0]! & ~mask) | value) >>> 0;
      }
    } else {
      value = (regs[0]! & mask) >>> 0;
      this.#board.write(port, size, value);
    }
    it.skip();
    const counts = this.#counts;
    if (isPortPassedThrough(port)) {
      // No exit: the processor executed it (counted as the interpreter would).
      counts[CPU_PORT_IO]++;
      counts[CPU_INSTRUCTIONS]++;
      return HANDLED_COMPLETE;
    }
    counts[EXIT_TOTAL]++;
    counts[EXIT_IO]++;
    this.#switchWorlds(1);
    const trace = this.#stats.trace;
    if (trace !== null) trace("exit.io", port, `${isIn ? "in" : "out"}${8 * size} ${value}`);
    if (!isPortEmulatedByXen(port)) {
      counts[HVM_IOREQ]++;
      if (trace !== null) trace("hvm.ioreq", port, value);
    }
    this.entry(guestLevel, true);
    return HANDLED_COMPLETE;
  }

  /**
   * A HLT exit (RIP already past the HLT): counted and traced. The caller then lets the
   * vCPU block ({@link halted} when it slept).
   */
  hltExit(): void {
    this.#counts[EXIT_TOTAL]++;
    this.#counts[EXIT_HLT]++;
    this.#switchWorlds(1);
    this.#candidate = false; // the HLT exited before any interrupt window could open
    this.#stats.trace?.("exit.hlt", this.#it.rip, this.#it.rflags);
  }

  /** Records that the vCPU blocked in HLT until the next device event. */
  halted(): void {
    this.#halted = true;
  }

  /**
   * A platform's whole HLT exit: counted, then `block` (the platform's base onHalt(): the
   * vCPU sleeps until the next device event, Xen's hvm_hlt), then the entry. Returns
   * what `block` returned.
   */
  halt(block: () => number): number {
    this.hltExit();
    const blocks = this.#it.pendingInterrupt < 0;
    const outcome = block();
    if (outcome === HANDLED_RETRY && blocks) this.halted();
    this.entry(true, true);
    return outcome;
  }

  /**
   * A device raises `vector`: the host interrupt that carries it exits the running guest
   * (none when the vCPU was blocked in HLT), then the entry injects it, or opens an
   * interrupt window when the guest cannot take it now.
   */
  raise(vector: number): void {
    const it = this.#it;
    if (!this.#halted) {
      this.#counts[EXIT_TOTAL]++;
      this.#counts[EXIT_EXTERNAL_INTERRUPT]++;
      this.#switchWorlds(1);
      const trace = this.#stats.trace;
      if (trace !== null) {
        const blocked = !this.#isInterruptible() || it.pendingInterrupt >= 0;
        trace("exit.externalInterrupt", vector, blocked ? "window" : "inject");
      }
    }
    it.raiseInterrupt(vector);
    this.#direct = this.#isInterruptible(); // an interrupt is now pending
  }

  /**
   * The VM entry after an exit handled at guest level (`guestLevel`; exits inside the
   * guest kernel's compiled code are followed by more of it, not by guest instructions):
   * a pending interrupt the guest can take is injected by this entry. `byInstruction`:
   * the exit was the instruction that ended the last stretch (an intercepted
   * instruction), so it came before any interrupt window that instruction opened; an
   * exception exit (a #PF or EPT violation, perhaps while delivering an interrupt
   * after a window exit) leaves the window accounting as it is.
   */
  entry(guestLevel: boolean, byInstruction: boolean): void {
    if (!guestLevel) return;
    if (byInstruction) this.#candidate = false;
    this.#direct = this.#it.pendingInterrupt >= 0 && this.#isInterruptible();
  }

  /**
   * After a stretch of guest execution: counts the interrupt-window exits it implied
   * (see the module doc).
   */
  afterChunk(): void {
    const counts = this.#counts;
    const it = this.#it;
    let windows = 0;
    if (this.#candidate) {
      // The last chunk ended with the guest interruptible and an interrupt pending, and no
      // exit came first: that was an interrupt-window exit; its injection is under way.
      windows++;
      this.#open = true;
      this.#candidate = false;
    }
    let open = this.#open || this.#direct;
    const delivered = counts[CPU_INTERRUPTS]! - this.#deliveries;
    this.#deliveries = counts[CPU_INTERRUPTS]!;
    if (delivered > 0) {
      windows += open ? delivered - 1 : delivered;
      open = false;
    }
    if (!open && it.pendingInterrupt >= 0 && this.#isInterruptible()) this.#candidate = true;
    this.#open = open;
    this.#direct = false;
    this.#halted = false;
    if (windows > 0) {
      counts[EXIT_TOTAL] += windows;
      counts[EXIT_INTERRUPT_WINDOW] += windows;
      this.#switchWorlds(windows);
      const trace = this.#stats.trace;
      if (trace !== null) {
        for (let i = 0; i < windows; i++) trace("exit.interruptWindow", it.rip, it.rflags);
      }
    }
  }

  // The VM exit and VM entry of `exits` exits, for the platform's TLB model.
  #switchWorlds(exits: number): void {
    const worldSwitch = this.#worldSwitch;
    if (worldSwitch === null) return;
    for (let i = 0; i < 2 * exits; i++) worldSwitch();
  }

  // RFLAGS.IF = 1 and no blocking by STI (hvm_interrupt_blocked, the NMI cases aside).
  #isInterruptible(): boolean {
    const it = this.#it;
    if ((it.rflags & RFLAGS_IF) === 0) return false;
    it.saveContext(this.#scratch);
    return !this.#scratch.interruptShadow;
  }
}
