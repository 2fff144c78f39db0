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
 * flushes. Nothing is preempted (no continuations). One vCPU.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";
import { OP_INVLPG, OP_MOV_FROM_CR, OP_MOV_TO_CR } from "../x86/decode.ts";
import { Interpreter } from "../x86/interpreter.ts";
import { CR4_PCIDE } from "../x86/paging_control.ts";
import { PTE_PAGE_SIZE, PTE_PRESENT, PTE_WRITABLE, pteAddress } from "../x86/pte.ts";
import { Stats } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { Vcpu, VECTOR_GP, VECTOR_PF } from "../x86/vcpu.ts";
import { FrameTable } from "../memory/frame_table.ts";
import { MachineMemory } from "../memory/machine_memory.ts";
import { P2m } from "../memory/p2m.ts";
import { PageTypes, PGT_L4 } from "../memory/page_types.ts";
import { asDomainId, type DomainId, DOMID_XEN } from "../memory/types.ts";
import { formatHypercallResult, XEN_EINVAL } from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { doHypercall } from "../../hypercalls/do_hypercall.ts";
import { HypercallArgs } from "../../hypercalls/hypercall_table.ts";
import { getPageAndType, newGuestCr3, pinTable } from "../../hypercalls/page_refs.ts";
import { PV_BOUNCE_OTHER, PV_BOUNCE_PF, PV_PIN, PvDomain } from "../../hypercalls/pv_domain.ts";
import { relinquishDomain } from "../../hypercalls/relinquish.ts";
import { BasePlatform, HANDLED_COMPLETE } from "./base_platform.ts";
import { enterLongMode, resetPagingControl } from "./native.ts";
import type { PlatformName } from "./platform.ts";

/** The PV guest's domain id. */
export const PV_DOMAIN_ID: DomainId = asDomainId(1);
/** The id of the other domain on the machine (whose frames a hostile guest may name). */
export const PV_NEIGHBOUR_ID: DomainId = asDomainId(2);
/** Machine frames Xen keeps for itself at the bottom of memory (its heap, the M2P ...). */
export const XEN_RESERVED_FRAMES = 64;

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
}

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
    // A kernel in ring 3 would fault on these; Xen emulates what it allows.
    interpreter.intercepts[OP_MOV_TO_CR] = 1;
    interpreter.intercepts[OP_MOV_FROM_CR] = 1;
    interpreter.intercepts[OP_INVLPG] = 1;
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
    };
    if (options.linearPageTables !== undefined) {
      domainOptions.linearPageTables = options.linearPageTables;
    }
    this.domain = new PvDomain(domainOptions);
  }

  /**
   * The hypercall entry: the number in RAX, arguments in RDI, RSI, RDX, R10, R8 of the
   * vCPU's registers; the result goes to RAX and is returned (0, a count, or -errno).
   * The guest kernel makes it at CPL 0. After a crash it returns -EINVAL and does nothing.
   */
  hypercall(): number {
    const interpreter = this.interpreter;
    if (this.crashReason !== "") return -XEN_EINVAL;
    const args = this.#args;
    const regs = interpreter.regs;
    // RDI 7, RSI 6, RDX 2, R10 10, R8 8, R9 9.
    args.set(0, regs[14]!, regs[15]!);
    args.set(1, regs[12]!, regs[13]!);
    args.set(2, regs[4]!, regs[5]!);
    args.set(3, regs[20]!, regs[21]!);
    args.set(4, regs[16]!, regs[17]!);
    args.set(5, regs[18]!, regs[19]!);
    this.cpu.ctl.cpl = 0;
    const rc = doHypercall(this.domain, regs[0]!, args);
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
   * A privileged instruction of the guest kernel: MOV to CR3 is new_guest_cr3 (the
   * operand is a machine address), MOV from CR reads the hardware value; the rest
   * (other CR writes, INVLPG) is a #GP for the guest, as in ring 3.
   */
  protected override onIntercept(): number {
    const interpreter = this.interpreter;
    const d = interpreter.decoded;
    if (d.op === OP_MOV_TO_CR && d.crRegister === 3) {
      const lo = interpreter.regLo(d.rm);
      const hi = interpreter.regHi(d.rm);
      const mfn = (hi & 0xfffff) * 2 ** 20 + (lo >>> 12);
      if ((hi & 0x7ff00000) !== 0 || newGuestCr3(this.domain, mfn) !== 0) {
        return this.deliverToGuest(false, VECTOR_GP, 0, 0);
      }
      interpreter.skip();
      return HANDLED_COMPLETE;
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
        ? this.cpu.exception.cr2
        : interpreter.cr8;
      interpreter.setReg(d.rm, value >>> 0, Math.floor(value / 2 ** 32) >>> 0);
      interpreter.skip();
      return HANDLED_COMPLETE;
    }
    return this.deliverToGuest(false, VECTOR_GP, 0, 0);
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
