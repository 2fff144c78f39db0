/**
 * The `pv` platform: a Xen-style paravirtual guest. The guest's page tables hold machine
 * frame numbers and the processor walks them directly (no shadow); the guest may read
 * them, but every change goes through a hypercall that Xen validates (`hypercalls/`):
 * each machine frame has an owner, a type (L1..L4 table, writable, ...) and counts, and
 * no frame can be a page table while it is mapped writable.
 *
 * What this platform does:
 * - The domain builder ({@link PvPlatform.start}): the kernel loaded its boot tables with
 *   guest-physical (GFN) entries; the builder converts them to machine frames, makes every
 *   table frame read-only wherever the boot tables map it (the kernel's direct map),
 *   validates and pins the top level, and loads CR3, as Xen's domain builder does.
 * - Faults: every exception reaches Xen first; it bounces it to the handler the guest
 *   registered (its trap table) with CR2 and the error code (`pv.bounce.pf`). There is
 *   no hidden fault and no emulation: writes to page tables are the guest's hypercalls.
 * - Hypercalls: {@link PvPlatform.hypercall} is the entry (RAX = number; RDI, RSI, RDX,
 *   R10, R8 = arguments; RAX = result).
 * - Privileged instructions: MOV to CR3 is emulated as Xen's priv-op emulation does
 *   (new_guest_cr3, with its validation); other CR writes and INVLPG raise #GP.
 * - The CPU side (issue 9), as Xen runs a 64-bit PV guest whose kernel text makes real
 *   hypercalls through the hypercall page (`syscall` in kernel mode):
 *   - SYSCALL from guest kernel mode is a hypercall ({@link PvPlatform.hypercall});
 *     HYPERVISOR_iret rewrites the vCPU's state (`hypercalls/iret.ts`). SYSCALL from
 *     user mode bounces to the registered syscall callback, or raises #UD without one.
 *   - Every exception the guest must see, INT n / INT3 (whose DPL Xen checks against the
 *     virtual trap table), and the event upcall reach the guest kernel through a bounce
 *     frame on its stack (`hypercalls/bounce_frame.ts`), counted `pv.bounce.*` and
 *     `pv.eventUpcall`. An exception with no trap-table entry crashes the domain.
 *   - Device interrupts are events: the timer is VIRQ_TIMER, the keyboard PIRQ 1; each
 *     sets its port pending in shared_info and, with events unmasked, bounces to the
 *     event callback. Masked events stay pending; every return from Xen to the guest
 *     (after a hypercall, an emulation, a bounce) checks for a deliverable upcall, as
 *     entry.S's test_all_events does.
 *   - SCHEDOP_block idles the vCPU until a device event (counted as idle time).
 *   - IN/OUT of the guest kernel are emulated (pv/emul-priv-op.c) when its virtual IOPL
 *     allows (PHYSDEVOP_set_iopl): on the domain's ports (`ioports`: the keyboard and
 *     COM1 by default) they reach the device, on others reads give all ones and writes
 *     are dropped; CLI/STI with a sufficient virtual IOPL are skipped (Xen leaves the
 *     upcall mask alone: "too dangerous"), else #GP; HLT, LIDT, LGDT, SYSRET and the
 *     kernel's own IRETQ are #GP, as for a kernel in ring 3.
 * - The device: its registers' machine frame sits above RAM; the domain has I/O-memory
 *   permission for exactly that frame (as `iomem=` in a domain's config), so the guest
 *   may map it (uncached) and reaches the device directly, with no exit; any other frame
 *   outside RAM is refused with -EPERM. The guest's P2M maps the device's GFN (just above
 *   RAM, as on every platform) to that frame.
 * - DMA reads and writes guest frames through the P2M; a DMA write into a frame in use as
 *   a page table (a grant mapping Xen would refuse) crashes the domain.
 *
 * Simplifications: a 64-bit PV kernel really runs in ring 3 with separate kernel and user
 * top levels (NEW_USER_BASEPTR), and Xen adjusts its entries (`adjust_guest_l1e`); this
 * lab keeps the kernel at CPL 0 with one top level per process, as on the other
 * platforms. Xen's own mappings in the reserved L4 slots 256..271 are left empty (the
 * hypervisor lives outside the simulated address space), but the slots stay reserved.
 * CR4.PCIDE is Xen's, not the guest's: the guest's PCIDs are ignored and every CR3 load
 * flushes. Nothing is preempted (no continuations). One vCPU. Guest kernel mode is CPL 0
 * and user mode CPL 3 (Xen's TF_kernel_mode); there is no separate user top level, so
 * iret to user mode does not check for one. Each instruction Xen handles for the guest
 * (a hypercall, an emulation, a bounced INT) takes one instruction time of the virtual
 * clock, as the instruction itself would natively.
 *
 * @module
 */

