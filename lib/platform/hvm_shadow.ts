/**
 * The `hvm-shadow` platform: the same guest, unmodified, under a hypervisor that owns the
 * hardware CR3 (VT-x without EPT, as Xen ran HVM guests before 2008). The guest's memory
 * is scattered over machine frames by a P2M; the processor walks shadow tables the
 * hypervisor builds from the guest's own; the guest's CR3 reads and writes and its INVLPG
 * exit to the hypervisor (CR3-load / CR3-store / INVLPG exiting); a #PF exits and is
 * either fixed by the hypervisor (hidden), injected into the guest (genuine), or is a
 * write to a guest page table that the hypervisor emulates.
 *
 * The guest's CPU work exits as under Xen's VMX (`vmx_exits.ts`): IN/OUT (the I/O
 * bitmap), HLT, external interrupts and interrupt windows. The exception bitmap holds
 * #PF only (with #DB, #AC and #MC, which this guest never raises): every other
 * exception the guest raises (#GP, #UD, #DE, #BP) goes through its own IDT with no exit.
 *
 * Exits are counted by reason (`exit.*`); the shadow core counts the rest.
 *
 * @module
 */

import { ACCESS_WRITE } from "../x86/access.ts";
import { PAGE_SIZE } from "../x86/address.ts";
import { OP_INVLPG, OP_MOV_FROM_CR, OP_MOV_TO_CR } from "../x86/decode.ts";
import { Interpreter } from "../x86/interpreter.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
} from "../x86/paging_control.ts";
import { declareCounter, Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu, VECTOR_GP, VECTOR_PF } from "../x86/vcpu.ts";
import { FrameTable } from "../memory/frame_table.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import { type MmioRange, P2m } from "../memory/p2m.ts";
import { asDomainId } from "../memory/types.ts";
import {
  EMULATE_DONE,
  EMULATE_FAULT,
  emulateDataWrite,
  emulatePtWrite,
  resetEarlyUnshadow,
} from "../shadow/emulate_pt_write.ts";
import { CR3_DONE, CR3_GP, writeGuestCr3 } from "../shadow/shadow_cr3.ts";
import {
  handleShadowFault,
  SHADOW_EMULATE,
  SHADOW_FIXED,
  SHADOW_GENUINE,
  SHADOW_MMIO,
  SHADOW_UNSHADOWED,
  ShadowFaultResult,
} from "../shadow/shadow_fault.ts";
import { invlpgGuest } from "../shadow/shadow_invlpg.ts";
import { emulateMmio, mmioRead, mmioWrite } from "../shadow/emulate_mmio.ts";
import { SHADOW_UNSHADOW_REUSED, ShadowMmu } from "../shadow/shadow_mmu.ts";
import { checkShadows } from "../shadow/check_shadows.ts";
import { BasePlatform, EXIT_TOTAL, HANDLED_COMPLETE, HANDLED_RETRY } from "./base_platform.ts";
import { enterLongMode, resetPagingControl } from "./native.ts";
import type { GuestCpuState, PlatformName } from "./platform.ts";
import { VmxExits } from "./vmx_exits.ts";

/** #PF exits. */
export const EXIT_PF: number = declareCounter(
  "exit.pf",
  "VM exits for a page fault (exception bitmap: #PF)",
  "exits",
);
/** MOV to CR3 exits. */
export const EXIT_CR3: number = declareCounter(
  "exit.cr3",
  "VM exits for a guest MOV to CR3 (CR3-load exiting)",
  "exits",
);
/** MOV from CR3 exits. */
export const EXIT_CR3_READ: number = declareCounter(
  "exit.cr3Read",
  "VM exits for a guest MOV from CR3 (CR3-store exiting)",
  "exits",
);
/** INVLPG exits. */
export const EXIT_INVLPG: number = declareCounter(
  "exit.invlpg",
  "VM exits for a guest INVLPG (INVLPG exiting)",
  "exits",
);
/** Exits for an access to an emulated device. */
export const EXIT_MMIO: number = declareCounter(
  "exit.mmio",
  "VM exits for an access to an MMIO frame (emulated by the device model)",
  "exits",
);

// The event a traced #PF exit ended as, by handleShadowFault outcome.
const SHADOW_OUTCOME_EVENTS = [
  "fault.hidden",
  "fault.genuine",
  "emulate.ptWrite",
  "exit.mmio",
  "shadow.unshadow",
];

/** Options of {@link HvmShadowPlatform}. */
export interface HvmShadowOptions {
  /** Guest-physical memory in 4 KiB frames. */
  frames: number;
  /** Counters; a new set when omitted. */
  stats?: Stats;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Shadow pool size in pages; default 4096, at least 64. */
  poolPages?: number;
  /** Seed that scatters guest frames over machine frames; default 1. */
  scatterSeed?: number;
  /** MMIO ranges of guest frames. */
  mmio?: readonly MmioRange[];
  /** Let written guest L1 tables go out of sync (Xen's OOS); default false. */
  oos?: boolean;
  /** Out-of-sync tables at once; default 3 (Xen's SHADOW_OOS_PAGES). */
  oosPages?: number;
}

