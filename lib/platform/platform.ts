/**
 * What every platform offers the guest kernel: the hardware it runs on (a vCPU and its
 * instruction interpreter), a way to load guest-physical memory before the guest starts
 * (the domain builder's job), DMA for the guest's disk, and the two ways guest work
 * reaches the processor: a data access at user or kernel privilege, and the execution of
 * kernel text. A platform decides what happens on a fault, a CR3 write or an INVLPG.
 *
 * The guest reaches the platform only through this interface and the trap handlers it
 * registers (its IDT): the platform calls up into the guest through those callbacks,
 * never by import.
 *
 * @module
 */

import type { AccessKind } from "../x86/access.ts";
import type { Interpreter } from "../x86/interpreter.ts";
import type { Stats } from "../x86/stats.ts";
import type { Vcpu } from "../x86/vcpu.ts";
import type { CounterDevice } from "../memory/mmio_device.ts";
import type { InterpreterContext } from "../x86/interpreter.ts";
import type { PcBoard } from "./pc_board.ts";

/** The ways the lab runs the same guest. */
export type PlatformName = "native" | "pv" | "hvm-shadow" | "hvm-hap" | "classic";

/** Every platform name, in the order reports show them. */
export const PLATFORM_NAMES: readonly PlatformName[] = [
  "native",
  "pv",
  "hvm-shadow",
  "hvm-hap",
  "classic",
];

/** A trap handler's answer: the faulting access or instruction is retried. */
export const TRAP_RETRY = 0;
/**
 * A trap handler's answer: the access is not retried, because the handler ended the
 * guest work that made it (the guest kernel killed the process).
 */
export const TRAP_ABANDON = 1;

/**
 * A guest's exception handler (an IDT entry). Called at CPL 0 with the exception's
 * vector, error code, CR2 (a 48-bit linear value; meaningful for #PF) and whether it was
 * raised at CPL 3. Returns {@link TRAP_RETRY} or {@link TRAP_ABANDON}.
 */
export type TrapHandler = (
  vector: number,
  errorCode: number,
  cr2: number,
  fromUser: boolean,
) => number;

/** Outcome of {@link Platform.access} and {@link Platform.execute}: the work completed. */
export const RUN_DONE = 0;
/** Outcome: a trap handler abandoned the work ({@link TRAP_ABANDON}). */
export const RUN_ABANDONED = 1;
/** Outcome: the domain crashed; {@link Platform.crashReason} says why. Nothing runs after. */
export const RUN_CRASHED = 2;
/**
 * Outcome of {@link Platform.runGuest}: the step bound was reached before the guest
 * finished; {@link Platform.stopReason} says where the guest was (and whether it was
 * spinning with interrupts off). The guest can be run on.
 */
export const RUN_LIMIT = 4;
/**
 * Outcome of {@link Platform.runGuest}: the processor halted (or the PV guest blocked)
 * with interrupts enabled and no device event will ever wake it.
 */
export const RUN_IDLE = 5;

/** A guest service's answer: return to the guest's code after the call. */
export const SERVICE_CONTINUE = 0;
/** A guest service's answer: the guest asks the run to stop (its work is done). */
export const SERVICE_STOP = 1;

/**
 * The guest kernel's compiled code, reached from its entry stubs by a `call` into the
 * service range ({@link Platform.setServices}). `context` holds the guest's registers at
 * the call (RDI = the trap frame); the service may change them (a result, another
 * thread's stack) and may run kernel text meanwhile. Returns SERVICE_CONTINUE or
 * SERVICE_STOP.
 */
export type GuestService = (service: number, context: InterpreterContext) => number;

/**
 * What the guest kernel believes about its processor, and where the platform keeps it:
 * the seeds' "process control block for the guest OS". Natively and under VT-x it is the
 * processor's own state; a PV guest's lives in Xen's vCPU and the shared vcpu_info; the
 * classic trap-and-emulate monitor keeps it in software.
 */
export interface GuestCpuState {
  /** Whether the guest is in (virtual) kernel mode. */
  kernelMode: boolean;
  /** Whether the guest has interrupts (event delivery) enabled. */
  interruptsEnabled: boolean;
  /** The guest's exception table: IDT base (a linear address), or its trap table's. */
  idtBase: number;
  /** The guest's kernel stack for entries from user mode (TSS.RSP0, PV kernel_sp). */
  kernelStack: number;
  /** The guest's page-table base (guest-physical for HVM, machine for PV). */
  cr3: number;
  /** The last page-fault address given to the guest. */
  cr2: number;
  /**
   * Vectors pending delivery to the guest (natively and under VT-x the processor shows
   * only the highest one requested, the one it takes next).
   */
  pending: number[];
  /** Where the state lives: "processor", "vmcs", "xen-vcpu", "monitor". */
  keptIn: string;
}

/**
 * A machine that runs one guest. Implementations: `NativePlatform` (this issue), and the
 * virtualized platforms that build on the same vCPU.
 */
