/**
 * The `hvm-hap` platform: the same guest, unmodified, under a hypervisor that uses
 * hardware-assisted paging (Intel EPT / AMD NPT, what KVM and Xen use since 2008). The
 * hardware CR3 is the guest's own: the processor walks the guest's tables itself and
 * translates every guest-physical address it meets through the EPT the hypervisor built
 * from the P2M (the 2-D walk of `NestedWalker`). The guest's page-table writes, CR3 loads
 * and INVLPGs run at full speed: nothing is intercepted, and a #PF goes straight to the
 * guest's handler with no VM exit.
 *
 * The hypervisor sees only EPT exits, handled as KVM does (`handle_ept_violation`,
 * `handle_ept_misconfig`):
 * - an EPT violation on a RAM GFN that has no EPT entry yet: install the leaf, retry
 *   (the EPT is built lazily, one frame per first touch);
 * - an EPT violation on the device's GFN: give it a misconfigured leaf (KVM's MMIO SPTE)
 *   and emulate the access; later accesses exit as EPT misconfigurations and are emulated
 *   at once;
 * - an EPT violation on a GFN with no memory (a CR3 or a guest entry pointing past RAM):
 *   emulate the access, which reads all ones and drops writes exactly as the bare machine
 *   does, so the guest gets the same #PF (RSVD) or values it would natively.
 * Emulation runs the access (or the instruction) on an emulator vCPU over guest-physical
 * memory with the guest's own paging state, as `lib/shadow/emulate_mmio.ts` does.
 *
 * The guest's CPU work exits as under Xen's VMX (`vmx_exits.ts`): IN/OUT (the I/O
 * bitmap), HLT, external interrupts and interrupt windows. Nothing is in the exception
 * bitmap but #DB, #AC and #MC (Xen's HVM_TRAP_MASK), which this guest never raises: a
 * #PF, #GP, #UD, #DE or #BP goes through the guest's IDT with no exit.
 *
 * Tagged TLB: with VPID (the default) VM exits and entries keep the TLB; without it, or
 * with `flushOnWorldSwitch`, every exit and every entry flush it (SDM Vol. 3C 29.4.3.1:
 * with VPIDs off, VM entries and exits invalidate the mappings of VPID 0), the cost the
 * seeds describe as "TLB flush whenever a world switch occurs".
 *
 * @module
 */

import { ACCESS_WRITE } from "../x86/access.ts";
import { PAGE_SIZE } from "../x86/address.ts";
import { OP_CALL, OP_INVLPG, OP_INVPCID, OP_MOV_TO_CR, OP_RET } from "../x86/decode.ts";
import { Interpreter, STEP_FAULT, STEP_OK } from "../x86/interpreter.ts";
import { NestedWalker } from "../x86/nested_walk.ts";
import { declareCounter, Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu, VECTOR_EPT_MISCONFIG, VECTOR_EPT_VIOLATION, VECTOR_PF } from "../x86/vcpu.ts";
import { EptTables } from "../memory/ept_tables.ts";
import { FrameTable } from "../memory/frame_table.ts";
import { GuestPhysicalView } from "../memory/guest_physical_view.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import { type MmioRange, P2m, P2M_MMIO } from "../memory/p2m.ts";
import { asDomainId } from "../memory/types.ts";
import { EMULATE_MMIO } from "../shadow/emulate_mmio.ts";
import { BasePlatform, EXIT_TOTAL, HANDLED_COMPLETE, HANDLED_RETRY } from "./base_platform.ts";
import { enterLongMode, resetPagingControl } from "./native.ts";
import type { PlatformName } from "./platform.ts";
import { VmxExits } from "./vmx_exits.ts";

/** EPT-violation exits. */
export const EXIT_EPT_VIOLATION: number = declareCounter(
  "exit.ept_violation",
  "VM exits for an EPT violation (exit reason 48: no EPT entry yet, MMIO, or no memory)",
  "exits",
);
/** EPT-misconfiguration exits. */
export const EXIT_EPT_MISCONFIG: number = declareCounter(
  "exit.ept_misconfig",
  "VM exits for an EPT misconfiguration (exit reason 49: an access to a marked MMIO frame)",
  "exits",
);
/** TLB flushes at VM exits and entries (no VPID). */
export const TLB_FLUSH_WORLD_SWITCH: number = declareCounter(
  "tlb.flush.worldSwitch",
  "full TLB flushes at a VM exit or entry (VPID off: one per exit, one per entry)",
  "flushes",
);
/** Accesses to GFNs with no memory, emulated. */
export const EMULATE_UNBACKED: number = declareCounter(
  "emulate.unbacked",
  "guest accesses to guest-physical addresses with no memory, emulated (all ones, writes dropped)",
  "accesses",
);