/**
 * HVM with shadow paging.
 *
 * @example Boot the guest kernel under shadow paging (see `createLab`)
 * ```ts
 * import { HvmShadowPlatform } from "./hvm_shadow.ts";
 * import { GuestKernel } from "../guest/kernel.ts";
 * import assert from "node:assert/strict";
 * const platform = new HvmShadowPlatform({ frames: 4096 });
 * const kernel = new GuestKernel(platform);
 * kernel.boot();
 * const pid = kernel.spawn();
 * kernel.writeU32(pid, 0x600000, 7);
 * assert.equal(kernel.readU32(pid, 0x600000), 7);
 * assert.ok(platform.stats.get("fault.hidden") > 0); // the shadows filled in behind the guest
 * ```
 */
export class HvmShadowPlatform extends BasePlatform {
  /** "hvm-shadow". */
  readonly name: PlatformName = "hvm-shadow";
  /** Machine memory: the guest's scattered frames, the shadow pool, the rest free. */
  readonly memory: MachineMemory;
  /** The machine's frame table. */
  readonly frameTable: FrameTable;
  /** The domain's P2M. */
  readonly p2m: P2m;
  /** The shadow core. */
  readonly mmu: ShadowMmu;
  readonly #fault = new ShadowFaultResult();
  readonly #vmx: VmxExits;
  #started = false;

  /** A domain of `options.frames` guest frames on a machine with room for the pool. */
  constructor(options: HvmShadowOptions) {
    const stats = options.stats ?? new Stats();
    const poolPages = options.poolPages ?? 4096;
    if (!Number.isInteger(poolPages) || poolPages < 64) {
      throw new RangeError(`Cannot use a shadow pool of ${poolPages} pages: need an integer >= 64`);
    }
    // The hypervisor's own frames come first; guest frames are scattered over the rest.
    const machineFrames = options.frames + poolPages + 256;
    const memory = new MachineMemory({ frames: machineFrames, stats });
    const frameTable = new FrameTable({
      frames: machineFrames,
      stats: new Stats(), // the hypervisor's allocator, not the guest's work
      scatterSeed: options.scatterSeed ?? 1,
    });
    // The device's frame sits right above RAM, as natively; it is MMIO in the P2M.
    const p2m = P2m.populate(frameTable, asDomainId(1), options.frames + 1, [
      { firstGfn: options.frames, frames: 1 },
      ...(options.mmio ?? []),
    ]);
    const vcpuOptions: { tlb?: TlbConfig } = {};
    if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
    const cpu = new Vcpu(memory, resetPagingControl(), stats, vcpuOptions);
    const interpreter = new Interpreter(cpu);
    super(stats, cpu, interpreter, options.frames);
    // VMX execution controls for shadow paging: CR3-load, CR3-store and INVLPG exiting.
    interpreter.intercepts[OP_MOV_TO_CR] = 1;
    interpreter.intercepts[OP_MOV_FROM_CR] = 1;
    interpreter.intercepts[OP_INVLPG] = 1;
    this.memory = memory;
    this.frameTable = frameTable;
    this.p2m = p2m;
    const mmuOptions: { poolPages: number; oos?: boolean; oosPages?: number } = { poolPages };
    if (options.oos !== undefined) mmuOptions.oos = options.oos;
    if (options.oosPages !== undefined) mmuOptions.oosPages = options.oosPages;
    this.mmu = new ShadowMmu(memory, frameTable, p2m, cpu, stats, mmuOptions);
    this.mmu.view.mmio = this.device; // the device model behind every MMIO exit
    // I/O exiting through bitmaps (every port but 0x80 and 0xed), HLT exiting, external-
    // interrupt exiting, interrupt-window exiting when an interrupt must wait.
    this.#vmx = new VmxExits(stats, interpreter, this.board);
  }