export interface Platform {
  /** Which platform this is. */
  readonly name: PlatformName;
  /** The run's counters. */
  readonly stats: Stats;
  /** The processor the guest's accesses run on (for hvm-shadow, with the shadow's CR3). */
  readonly cpu: Vcpu;
  /** The interpreter that executes the guest's kernel text on {@link cpu}. */
  readonly interpreter: Interpreter;
  /** Guest-physical memory size, in 4 KiB frames. */
  readonly guestFrames: number;
  /** Why the domain crashed; empty while it runs. */
  readonly crashReason: string;
  /** The guest's memory-mapped device (a counter and a UART). */
  readonly device: CounterDevice;
  /** The guest frame of the device's registers: the first frame above guest RAM. */
  readonly deviceGfn: number;

  /**
   * Stores `value` at guest-physical address `gpa` before the guest starts (the domain
   * builder / boot loader writing the initial image). Throws a RangeError outside
   * guest memory or after {@link start}.
   */
  loadGuestPhysical32(gpa: number, value: number): void;
  /** Reads 4 bytes of guest-physical memory, bypassing the processor (for inspection). */
  peekGuestPhysical32(gpa: number): number;
  /** Copies guest frame `gfn` into `into` (1024 words): a device reading memory by DMA. */
  dmaRead(gfn: number, into: Uint32Array): void;
  /** Copies `from` (1024 words) into guest frame `gfn`: a device writing by DMA. */
  dmaWrite(gfn: number, from: Uint32Array): void;
  /**
   * Enters 64-bit paging with the top-level table at guest-physical `l4Gpa` and CR4 bits
   * `cr4` (PAE is forced on). Throws a RangeError if the processor refuses the state.
   */
  start(l4Gpa: number, cr4: number): void;
  /** Installs the guest's handler for `vector` (0..31). */
  setTrapHandler(vector: number, handler: TrapHandler): void;
  /**
   * One guest data access of `size` bytes at linear `va`, at CPL 3 (`user`) or 0. Writes
   * store (`hi`:`lo`); reads leave the value in `cpu.data` / `cpu.dataHi`. Exceptions go to
   * the guest's handlers, then the access is retried. Returns a `RUN_*` outcome.
   */
  access(
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo: number,
    hi: number,
    user: boolean,
  ): number;
  /**
   * {@link access} for an access the caller already tried on {@link cpu} at that CPL, which
   * faulted (the exception is in `cpu.exception`): the platform takes the exception and
   * retries, as access() does after its own first try. A caller with a hot loop of
   * accesses uses the vCPU directly and this on a fault, so that no fault is taken twice.
   */
  accessFaulted(
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo: number,
    hi: number,
    user: boolean,
  ): number;
  /**
   * Runs guest kernel text at `rip` (CPL 0, registers as the caller set them in
   * {@link interpreter}) until its RET. Exceptions go to the guest's handlers and the
   * instruction is retried. Returns a `RUN_*` outcome.
   */
  execute(rip: number): number;
  /** Ends the domain: nothing runs after, and {@link crashReason} holds `reason`. */
  crash(reason: string): void;
  /** The guest's devices (timer, keyboard, serial, PIC) and its virtual clock. */
  readonly board: PcBoard;
  /** Why the last {@link runGuest} stopped short (RUN_LIMIT, RUN_IDLE); "" otherwise. */
  readonly stopReason: string;
  /** The CPL the guest kernel's code runs at: 0, or 1 for a deprivileged kernel. */
  readonly guestKernelCpl: number;
  /**
   * Makes the linear range [`base`, `base + length`) the guest kernel's service range:
   * a call there runs `service` (see {@link GuestService}) instead of fetching.
   */
  setServices(base: number, length: number, service: GuestService): void;
  /**
   * The native kernel's TSS store of RSP0 (the stack the processor switches to on an
   * entry from user mode). A PV kernel uses stack_switch instead.
   */
  setTssRsp0(top: number): void;
  /** The address of the last page fault delivered to the guest (its CR2). */
  readonly guestCr2: number;
  /** A snapshot of what the guest believes about its processor. */
  guestCpuState(): GuestCpuState;
  /**
   * Runs the whole guest (user programs and kernel entry text) from the interpreter's
   * current state for at most `maxInstructions` instruction times: exceptions and
   * interrupts are delivered to the guest's own handlers (by the processor, or by the
   * hypervisor reflecting them), devices raise their interrupts as the virtual clock
   * reaches them, HLT waits for the next one. The clock counts the instructions the guest
   * retires at guest level (user code and the kernel's entry text, the same stream on
   * every platform but PV's); the kernel's C code (a service) and the routines it runs
   * take no virtual time, nor does the hypervisor. Returns RUN_DONE (a service asked to
   * stop), RUN_LIMIT, RUN_IDLE or RUN_CRASHED.
   */
  runGuest(maxInstructions: number): number;
  /**
   * Checks the platform's invariants (DESIGN.md 2-4: shadow soundness, write protection,
   * PV safety) and returns what is violated; absent where there is nothing to check.
   */
  checkInvariants?(): string[];
}