/** Options of {@link HvmHapPlatform}. */
export interface HvmHapOptions {
  /** Guest-physical memory in 4 KiB frames. */
  frames: number;
  /** Counters; a new set when omitted. */
  stats?: Stats;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Seed that scatters guest frames over machine frames; default 1. */
  scatterSeed?: number;
  /** Paging-structure caches and nested TLB in the 2-D walker; default true. */
  walkCaches?: boolean;
  /** Flush the TLB at every VM exit and entry (as without VPID); default false. */
  flushOnWorldSwitch?: boolean;
  /** VPID tags the TLB, so world switches keep it; default true. False flushes as above. */
  vpid?: boolean;
  /** EPT accessed and dirty flags (EPTP bit 6); default true. */
  eptAccessedDirty?: boolean;
  /** More MMIO ranges of guest frames (the device's frame is always MMIO). */
  mmio?: readonly MmioRange[];
}

/**
 * HVM with EPT.
 *
 * @example Boot the guest kernel: no exits for its page-table writes or CR3 loads
 * ```ts
 * import { HvmHapPlatform } from "./hvm_hap.ts";
 * import { GuestKernel } from "../guest/kernel.ts";
 * import assert from "node:assert/strict";
 * const platform = new HvmHapPlatform({ frames: 4096 });
 * const kernel = new GuestKernel(platform);
 * kernel.boot();
 * const pid = kernel.spawn();
 * kernel.writeU32(pid, 0x600000, 7);
 * assert.equal(kernel.readU32(pid, 0x600000), 7);
 * const stats = platform.stats;
 * assert.ok(stats.get("guest.cr3Load") > 0);
 * assert.equal(stats.get("exit.total"), stats.get("exit.ept_violation")); // only EPT fills
 * assert.equal(stats.get("exit.ept_violation"), stats.get("ept.map"));
 * ```
 */
export class HvmHapPlatform extends BasePlatform {
  /** "hvm-hap". */
  readonly name: PlatformName = "hvm-hap";
  /** Machine memory: the guest's scattered frames, the EPT, the rest free. */
  readonly memory: MachineMemory;
  /** The machine's frame table. */
  readonly frameTable: FrameTable;
  /** The domain's P2M. */
  readonly p2m: P2m;
  /** The domain's EPT. */
  readonly ept: EptTables;
  /** The processor's 2-D walker (the vCPU's `walker`). */
  readonly walker: NestedWalker;
  /** Guest-physical memory through the P2M, the device behind its MMIO frames. */
  readonly view: GuestPhysicalView;
  /** The emulator: an interpreter on a vCPU over {@link view} with the guest's paging. */
  readonly emulator: Interpreter;
  /** Whether VM exits and entries flush the TLB. */
  readonly flushesOnWorldSwitch: boolean;
  readonly #vmx: VmxExits;
  #started = false;