  /** Stores into guest memory (through the P2M) before {@link start}. */
  loadGuestPhysical32(gpa: number, value: number): void {
    if (this.#started) throw new RangeError("Cannot load guest memory: the guest has started");
    this.#checkGpa(gpa);
    this.mmu.view.write32(gpa, value);
  }

  /** Reads guest-physical memory through the P2M. */
  peekGuestPhysical32(gpa: number): number {
    this.#checkGpa(gpa);
    return this.mmu.view.read32(gpa);
  }

  /** DMA out of guest frame `gfn` (the device model reads through the P2M). */
  dmaRead(gfn: number, into: Uint32Array): void {
    const mfn = this.#mfnOf(gfn);
    const words = this.memory.hostFrame(mfn, false);
    if (words === undefined) into.fill(0, 0, PAGE_SIZE / 4);
    else into.set(words);
  }

  /**
   * DMA into guest frame `gfn`. A DMA write to a shadowed page table would bypass the
   * write protection, so the frame is unshadowed first (Xen removes shadows of a page a
   * device writes).
   */
  dmaWrite(gfn: number, from: Uint32Array): void {
    const mfn = this.#mfnOf(gfn);
    if (this.mmu.isShadowedTable(gfn)) this.mmu.unshadow(gfn, SHADOW_UNSHADOW_REUSED);
    this.memory.hostFrame(mfn, true)!.set(from.subarray(0, PAGE_SIZE / 4));
  }

  /**
   * Enters 64-bit paging: the guest's control registers take the guest's values; the
   * hardware CR3 points at the shadow of the guest's top level.
   */
  start(l4Gpa: number, cr4: number): void {
    const mmu = this.mmu;
    const guest = mmu.guestCtl;
    guest.efer = EFER_LME | EFER_LMA | EFER_NXE;
    guest.cr0 = CR0_PE | CR0_WP | CR0_PG;
    guest.cr4 = CR4_PAE | cr4;
    const top = mmu.topLevel(Math.floor(l4Gpa / PAGE_SIZE));
    if (top === null) throw new RangeError("Cannot start the guest: no shadow pool");
    guest.cr3 = l4Gpa;
    mmu.current = top;
    enterLongMode(this.cpu, top.smfn * PAGE_SIZE + (l4Gpa & 0xfff), cr4);
    this.#started = true;
  }

  /**
   * A #PF is a VM exit to the shadow code; other exceptions are the guest's, delivered
   * through its IDT without an exit. Xen's VMCS exception bitmap under shadow paging is
   * HVM_TRAP_MASK (#DB, #AC, #MC) | #PF (| #NM for a lazy FPU), vmcs.c construct_vmcs();
   * #UD only for a cross-vendor guest or hvm_fep (vmx_cpuid_policy_changed), #BP only
   * under a debugger (vmx_update_debug_state). KVM instead always intercepts #UD
   * (vmx_update_exception_bitmap: PF, UD, MC, DB, AC) to emulate VMCALL/VMMCALL.
   */
  protected onException(inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    if (e.vector !== VECTOR_PF) return this.deliverToGuest(fromUser, e.vector, e.errorCode, e.cr2);
    const outcome = this.#pageFaultExit(inInterpreter, fromUser);
    this.#vmx.entry(this.isGuestLevel, false);
    return outcome;
  }

  // EXIT_REASON_EXCEPTION_NMI with vector 14: the shadow fault handler.
  #pageFaultExit(inInterpreter: boolean, fromUser: boolean): number {
    const e = this.cpu.exception;
    const counts = this.counts;
    counts[EXIT_TOTAL]++;
    counts[EXIT_PF]++;
    const mmu = this.mmu;
    const cr2 = e.cr2;
    const result = this.#fault;
    const trace = this.stats.trace;
    const outcome = handleShadowFault(mmu, cr2, e.errorCode, result);
    if (trace !== null) {
      trace("exit.pf", cr2, e.errorCode);
      trace(
        SHADOW_OUTCOME_EVENTS[outcome] ?? "shadow.crash",
        cr2,
        outcome === SHADOW_GENUINE ? mmu.guestWalker.errorCode : result.gpa,
      );
    }
    switch (outcome) {
      case SHADOW_FIXED:
      case SHADOW_UNSHADOWED:
        resetEarlyUnshadow(mmu); // sh_reset_early_unshadow: a fault the hypervisor fixed
        return HANDLED_RETRY;
      case SHADOW_GENUINE:
        resetEarlyUnshadow(mmu);
        return this.deliverToGuest(fromUser, VECTOR_PF, mmu.guestWalker.errorCode, cr2);
      case SHADOW_EMULATE: {
        if (!inInterpreter) {
          const r = this.request;
          if (emulateDataWrite(mmu, r.va, r.size, r.lo, r.hi, this.cpu.ctl.cpl)) {
            return HANDLED_COMPLETE;
          }
          const f = mmu.emulator.cpu.exception;
          return this.deliverToGuest(fromUser, f.vector, f.errorCode, f.cr2);
        }
        const outcome = emulatePtWrite(mmu, this.interpreter, result.gfn);
        if (outcome === EMULATE_DONE) return HANDLED_COMPLETE;
        if (outcome === EMULATE_FAULT) {
          const f = mmu.emulator.cpu.exception;
          return this.deliverToGuest(false, f.vector, f.errorCode, f.cr2);
        }
        return HANDLED_RETRY;
      }
      case SHADOW_MMIO: {
        counts[EXIT_MMIO]++;
        if (inInterpreter) {
          const outcome = emulateMmio(mmu, this.interpreter);
          if (outcome === EMULATE_DONE) return HANDLED_COMPLETE;
          const f = mmu.emulator.cpu.exception;
          if (outcome === EMULATE_FAULT) {
            return this.deliverToGuest(false, f.vector, f.errorCode, f.cr2);
          }
          return this.crashWith(`an MMIO access at ${cr2} could not be emulated`);
        }
        const r = this.request;
        if (r.kind === ACCESS_WRITE) mmioWrite(mmu, result.gpa, r.size, r.lo, r.hi);
        else {
          mmioRead(mmu, result.gpa, r.size);
          this.cpu.data = mmu.emulator.cpu.data;
          this.cpu.dataHi = mmu.emulator.cpu.dataHi;
        }
        return HANDLED_COMPLETE;
      }
      default:
        return this.crashWith(result.reason);
    }
  }