import { canonicalToLinear, formatLinear, linearHigh32, PAGE_SIZE } from "../x86/address.ts";
import {
  FORM_IMM,
  OP_CLI,
  OP_HLT,
  OP_IN,
  OP_INT,
  OP_INT3,
  OP_INVLPG,
  OP_IRET,
  OP_LGDT,
  OP_LIDT,
  OP_MOV_FROM_CR,
  OP_MOV_TO_CR,
  OP_OUT,
  OP_STI,
  OP_SYSCALL,
  OP_SYSRET,
  OP_WBINVD,
} from "../x86/decode.ts";
import { Interpreter, STEP_FAULT, STEP_OK } from "../x86/interpreter.ts";
import { CR4_PCIDE } from "../x86/paging_control.ts";
import { PTE_PAGE_SIZE, PTE_PRESENT, PTE_WRITABLE, pteAddress } from "../x86/pte.ts";
import { Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu, VECTOR_GP, VECTOR_PF, VECTOR_UD } from "../x86/vcpu.ts";
import { FrameTable } from "../memory/frame_table.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import { P2m } from "../memory/p2m.ts";
import { PageTypes, PGT_L4 } from "../memory/page_types.ts";
import { asDomainId, type DomainId, DOMID_XEN } from "../memory/types.ts";
import {
  CALLBACKF_MASK_EVENTS,
  CALLBACKTYPE_EVENT,
  CALLBACKTYPE_SYSCALL,
  formatHypercallResult,
  HYPERVISOR_IRET,
  TI_DPL_MASK,
  TI_MASK_EVENTS,
  VIRQ_TIMER,
  XEN_EINVAL,
} from "../../hypercalls/abi.ts";
import {
  CpuUserRegs,
  createBounceFrame,
  TBF_EXCEPTION,
  TBF_EXCEPTION_ERRCODE,
  TBF_INTERRUPT,
} from "../../hypercalls/bounce_frame.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { doHypercall } from "../../hypercalls/do_hypercall.ts";
import { HypercallArgs } from "../../hypercalls/hypercall_table.ts";
import { doIret } from "../../hypercalls/iret.ts";
import { getPageAndType, newGuestCr3, pinTable } from "../../hypercalls/page_refs.ts";
import {
  HC_TRAPS,
  PV_BOUNCE_OTHER,
  PV_BOUNCE_PF,
  PV_BOUNCE_SYSCALL,
  PV_EMULATED_PRIV_OP,
  PV_EVENT_DROPPED,
  PV_EVENT_SENT,
  PV_EVENT_UPCALL,
  PV_IO_DENIED,
  PV_PIN,
  PvDomain,
} from "../../hypercalls/pv_domain.ts";
import { relinquishDomain } from "../../hypercalls/relinquish.ts";
import { BasePlatform, HANDLED_COMPLETE } from "./base_platform.ts";
import { enterLongMode, resetPagingControl } from "./native.ts";
import { VECTOR_KEYBOARD, VECTOR_TIMER } from "./pc_board.ts";
import { type GuestCpuState, type PlatformName, RUN_CRASHED, RUN_IDLE } from "./platform.ts";

/** The PV guest's domain id. */
export const PV_DOMAIN_ID: DomainId = asDomainId(1);
/** The id of the other domain on the machine (whose frames a hostile guest may name). */
export const PV_NEIGHBOUR_ID: DomainId = asDomainId(2);
/** Machine frames Xen keeps for itself at the bottom of memory (its heap, the M2P ...). */
export const XEN_RESERVED_FRAMES = 64;
/**
 * The I/O ports the domain may use directly, as `ioports=` in its config: the 8042
 * keyboard's data (0x60) and status (0x64) ports and COM1 (0x3f8..0x3ff). Not the PIC:
 * a PV guest acknowledges its interrupts with PHYSDEVOP_eoi.
 */
export const PV_DEFAULT_IOPORTS: readonly { first: number; count: number }[] = [
  { first: 0x60, count: 1 },
  { first: 0x64, count: 1 },
  { first: 0x3f8, count: 8 },
];
/** The keyboard's PIRQ (ISA IRQ 1), which the domain may bind (`irqs=` in its config). */
export const PV_KEYBOARD_PIRQ = 1;

// Vectors whose exceptions carry an error code (Xen's X86_EXC_HAVE_EC): #DF, #TS, #NP,
// #SS, #GP, #PF, #AC, #CP, #VC, #SX.
const HAVE_ERROR_CODE = new Uint8Array(32);
for (const v of [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]) HAVE_ERROR_CODE[v] = 1;
const RFLAGS_DF = 0x400;

// RSP as a 48-bit linear value (-1 when not canonical).
function rspOf(it: Interpreter): number {
  return canonicalToLinear(it.regs[9]!, it.regs[8]!);
}

/** Options of {@link PvPlatform}. */
export interface PvPlatformOptions {
  /** Guest (pseudo-physical) memory in 4 KiB frames. */
  frames: number;
  /** Counters; a new set when omitted. */
  stats?: Stats;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Seed that scatters the domain's frames over machine memory; default 1. */
  scatterSeed?: number;
  /** Xen's pv-linear-pt: allow same-level (linear) page tables; default true. */
  linearPageTables?: boolean;
  /** Frames of the other domain on the machine; default 16. */
  neighbourFrames?: number;
  /** Limit of a frame's general reference count (Xen's count width); default 2^31 - 1. */
  maxRefCount?: number;
  /** Limit of a frame's type count; default 2^31 - 1. */
  maxTypeCount?: number;
  /** I/O port ranges the domain may access; default {@link PV_DEFAULT_IOPORTS}. */
  ioPorts?: readonly { first: number; count: number }[];
  /** PIRQs the domain may bind; default [{@link PV_KEYBOARD_PIRQ}]. */
  pirqs?: readonly number[];
}

/** Where this lab puts Xen's IDT (linear form of 0xffff_82d0_8040_0000, inside Xen's image). */
export const XEN_IDT_BASE: number = 0x82d0_8040_0000;
/** Where this lab puts Xen's GDT (one page above its IDT). */
export const XEN_GDT_BASE: number = 0x82d0_8040_1000;