  /** A domain of `options.frames` guest frames on a machine with room for its EPT. */
  constructor(options: HvmHapOptions) {
    const stats = options.stats ?? new Stats();
    const frames = options.frames;
    if (!Number.isInteger(frames) || frames < 1 || frames > 2 ** 26) {
      throw new RangeError(`Cannot build a domain of ${frames} frames: must be 1..2^26`);
    }
    // EPT pages for every GFN up to the device's: PTs, PDs, a PDPT and the PML4.
    const eptPages = Math.ceil((frames + 1) / 512) + Math.ceil((frames + 1) / 512 ** 2) + 2;
    const machineFrames = frames + eptPages + 256;
    const memory = new MachineMemory({ frames: machineFrames, stats });
    const frameTable = new FrameTable({
      frames: machineFrames,
      stats: new Stats(), // the hypervisor's allocator, not the guest's work
      scatterSeed: options.scatterSeed ?? 1,
    });
    // The device's frame sits right above RAM, as natively; it is MMIO in the P2M.
    const p2m = P2m.populate(frameTable, asDomainId(1), frames + 1, [
      { firstGfn: frames, frames: 1 },
      ...(options.mmio ?? []),
    ]);
    const ept = new EptTables(memory, frameTable, stats, {
      accessedDirty: options.eptAccessedDirty ?? true,
    });
    const walker = new NestedWalker(memory, stats, {
      eptp: ept.eptp,
      walkCaches: options.walkCaches ?? true,
    });
    const vcpuOptions: { tlb?: TlbConfig; walker: NestedWalker } = { walker };
    if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
    const cpu = new Vcpu(memory, resetPagingControl(), stats, vcpuOptions);
    walker.tlb = cpu.tlb; // paging-structure caches go with the TLB's invalidations
    super(stats, cpu, new Interpreter(cpu), frames);
    this.memory = memory;
    this.frameTable = frameTable;
    this.p2m = p2m;
    this.ept = ept;
    this.walker = walker;
    this.view = new GuestPhysicalView(memory, p2m);
    this.view.mmio = this.device;
    // The emulator shares the guest's control registers (under EPT they are the
    // hardware's) and counts into a scratch set: walk.* and tlb.* stay the processor's.
    this.emulator = new Interpreter(
      new Vcpu(this.view, cpu.ctl, new Stats(), { tlbEnabled: false }),
    );
    // Instructions whose effect reaches past the emulated one (the CALL depth, the TLB)
    // are not emulated: a guest that runs them out of MMIO or absent memory is crashed.
    for (const op of [OP_CALL, OP_RET]) this.emulator.intercepts[op] = 1;
    this.flushesOnWorldSwitch = options.flushOnWorldSwitch === true || options.vpid === false;
    // I/O exiting through bitmaps (every port but 0x80 and 0xed), HLT exiting, external-
    // interrupt exiting, interrupt-window exiting when an interrupt must wait.
    this.#vmx = new VmxExits(
      stats,
      this.interpreter,
      this.board,
      this.flushesOnWorldSwitch ? () => this.#worldSwitch() : null,
    );
  }

  /** Stores into guest memory (through the P2M) before {@link start}. */
  loadGuestPhysical32(gpa: number, value: number): void {
    if (this.#started) throw new RangeError("Cannot load guest memory: the guest has started");
    this.#checkGpa(gpa);
    this.view.write32(gpa, value);
  }

  /** Reads guest-physical memory through the P2M. */
  peekGuestPhysical32(gpa: number): number {
    this.#checkGpa(gpa);
    return this.view.read32(gpa);
  }

  /** DMA out of guest frame `gfn` (the device model reads through the P2M). */
  dmaRead(gfn: number, into: Uint32Array): void {
    const words = this.memory.hostFrame(this.#mfnOf(gfn), false);
    if (words === undefined) into.fill(0, 0, PAGE_SIZE / 4);
    else into.set(words);
  }

  /** DMA into guest frame `gfn`: nothing to keep coherent, the EPT maps frames, not contents. */
  dmaWrite(gfn: number, from: Uint32Array): void {
    this.memory.hostFrame(this.#mfnOf(gfn), true)!.set(from.subarray(0, PAGE_SIZE / 4));
  }

  /** Enters 64-bit paging with the guest's own CR3 (a GPA) in the hardware. */
  start(l4Gpa: number, cr4: number): void {
    enterLongMode(this.cpu, l4Gpa, cr4);
    this.#started = true;
  }

  /**
   * An EPT violation or misconfiguration is a VM exit; every other exception (a #PF
   * included) is the guest's, delivered without one. Xen's VMCS exception bitmap with
   * HAP is HVM_TRAP_MASK (#DB, #AC, #MC) (| #NM for a lazy FPU), vmcs.c
   * construct_vmcs(); #UD only for a cross-vendor guest or hvm_fep
   * (vmx_cpuid_policy_changed), #BP only under a debugger. KVM instead always
   * intercepts #UD (vmx_update_exception_bitmap) to emulate VMCALL/VMMCALL.
   */
  protected onException(inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    const vector = e.vector;
    if (vector !== VECTOR_EPT_VIOLATION && vector !== VECTOR_EPT_MISCONFIG) {
      return this.deliverToGuest(fromUser, vector, e.errorCode, e.cr2);
    }
    const outcome = this.#eptExit(inInterpreter, fromUser);
    this.#vmx.entry(this.isGuestLevel, false);
    return outcome;
  }

  /** IN/OUT exits (nothing else is intercepted). */
  protected override onIntercept(): number {
    const vmx = this.#vmx;
    if (vmx.handles(this.interpreter.decoded.op)) return vmx.ioExit(this.isGuestLevel);
    return super.onIntercept();
  }

  /** HLT exiting: the exit, then the vCPU blocks until an interrupt (Xen's hvm_hlt). */
  protected override onHalt(): number {
    return this.#vmx.halt(() => super.onHalt());
  }

  /** A device interrupt: an external-interrupt exit, then injection at VM entry. */
  protected override raiseGuestInterrupt(vector: number): void {
    this.#vmx.raise(vector);
  }

  /** Counts the interrupt-window exits of the stretch of guest execution that ended. */
  protected override afterGuestChunk(): void {
    this.#vmx.afterChunk();
  }

  // EXIT_REASON_EPT_VIOLATION (48) / EXIT_REASON_EPT_MISCONFIG (49).
  #eptExit(inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    const vector = e.vector;
    const counts = this.counts;
    this.#worldSwitch(); // VM exit
    counts[EXIT_TOTAL]++;
    const gfn = Math.floor(e.gpa / PAGE_SIZE);
    this.stats.trace?.(
      vector === VECTOR_EPT_VIOLATION ? "exit.ept_violation" : "exit.ept_misconfig",
      e.gpa,
      e.qualification,
    );
    if (vector === VECTOR_EPT_VIOLATION) {
      counts[EXIT_EPT_VIOLATION]++;
      const mfn = this.p2m.gfnToMfn(gfn);
      if (mfn >= 0) {
        if (this.ept.leafLow(gfn) !== 0) {
          return this.crashWith(`EPT violation on gfn ${gfn}, which the EPT already maps`);
        }
        if (!this.ept.map(gfn, mfn)) {
          return this.crashWith(`no machine frame left for the EPT (gfn ${gfn})`);
        }
        this.#worldSwitch(); // VM entry
        return HANDLED_RETRY;
      }
      // The device (or another MMIO range): mark it so the next access misconfigures.
      if (mfn === P2M_MMIO) this.ept.markMmio(gfn);
    } else counts[EXIT_EPT_MISCONFIG]++;
    counts[this.p2m.isMmio(gfn) ? EMULATE_MMIO : EMULATE_UNBACKED]++;
    return inInterpreter ? this.#emulateInstruction() : this.#emulateAccess(fromUser);
  }

  // The data access in `request`, on the emulator.
  #emulateAccess(fromUser: boolean): number {
    const r = this.request;
    const ecpu = this.emulator.cpu;
    const ok = r.kind === ACCESS_WRITE
      ? ecpu.write(r.va, r.size, r.lo, r.hi)
      : ecpu.read(r.va, r.size, r.kind);
    this.#worldSwitch(); // VM entry (with the access done, or an event to inject)
    if (!ok) return this.#inject(fromUser);
    if (r.kind !== ACCESS_WRITE) {
      this.cpu.data = ecpu.data;
      this.cpu.dataHi = ecpu.dataHi;
    }
    return HANDLED_COMPLETE;
  }

  // The instruction at the hardware interpreter's RIP, on the emulator.
  #emulateInstruction(): number {
    const hardware = this.interpreter;
    const emulator = this.emulator;
    emulator.regs.set(hardware.regs);
    emulator.rip = hardware.rip;
    emulator.rflags = hardware.rflags;
    emulator.fsBase = hardware.fsBase;
    emulator.gsBase = hardware.gsBase;
    emulator.cr8 = hardware.cr8;
    const step = emulator.step();
    if (step !== STEP_OK && step !== STEP_FAULT) {
      return this.crashWith(
        `an access to guest-physical ${this.cpu.exception.gpa} at rip ${hardware.rip} ` +
          "could not be emulated",
      );
    }
    hardware.regs.set(emulator.regs);
    hardware.rip = emulator.rip;
    hardware.rflags = emulator.rflags;
    hardware.cr8 = emulator.cr8;
    const op = emulator.decoded.op;
    if (step === STEP_OK && (op === OP_MOV_TO_CR || op === OP_INVLPG || op === OP_INVPCID)) {
      this.cpu.tlb.flushAll(); // the emulator's TLB work, done on the real one (a superset)
    }
    this.#worldSwitch(); // VM entry
    return step === STEP_OK ? HANDLED_COMPLETE : this.#inject(false);
  }

  // Injects the emulator's exception into the guest (CR2 too for a #PF, as VM entry does).
  #inject(fromUser: boolean): number {
    const f = this.emulator.cpu.exception;
    if (f.vector === VECTOR_PF) this.cpu.exception.cr2 = f.cr2;
    return this.deliverToGuest(fromUser, f.vector, f.errorCode, f.cr2);
  }

  #worldSwitch(): void {
    if (this.flushesOnWorldSwitch) {
      this.cpu.tlb.flushAll();
      this.counts[TLB_FLUSH_WORLD_SWITCH]++;
    }
  }

  #mfnOf(gfn: number): number {
    const mfn = this.p2m.gfnToMfn(gfn);
    if (!Number.isInteger(gfn) || mfn < 0) {
      throw new RangeError(`Cannot access guest frame ${gfn}: it is not RAM of this domain`);
    }
    return mfn;
  }

  #checkGpa(gpa: number): void {
    if (!Number.isInteger(gpa) || gpa < 0 || gpa + 4 > this.guestFrames * PAGE_SIZE) {
      throw new RangeError(
        `Cannot access guest-physical ${gpa}: memory is ${this.guestFrames} frames`,
      );
    }
  }
}