  /** IN/OUT, MOV to/from CR3 and INVLPG exits. */
  protected override onIntercept(): number {
    const vmx = this.#vmx;
    if (vmx.handles(this.interpreter.decoded.op)) return vmx.ioExit(this.isGuestLevel);
    const outcome = this.#controlRegisterExit();
    vmx.entry(this.isGuestLevel, true);
    return outcome;
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

  /**
   * The guest's processor state lives in the VMCS, except its CR3: the hardware CR3
   * points at the shadow, the guest's own value is the hypervisor's
   * (v->arch.hvm.guest_cr[3]).
   */
  override guestCpuState(): GuestCpuState {
    const state = super.guestCpuState();
    state.cr3 = this.mmu.guestCtl.cr3;
    return state;
  }

  // CR-access exits (MOV to/from CR3, reads of CR0/CR2/CR4/CR8) and INVLPG exits.
  #controlRegisterExit(): number {
    const interpreter = this.interpreter;
    const d = interpreter.decoded;
    const counts = this.counts;
    const mmu = this.mmu;
    counts[EXIT_TOTAL]++;
    const trace = this.stats.trace;
    if (d.op === OP_INVLPG) {
      counts[EXIT_INVLPG]++;
      const va = interpreter.operandAddress();
      if (trace !== null) trace("exit.invlpg", va, "");
      if (va >= 0) invlpgGuest(mmu, va); // a non-canonical INVLPG is a NOP
      interpreter.skip();
      return HANDLED_COMPLETE;
    }
    if (d.op === OP_MOV_TO_CR && d.crRegister === 3) {
      counts[EXIT_CR3]++;
      const lo = interpreter.regLo(d.rm);
      const hi = interpreter.regHi(d.rm);
      if (trace !== null) trace("exit.cr3", (hi & 0xfffff) * 2 ** 32 + lo, "");
      const noFlush = (hi >>> 31) !== 0;
      if ((hi & 0x7ff00000) !== 0) return this.deliverToGuest(false, VECTOR_GP, 0, 0);
      const outcome = writeGuestCr3(mmu, (hi & 0xfffff) * 2 ** 32 + lo, noFlush);
      if (outcome === CR3_GP) return this.deliverToGuest(false, VECTOR_GP, 0, 0);
      if (outcome !== CR3_DONE) {
        return this.crashWith(`the shadow pool (${mmu.poolPages} pages) is exhausted`);
      }
      interpreter.skip();
      return HANDLED_COMPLETE;
    }
    if (d.op === OP_MOV_FROM_CR && d.crRegister === 3) {
      counts[EXIT_CR3_READ]++;
      if (trace !== null) trace("exit.cr3Read", mmu.guestCtl.cr3, "");
      const cr3 = mmu.guestCtl.cr3;
      interpreter.setReg(d.rm, cr3 >>> 0, Math.floor(cr3 / 2 ** 32));
      interpreter.skip();
      return HANDLED_COMPLETE;
    }
    if (d.op === OP_MOV_FROM_CR) {
      // Reads of CR0/CR4 see the guest's values (read shadows); CR2, CR8 the hardware's.
      const cr = d.crRegister;
      const value = cr === 0
        ? mmu.guestCtl.cr0
        : cr === 4
        ? mmu.guestCtl.cr4
        : cr === 2
        ? this.cpu.exception.cr2
        : interpreter.cr8;
      interpreter.setReg(d.rm, value >>> 0, cr === 2 ? Math.floor(value / 2 ** 32) : 0);
      interpreter.skip();
      return HANDLED_COMPLETE;
    }
    return this.crashWith(
      `the guest wrote CR${d.crRegister}, which this hypervisor does not emulate`,
    );
  }

  /** Invariants 2 and 3 of DESIGN.md (see checkShadows). */
  checkInvariants(): string[] {
    return checkShadows(this.mmu);
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