/**
 * A paravirtual guest under Xen.
 *
 * @example Boot the guest kernel with the PV paging-ops backend (see `createLab`)
 * ```ts
 * import { PvPlatform } from "./pv.ts";
 * import { GuestKernel } from "../guest/kernel.ts";
 * import { PvPagingOps } from "../guest/pv_paging_ops.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 4096 });
 * const kernel = new GuestKernel(platform, {
 *   pagingOps: (code) => new PvPagingOps(code, platform),
 * });
 * kernel.boot();
 * const pid = kernel.spawn();
 * kernel.writeU32(pid, 0x600000, 7);
 * assert.equal(kernel.readU32(pid, 0x600000), 7);
 * assert.equal(platform.stats.get("pv.bounce.pf"), 1); // the demand-zero fault
 * assert.ok(platform.stats.get("hypercall.mmu_update") > 0);
 * ```
 */
export class PvPlatform extends BasePlatform {
  /** "pv". */
  readonly name: PlatformName = "pv";
  /** Machine memory. */
  readonly memory: MachineMemory;
  /** The machine's frame table. */
  readonly frameTable: FrameTable;
  /** Types and counts of every machine frame. */
  readonly pageTypes: PageTypes;
  /** The hypervisor's P2M of the domain (RAM; the device's GFN is MMIO). */
  readonly p2m: P2m;
  /** The machine-to-physical table (Xen's; read-only to the guest). -1: no entry. */
  readonly m2p: Float64Array;
  /**
   * The guest's P2M list (Linux's p2m, from the domain builder's mfn_list): the machine
   * frame of each GFN, the device's included.
   */
  readonly p2mList: Int32Array;
  /** The device's machine frame (I/O memory the domain may map). */
  readonly deviceMfn: number;
  /** The hypervisor's state of the domain. */
  readonly domain: PvDomain;
  /** The frames of the other domain on the machine. */
  readonly neighbourFrames: readonly number[];
  readonly #args = new HypercallArgs();
  // The guest state at the last entry into Xen, for bounce frames (cpu_user_regs).
  readonly #entryRegs = new CpuUserRegs();
  readonly #raiseEvent = (vector: number): void => this.raiseGuestInterrupt(vector);
  #started = false;

  /** A domain of `options.frames` frames on a machine with room for Xen and a neighbour. */
  constructor(options: PvPlatformOptions) {
    const stats = options.stats ?? new Stats();
    const frames = options.frames;
    const neighbourCount = options.neighbourFrames ?? 16;
    if (!Number.isInteger(neighbourCount) || neighbourCount < 0) {
      throw new RangeError(`Cannot give the neighbour ${neighbourCount} frames`);
    }
    const machineFrames = XEN_RESERVED_FRAMES + frames + neighbourCount + 64;
    const memory = new MachineMemory({ frames: machineFrames, stats });
    const frameTable = new FrameTable({
      frames: machineFrames,
      stats: new Stats(), // the hypervisor's allocator, not the guest's work
      scatterSeed: options.scatterSeed ?? 1,
      reserved: XEN_RESERVED_FRAMES,
    });
    const typeOptions: { maxCount?: number; maxTypeCount?: number } = {};
    if (options.maxRefCount !== undefined) typeOptions.maxCount = options.maxRefCount;
    if (options.maxTypeCount !== undefined) typeOptions.maxTypeCount = options.maxTypeCount;
    const pageTypes = new PageTypes(frameTable, typeOptions);
    const m2p = new Float64Array(machineFrames).fill(-1);
    for (let mfn = 0; mfn < XEN_RESERVED_FRAMES; mfn++) {
      frameTable.owner[mfn] = DOMID_XEN;
      pageTypes.assign(mfn);
    }
    // The domain's RAM, scattered; its device's GFN sits right above RAM, as natively.
    const p2m = P2m.populate(frameTable, PV_DOMAIN_ID, frames + 1, [
      { firstGfn: frames, frames: 1 },
    ]);
    const deviceMfn = machineFrames; // the first frame above installed memory
    const p2mList = new Int32Array(frames + 1);
    for (let gfn = 0; gfn < frames; gfn++) {
      const mfn = p2m.gfnToMfn(gfn);
      p2mList[gfn] = mfn;
      m2p[mfn] = gfn;
      pageTypes.assign(mfn);
    }
    p2mList[frames] = deviceMfn;
    const neighbour: number[] = [];
    for (let i = 0; i < neighbourCount; i++) {
      const mfn = frameTable.allocate(PV_NEIGHBOUR_ID);
      pageTypes.assign(mfn);
      m2p[mfn] = i;
      neighbour.push(mfn);
    }
    const vcpuOptions: { tlb?: TlbConfig } = {};
    if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
    const cpu = new Vcpu(memory, resetPagingControl(), stats, vcpuOptions);
    const interpreter = new Interpreter(cpu);
    super(stats, cpu, interpreter, frames);
    // The processor's IDTR and GDTR are Xen's own tables, in Xen's image (XEN_VIRT_START
    // 0xffff82d080000000, xen/arch/x86/include/asm/config.h). A PV guest never loads
    // them (set_trap_table, not LIDT) and SIDT/SGDT do not trap without CR4.UMIP, so a PV
    // program that runs SIDT sees Xen's table, as on real hardware.
    interpreter.idtrBase = XEN_IDT_BASE;
    interpreter.idtrLimit = 256 * 16 - 1;
    interpreter.gdtrBase = XEN_GDT_BASE;
    interpreter.gdtrLimit = 0xfff;
    // A kernel in ring 3 would fault on these; Xen emulates what it allows. SYSCALL is a
    // hypercall (kernel mode) or a system call (user mode); INT n / INT3 go through
    // Xen's IDT, which checks the virtual trap table; IRETQ is intercepted in user mode
    // too and executed there as the processor would (a ring-3 to ring-3 return).
    for (
      const op of [
        OP_MOV_TO_CR,
        OP_MOV_FROM_CR,
        OP_INVLPG,
        OP_SYSCALL,
        OP_SYSRET,
        OP_INT,
        OP_INT3,
        OP_IRET,
        OP_IN,
        OP_OUT,
        OP_CLI,
        OP_STI,
        OP_HLT,
        OP_LIDT,
        OP_LGDT,
        OP_WBINVD,
      ]
    ) interpreter.intercepts[op] = 1;
    memory.attachIo(deviceMfn, 1, this.device);
    this.memory = memory;
    this.frameTable = frameTable;
    this.pageTypes = pageTypes;
    this.p2m = p2m;
    this.m2p = m2p;
    this.p2mList = p2mList;
    this.deviceMfn = deviceMfn;
    this.neighbourFrames = neighbour;
    const domainOptions: ConstructorParameters<typeof PvDomain>[0] = {
      id: PV_DOMAIN_ID,
      memory,
      frames: frameTable,
      types: pageTypes,
      m2p,
      cpu,
      stats,
      ioFrames: [{ first: deviceMfn, count: 1 }],
      otherDomains: [PV_NEIGHBOUR_ID],
      regs: interpreter,
      ioPorts: options.ioPorts ?? PV_DEFAULT_IOPORTS,
      pirqs: options.pirqs ?? [PV_KEYBOARD_PIRQ],
    };
    if (options.linearPageTables !== undefined) {
      domainOptions.linearPageTables = options.linearPageTables;
    }
    this.domain = new PvDomain(domainOptions);
  }

  /**
   * The hypercall entry: the number in RAX, arguments in RDI, RSI, RDX, R10, R8 of the
   * vCPU's registers; the result goes to RAX and is returned (0, a count, or -errno).
   * The guest kernel makes it at CPL 0. A number of 64 or more (any bit of RAX's high
   * half included) is -ENOSYS. HYPERVISOR_iret (23) instead restores the state its frame
   * describes, RAX included, and returns 0 (or -EINVAL when it crashed the domain).
   * A caller in TypeScript cannot sleep: SCHEDOP_block returns at once (the vCPU is not
   * left blocked). After a crash it returns -EINVAL and does nothing.
   */
  hypercall(): number {
    const rc = this.#dispatch();
    this.domain.vcpu.blocked = false;
    return rc;
  }

  // The hypercall in RAX with the argument registers; see hypercall().
  #dispatch(): number {
    const interpreter = this.interpreter;
    if (this.crashReason !== "") return -XEN_EINVAL;
    const args = this.#args;
    const regs = interpreter.regs;
    if (regs[0] === HYPERVISOR_IRET && regs[1] === 0) {
      return this.#iret() === RUN_CRASHED ? -XEN_EINVAL : 0;
    }
    // RDI 7, RSI 6, RDX 2, R10 10, R8 8, R9 9.
    args.set(0, regs[14]!, regs[15]!);
    args.set(1, regs[12]!, regs[13]!);
    args.set(2, regs[4]!, regs[5]!);
    args.set(3, regs[20]!, regs[21]!);
    args.set(4, regs[16]!, regs[17]!);
    args.set(5, regs[18]!, regs[19]!);
    this.cpu.ctl.cpl = 0;
    const rc = doHypercall(this.domain, regs[1] === 0 ? regs[0]! : 0xffffffff, args);
    regs[0] = rc >>> 0;
    regs[1] = rc < 0 ? 0xffffffff : 0;
    return rc;
  }

  /** Stores into guest memory (through the P2M) before {@link start}. */
  loadGuestPhysical32(gpa: number, value: number): void {
    if (this.#started) throw new RangeError("Cannot load guest memory: the guest has started");
    this.memory.write32(this.#gpaToMa(gpa), value);
  }

  /** Reads guest-physical memory through the P2M. */
  peekGuestPhysical32(gpa: number): number {
    return this.memory.read32(this.#gpaToMa(gpa));
  }

  /** DMA out of guest frame `gfn`. */
  dmaRead(gfn: number, into: Uint32Array): void {
    const words = this.memory.hostFrame(this.#mfnOf(gfn), false);
    if (words === undefined) into.fill(0, 0, PAGE_SIZE / 4);
    else into.set(words);
  }

  /**
   * DMA into guest frame `gfn`. The device's backend would need a writable grant mapping
   * of the frame, which Xen refuses for a page table: such a write crashes the domain.
   */
  dmaWrite(gfn: number, from: Uint32Array): void {
    const mfn = this.#mfnOf(gfn);
    if (this.pageTypes.isPageTable(mfn)) {
      this.crash(`DMA into guest frame ${gfn}: machine frame ${mfn} is a page table`);
      return;
    }
    this.memory.hostFrame(mfn, true)!.set(from.subarray(0, PAGE_SIZE / 4));
  }

  /**
   * The domain builder: converts the boot tables under `l4Gpa` from GFNs to MFNs, makes
   * every table frame read-only where the boot tables map it, validates and pins the top
   * level, and enters 64-bit paging with it in CR3 (CR4 = PAE | `cr4`, without PCIDE,
   * which is Xen's). Throws a RangeError for tables Xen would refuse (a superpage, a frame
   * outside the domain, a failed validation).
   */
  start(l4Gpa: number, cr4: number): void {
    if (this.#started) throw new RangeError("Cannot start the guest twice");
    if (!Number.isInteger(l4Gpa) || l4Gpa % PAGE_SIZE !== 0) {
      throw new RangeError(`Cannot start the guest: top level ${l4Gpa} is not a frame`);
    }
    const l4Mfn = this.#mfnOf(l4Gpa / PAGE_SIZE);
    const tables = this.#convertBootTables(l4Mfn);
    this.#protectBootTables(tables);
    const d = this.domain;
    let rc = pinTable(d, l4Mfn, PGT_L4, d.id);
    if (rc === 0) {
      this.counts[PV_PIN]++;
      rc = getPageAndType(d, l4Mfn, PGT_L4);
    }
    if (rc !== 0) {
      throw new RangeError(
        `Cannot start the guest: Xen refused its boot tables (${formatHypercallResult(rc)})`,
      );
    }
    d.guestTable = l4Mfn;
    enterLongMode(this.cpu, l4Mfn * PAGE_SIZE, cr4 & ~CR4_PCIDE);
    this.#started = true;
  }

  /** Every exception goes to Xen first, which bounces it to the guest's handler. */
  protected onException(_inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    this.counts[e.vector === VECTOR_PF ? PV_BOUNCE_PF : PV_BOUNCE_OTHER]++;
    this.stats.trace?.(
      e.vector === VECTOR_PF ? "pv.bounce.pf" : "pv.bounce.other",
      e.cr2,
      e.errorCode,
    );
    return this.deliverToGuest(fromUser, e.vector, e.errorCode, e.cr2);
  }

  /**
   * An instruction Xen handles for the guest (see the module doc). MOV to CR3 is
   * new_guest_cr3 (the operand is a machine address), MOV from CR reads the hardware
   * value; SYSCALL, INT n, INT3, IN, OUT, CLI, STI as described there; WBINVD is ignored
   * (a domain without cache-flush permission, as _wbinvd); HLT, LIDT, LGDT, SYSRET, the
   * kernel's IRETQ, other CR writes and INVLPG are a #GP for the guest, as in ring 3.
   */
  protected override onIntercept(): number {
    const interpreter = this.interpreter;
    const d = interpreter.decoded;
    // Xen's handling stands for the instruction's own time on the virtual clock.
    if (this.isGuestLevel) this.board.now++;
    switch (d.op) {
      case OP_SYSCALL:
        return this.cpu.ctl.cpl === 3 ? this.#userSyscall() : this.#hypercallFromGuest();
      case OP_INT:
        return this.#softwareInterrupt(d.imm & 0xff, false);
      case OP_INT3:
        return this.#softwareInterrupt(3, true);
      case OP_IN:
      case OP_OUT:
        return this.#emulatePortIo(d.op === OP_IN);
      case OP_CLI:
      case OP_STI:
        return this.#emulateInterruptFlag(d.op === OP_CLI);
      case OP_IRET:
        return this.cpu.ctl.cpl === 3 ? this.#userIret() : this.#bounceException(VECTOR_GP, 0);
      case OP_WBINVD:
        interpreter.skip();
        return this.#returnToGuest();
      case OP_HLT:
      case OP_LIDT:
      case OP_LGDT:
      case OP_SYSRET:
        return this.#bounceException(VECTOR_GP, 0);
    }
    if (d.op === OP_MOV_TO_CR && d.crRegister === 3) {
      const lo = interpreter.regLo(d.rm);
      const hi = interpreter.regHi(d.rm);
      const mfn = (hi & 0xfffff) * 2 ** 20 + (lo >>> 12);
      if ((hi & 0x7ff00000) !== 0 || newGuestCr3(this.domain, mfn) !== 0) {
        return this.#bounceException(VECTOR_GP, 0);
      }
      interpreter.skip();
      return this.#returnToGuest();
    }
    if (d.op === OP_MOV_FROM_CR) {
      const ctl = this.cpu.ctl;
      const cr = d.crRegister;
      const value = cr === 0
        ? ctl.cr0
        : cr === 3
        ? ctl.cr3
        : cr === 4
        ? ctl.cr4
        : cr === 2
        ? this.guestCr2 // read_cr: the vCPU's ctrlreg[2], the last #PF bounced
        : interpreter.cr8;
      interpreter.setReg(d.rm, value >>> 0, Math.floor(value / 2 ** 32) >>> 0);
      interpreter.skip();
      return this.#returnToGuest();
    }
    return this.#bounceException(VECTOR_GP, 0);
  }

  /**
   * pv_inject_event (pv/traps.c) at guest level: the trap table's entry for `vector`,
   * with the error code when the vector has one, CR2 into vcpu_info.arch.cr2 for a #PF,
   * events masked when the entry asks (TI_GET_IF), bounced (create_bounce_frame). No
   * entry: the domain crashes (Xen's null trap bounce ends in domain_crash_synchronous).
   */
  protected override injectException(vector: number, errorCode: number, cr2: number): number {
    const it = this.interpreter;
    const v = this.domain.vcpu;
    const address = v.trapAddress[vector]!;
    if (address === 0) {
      return this.crashWith(
        `unhandled trap: vector ${vector} (error code ${errorCode}, cr2 ${formatLinear(cr2)}) at ${
          formatLinear(it.rip)
        } has no handler in the trap table (pv_inject_event)`,
      );
    }
    let flags = TBF_EXCEPTION;
    let code = 0;
    if (vector < 32 && HAVE_ERROR_CODE[vector] === 1) {
      flags |= TBF_EXCEPTION_ERRCODE;
      code = errorCode >>> 0;
    }
    if (vector === VECTOR_PF) {
      v.writeCr2(cr2); // arch_set_cr2
      this.setGuestCr2(cr2);
    }
    if ((v.trapFlags[vector]! & TI_MASK_EVENTS) !== 0) flags |= TBF_INTERRUPT;
    this.#entryRegs.capture(it, this.cpu.ctl.cpl);
    const reason = createBounceFrame(this.domain, this.#entryRegs, address, flags, code);
    if (reason !== "") return this.crashWith(`vector ${vector}: ${reason}`);
    this.stats.trace?.("trap.delivered", address, vector); // the frame is on the guest stack
    return this.#returnToGuest();
  }

  /**
   * A device interrupt as Xen turns it into an event: the timer fires VIRQ_TIMER, the
   * keyboard PIRQ 1 (send_guest_vcpu_virq / send_guest_pirq). The bound port is set
   * pending (evtchn_2l_set_pending), the vCPU woken if it blocked, and with events
   * unmasked the upcall is delivered now. Unbound sources are dropped (counted).
   */
  protected override raiseGuestInterrupt(vector: number): void {
    if (this.crashReason !== "") return;
    const v = this.domain.vcpu;
    const port = vector === VECTOR_TIMER
      ? v.virqToPort[VIRQ_TIMER]!
      : vector === VECTOR_KEYBOARD
      ? v.pirqToPort[PV_KEYBOARD_PIRQ]!
      : 0;
    if (port <= 0) {
      this.counts[PV_EVENT_DROPPED]++;
      this.stats.trace?.("pv.eventDropped", 0, vector);
      return;
    }
    this.counts[PV_EVENT_SENT]++;
    if (v.setEventPending(port)) v.blocked = false; // vcpu_kick
    if (!v.blocked) this.#returnToGuest();
  }

  /**
   * What the guest believes about its processor, kept by Xen: kernel or user mode, events
   * enabled (vcpu_info's upcall mask clear), the trap table, kernel_sp, the top level in
   * CR3 (a machine address), the last CR2, and the pending ports of the timer and the
   * keyboard as their vectors.
   */
  override guestCpuState(): GuestCpuState {
    const v = this.domain.vcpu;
    const pending: number[] = [];
    const timer = v.virqToPort[VIRQ_TIMER]!;
    const keyboard = v.pirqToPort[PV_KEYBOARD_PIRQ]!;
    if (timer > 0 && v.isPortPending(timer)) pending.push(VECTOR_TIMER);
    if (keyboard > 0 && v.isPortPending(keyboard)) pending.push(VECTOR_KEYBOARD);
    return {
      kernelMode: this.cpu.ctl.cpl !== 3,
      interruptsEnabled: v.upcallMask === 0,
      idtBase: v.trapTableVa,
      kernelStack: v.kernelSp,
      cr3: this.cpu.ctl.cr3,
      cr2: this.guestCr2,
      pending,
      keptIn: "xen-vcpu",
    };
  }

  // SYSCALL in guest kernel mode: a hypercall. The vCPU returns after the SYSCALL with
  // RCX = that address and R11 = RFLAGS (Xen's SYSRET exit); iret rewrites everything.
  #hypercallFromGuest(): number {
    const it = this.interpreter;
    it.skip();
    if (it.regs[0] === HYPERVISOR_IRET && it.regs[1] === 0) return this.#iret();
    const next = it.rip;
    this.#dispatch();
    if (this.crashReason !== "") return RUN_CRASHED;
    it.setReg(1, next >>> 0, linearHigh32(next));
    it.setReg(11, it.rflags >>> 0, 0);
    const v = this.domain.vcpu;
    if (v.blocked) {
      if (!this.isGuestLevel) v.blocked = false; // a kernel routine cannot sleep
      else return this.#block();
    }
    return this.#returnToGuest();
  }

  // HYPERVISOR_iret, then the exit path's event check.
  #iret(): number {
    this.counts[HC_TRAPS]++;
    this.stats.trace?.("hypercall.traps", rspOf(this.interpreter), HYPERVISOR_IRET);
    const reason = doIret(this.domain, this.#entryRegs);
    if (reason !== "") return this.crashWith(reason);
    return this.#returnToGuest();
  }

  // SCHEDOP_block left the vCPU blocked: idle until a device event wakes it (the upcall
  // is delivered as the event is raised). RUN_IDLE when no event will ever come: the
  // block then ends (a spurious wake-up, which the guest's idle loop tolerates).
  #block(): number {
    const v = this.domain.vcpu;
    while (v.blocked) {
      const outcome = this.idleUntilEvent();
      if (outcome === RUN_IDLE) {
        v.blocked = false;
        return RUN_IDLE;
      }
      this.board.fireDue(this.#raiseEvent);
      if (this.crashReason !== "") return RUN_CRASHED;
    }
    return HANDLED_COMPLETE;
  }

  // SYSCALL in user mode: the registered syscall callback (switch_to_kernel), or #UD at
  // the SYSCALL when there is none (Xen since 2020: "Inject #UD for missing SYSCALL
  // callbacks"). The processor's SYSCALL already put RIP in RCX and RFLAGS in R11.
  #userSyscall(): number {
    const it = this.interpreter;
    const next = it.rip + it.decoded.length;
    it.setReg(1, next >>> 0, linearHigh32(next));
    it.setReg(11, it.rflags >>> 0, 0);
    const v = this.domain.vcpu;
    const callback = v.callbacks[CALLBACKTYPE_SYSCALL]!;
    if (callback === 0) return this.#bounceException(VECTOR_UD, 0);
    if (!this.isGuestLevel) return this.crashWith("SYSCALL from user mode in a kernel routine");
    const at = it.rip;
    it.skip();
    this.#entryRegs.capture(it, 3);
    const flags = (v.callbackFlags[CALLBACKTYPE_SYSCALL]! & CALLBACKF_MASK_EVENTS) !== 0
      ? TBF_INTERRUPT
      : 0;
    const reason = createBounceFrame(this.domain, this.#entryRegs, callback, flags, -1);
    if (reason !== "") return this.crashWith(`syscall: ${reason}`);
    it.rflags = (it.rflags & ~RFLAGS_DF) >>> 0;
    this.counts[PV_BOUNCE_SYSCALL]++;
    this.stats.trace?.("pv.bounce.syscall", at, 0);
    return this.#returnToGuest();
  }

  // INT n / INT3. The real IDT is Xen's: INT n faults there unless its gate is DPL 3,
  // and Xen's #GP handler checks the guest's virtual DPL (permit_softint: at least 1 in
  // kernel mode, 3 in user mode); permitted, it bounces the vector with RIP past the
  // INT, else the guest gets #GP(vector * 8 + 2). INT3 has its own DPL-3 gate and no
  // virtual DPL check ("The DPL specified by the guest OS for these vectors is NOT
  // CHECKED!!", traps.c).
  #softwareInterrupt(vector: number, isInt3: boolean): number {
    const it = this.interpreter;
    const v = this.domain.vcpu;
    if (!isInt3) {
      const needed = this.cpu.ctl.cpl === 3 ? 3 : 1;
      if ((v.trapFlags[vector]! & TI_DPL_MASK) < needed || v.trapAddress[vector] === 0) {
        return this.#bounceException(VECTOR_GP, vector * 8 + 2);
      }
    }
    const address = v.trapAddress[vector]!;
    if (address === 0) {
      return this.crashWith(
        `unhandled trap: int3 at ${formatLinear(it.rip)} has no handler in the trap table`,
      );
    }
    if (!this.isGuestLevel) {
      return this.crashWith(`int ${vector} in a kernel routine at ${formatLinear(it.rip)}`);
    }
    const from = it.rip;
    it.skip();
    this.#entryRegs.capture(it, this.cpu.ctl.cpl);
    const flags = TBF_EXCEPTION |
      ((v.trapFlags[vector]! & TI_MASK_EVENTS) !== 0 ? TBF_INTERRUPT : 0);
    const reason = createBounceFrame(this.domain, this.#entryRegs, address, flags, -1);
    if (reason !== "") return this.crashWith(`int ${vector}: ${reason}`);
    const counter = vector === 0x80 ? PV_BOUNCE_SYSCALL : PV_BOUNCE_OTHER;
    this.counts[counter]++;
    this.stats.trace?.(vector === 0x80 ? "pv.bounce.syscall" : "pv.bounce.other", from, vector);
    return this.#returnToGuest();
  }

  // IN / OUT from the guest kernel (pv/emul-priv-op.c): guest_io_okay (the virtual IOPL
  // against the guest's virtual CPL: 1 in kernel mode) or #GP; then admin_io_okay (the
  // domain's ioports) reaches the device, else guest_io_read gives all ones and
  // guest_io_write drops the value.
  #emulatePortIo(isIn: boolean): number {
    const it = this.interpreter;
    const d = it.decoded;
    const virtualCpl = this.cpu.ctl.cpl === 3 ? 3 : 1;
    if (this.domain.vcpu.iopl < virtualCpl) return this.#bounceException(VECTOR_GP, 0);
    const port = d.form === FORM_IMM ? d.imm & 0xff : it.regs[4]! & 0xffff;
    const size = d.operandSize;
    const mask = size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
    const permitted = this.domain.isIoPortPermitted(port, size);
    if (!permitted) this.counts[PV_IO_DENIED]++;
    if (isIn) {
      const value = permitted ? (this.board.read(port, size) & mask) >>> 0 : mask;
      const regs = it.regs;
      if (size === 4) {
        regs[0] = value;
        regs[1] = 0;
      } else regs[0] = ((regs[0]! & ~mask) | value) >>> 0;
    } else if (permitted) {
      this.board.write(port, size, (it.regs[0]! & mask) >>> 0);
    }
    this.counts[PV_EMULATED_PRIV_OP]++;
    this.stats.trace?.("pv.emulatedPrivOp", it.rip, port);
    it.skip();
    return this.#returnToGuest();
  }

  // CLI / STI from the guest kernel: with the virtual IOPL allowing it Xen's validate()
  // accepts them and does nothing (the upcall mask update is commented out in
  // emul-priv-op.c: "too dangerous"); else #GP.
  #emulateInterruptFlag(_isCli: boolean): number {
    const it = this.interpreter;
    const virtualCpl = this.cpu.ctl.cpl === 3 ? 3 : 1;
    if (this.domain.vcpu.iopl < virtualCpl) return this.#bounceException(VECTOR_GP, 0);
    this.counts[PV_EMULATED_PRIV_OP]++;
    this.stats.trace?.("pv.emulatedPrivOp", it.rip, -1);
    it.skip();
    return this.#returnToGuest();
  }

  // IRETQ in user mode: the processor runs it without Xen (ring 3 to ring 3); a return
  // to a more privileged CS is the processor's #GP.
  #userIret(): number {
    const it = this.interpreter;
    it.intercepts[OP_IRET] = 0;
    const step = it.step();
    it.intercepts[OP_IRET] = 1;
    if (step === STEP_OK) return HANDLED_COMPLETE;
    if (step === STEP_FAULT) return this.onException(true, this.cpu.ctl.cpl === 3);
    return this.crashWith(`iretq at ${formatLinear(it.rip)}: interpreter result ${step}`);
  }

  // An exception Xen passes on to the guest (counted as a bounce), at the instruction.
  #bounceException(vector: number, errorCode: number): number {
    const isPf = vector === VECTOR_PF;
    this.counts[isPf ? PV_BOUNCE_PF : PV_BOUNCE_OTHER]++;
    this.stats.trace?.(isPf ? "pv.bounce.pf" : "pv.bounce.other", this.interpreter.rip, errorCode);
    return this.deliverToGuest(this.cpu.ctl.cpl === 3, vector, errorCode, 0);
  }

  // test_all_events on the way back to the guest: an upcall pending and unmasked is
  // bounced to the event callback (at guest level only: a kernel routine run from
  // TypeScript has no guest context to interrupt; the upcall then waits for the next
  // return to the guest).
  #returnToGuest(): number {
    if (!this.isGuestLevel || this.crashReason !== "") {
      return this.crashReason !== "" ? RUN_CRASHED : HANDLED_COMPLETE;
    }
    const v = this.domain.vcpu;
    if (!v.eventsNeedDelivery()) return HANDLED_COMPLETE;
    const callback = v.callbacks[CALLBACKTYPE_EVENT]!;
    this.#entryRegs.capture(this.interpreter, this.cpu.ctl.cpl);
    const reason = createBounceFrame(this.domain, this.#entryRegs, callback, TBF_INTERRUPT, -1);
    if (reason !== "") return this.crashWith(`event upcall: ${reason}`);
    this.counts[PV_EVENT_UPCALL]++;
    this.stats.trace?.("pv.eventUpcall", callback, 0);
    return HANDLED_COMPLETE;
  }

  /** Invariant 4 (PV safety), recounted from scratch: the violations, or none. */
  checkInvariants(): string[] {
    return checkPvSafety(this.domain);
  }

  /**
   * Domain death: crashes the domain (nothing runs after), releases every reference it
   * holds and frees its frames (Xen's domain_relinquish_resources). Returns the frames
   * freed and those left referenced (0 when the counts were right).
   */
  destroyDomain(): { freed: number; leaked: number } {
    this.crash("domain destroyed");
    return relinquishDomain(this.domain);
  }

  // Converts every table reachable from l4Mfn in place (GFN -> MFN in present entries);
  // returns the table frames found, by level (index 4: the L4s ...).
  #convertBootTables(l4Mfn: number): number[][] {
    const memory = this.memory;
    const byLevel: number[][] = [[], [], [], [], []];
    const seen = new Map<number, number>();
    const visit = (mfn: number, level: number) => {
      const known = seen.get(mfn);
      if (known !== undefined) {
        if (known !== level) {
          throw new RangeError(
            `Cannot start the guest: frame ${mfn} is a table of levels ${known} and ${level}`,
          );
        }
        return;
      }
      seen.set(mfn, level);
      byLevel[level]!.push(mfn);
      for (let i = 0; i < 512; i++) {
        const entry = mfn * PAGE_SIZE + i * 8;
        const lo = memory.read32(entry);
        if ((lo & PTE_PRESENT) === 0) continue;
        if (level > 1 && (lo & PTE_PAGE_SIZE) !== 0) {
          throw new RangeError(
            `Cannot start the guest: a level-${level} boot entry maps a superpage, ` +
              "which Xen refuses for PV guests (use 4 KiB direct-map pages)",
          );
        }
        const hi = memory.read32(entry + 4);
        const gfn = pteAddress(lo, hi) / PAGE_SIZE;
        const mfnOfEntry = level === 1 && gfn === this.deviceGfn
          ? this.deviceMfn
          : this.#mfnOf(gfn);
        memory.write32(entry, ((mfnOfEntry % 2 ** 20) * PAGE_SIZE + (lo & 0xfff)) >>> 0);
        memory.write32(entry + 4, ((hi & 0xfff00000) | Math.floor(mfnOfEntry / 2 ** 20)) >>> 0);
        if (level > 1) visit(mfnOfEntry, level - 1);
      }
    };
    visit(l4Mfn, 4);
    return byLevel;
  }

  // Clears RW in every boot l1e that maps a table frame (the kernel's direct map).
  #protectBootTables(byLevel: number[][]): void {
    const memory = this.memory;
    const isTable = new Set<number>(byLevel.flat());
    for (const l1 of byLevel[1]!) {
      for (let i = 0; i < 512; i++) {
        const entry = l1 * PAGE_SIZE + i * 8;
        const lo = memory.read32(entry);
        if ((lo & PTE_PRESENT) === 0 || (lo & PTE_WRITABLE) === 0) continue;
        if (isTable.has(pteAddress(lo, memory.read32(entry + 4)) / PAGE_SIZE)) {
          memory.write32(entry, (lo & ~PTE_WRITABLE) >>> 0);
        }
      }
    }
  }

  #mfnOf(gfn: number): number {
    const mfn = this.p2m.gfnToMfn(gfn);
    if (!Number.isInteger(gfn) || mfn < 0) {
      throw new RangeError(`Cannot access guest frame ${gfn}: it is not RAM of this domain`);
    }
    return mfn;
  }

  #gpaToMa(gpa: number): number {
    if (!Number.isInteger(gpa) || gpa < 0 || gpa + 4 > this.guestFrames * PAGE_SIZE) {
      throw new RangeError(
        `Cannot access guest-physical ${gpa}: memory is ${this.guestFrames} frames`,
      );
    }
    return this.#mfnOf(Math.floor(gpa / PAGE_SIZE)) * PAGE_SIZE + (gpa % PAGE_SIZE);
  }
}
