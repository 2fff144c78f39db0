/**
 * What the hypervisor keeps for one paravirtual domain, and the services every hypercall
 * handler uses: the machine's memory, frame table, page types and M2P; the domain's vCPU
 * (its CR3 is the domain's `guest_table`; its registers, the interpreter's, are Xen's
 * `cpu_user_regs`; its PV state and event channels are a {@link PvVcpu}); the I/O frames,
 * I/O ports and PIRQs the domain may use (`iomem=`, `ioports=`, `irqs=`); reading and
 * writing guest memory through the guest's own page tables (Xen's copy_from_guest /
 * copy_to_guest); and the TLB flushes Xen performs, with the flush clock that lets a type
 * change skip a flush when one already happened (`tlbflush_timestamp`).
 *
 * The counters of the PV platform are declared here, once.
 *
 * @module
 */

import { ACCESS_READ, ACCESS_WRITE } from "../lib/x86/access.ts";
import { LINEAR_LIMIT, UPPER_HALF_START } from "../lib/x86/address.ts";
import { declareCounter, type Stats } from "../lib/x86/stats.ts";
import type { Vcpu } from "../lib/x86/vcpu.ts";
import type { Interpreter } from "../lib/x86/interpreter.ts";
import type { FrameTable } from "../lib/memory/frame_table.ts";
import type { MachineMemory } from "../lib/memory/machine_memory.ts";
import type { PageTypes } from "../lib/memory/page_types.ts";
import type { DomainId } from "../lib/memory/types.ts";
import { DOMID_IO, DOMID_SELF, DOMID_XEN_ID, XEN_EPERM, XEN_ESRCH } from "./abi.ts";
import { PvVcpu } from "./pv_vcpu.ts";

/** mmu_update calls. */
export const HC_MMU_UPDATE: number = declareCounter(
  "hypercall.mmu_update",
  "mmu_update calls (direct, or inside a multicall)",
  "calls",
);
/** mmuext_op calls. */
export const HC_MMUEXT_OP: number = declareCounter(
  "hypercall.mmuext_op",
  "mmuext_op calls (direct, or inside a multicall)",
  "calls",
);
/** update_va_mapping calls. */
export const HC_UPDATE_VA_MAPPING: number = declareCounter(
  "hypercall.update_va_mapping",
  "update_va_mapping calls (direct, or inside a multicall)",
  "calls",
);
/** multicall calls. */
export const HC_MULTICALL: number = declareCounter(
  "hypercall.multicall",
  "multicall calls",
  "calls",
);
/** Entries into the hypervisor. */
export const HC_TRAPS: number = declareCounter(
  "hypercall.traps",
  "hypercalls the guest made (entries into Xen; a multicall is one entry)",
  "calls",
);
/** Requests completed. */
export const HC_ENTRIES: number = declareCounter(
  "hypercall.entries",
  "updates carried and completed: mmu_update requests, mmuext_op operations, " +
    "update_va_mapping calls",
  "updates",
);
/** Calls that returned an error. */
export const HC_REJECTED: number = declareCounter(
  "hypercall.rejected",
  "hypercalls (and multicall sub-calls) that returned a negative errno",
  "calls",
);
/** Multicall batches. */
export const MULTICALL_BATCHES: number = declareCounter(
  "multicall.batches",
  "multicall hypercalls (batches of calls)",
  "batches",
);
/** Calls inside multicalls. */
export const MULTICALL_CALLS: number = declareCounter(
  "multicall.calls",
  "calls run inside multicall batches",
  "calls",
);
/** Pins. */
export const PV_PIN: number = declareCounter(
  "pv.pin",
  "page tables pinned (MMUEXT_PIN_Ln_TABLE, and the top level at boot)",
  "tables",
);
/** Unpins. */
export const PV_UNPIN: number = declareCounter(
  "pv.unpin",
  "page tables unpinned (MMUEXT_UNPIN_TABLE)",
  "tables",
);
/** Entries validated. */
export const VALIDATE_ENTRIES: number = declareCounter(
  "validate.entries",
  "present page-table entries checked by the hypervisor (promotion to a table type, " +
    "and each new entry of a full mod_lN_entry)",
  "entries",
);
/** Tables validated. */
export const VALIDATE_TABLES: number = declareCounter(
  "validate.tables",
  "frames validated when they took a table type (alloc_lN_table)",
  "tables",
);
/** Page faults bounced. */
export const PV_BOUNCE_PF: number = declareCounter(
  "pv.bounce.pf",
  "page faults the hypervisor bounced to the guest's registered handler",
  "faults",
);
/** Other exceptions bounced. */
export const PV_BOUNCE_OTHER: number = declareCounter(
  "pv.bounce.other",
  "exceptions other than #PF bounced to the guest's registered handler",
  "exceptions",
);
/** Full TLB flushes by the hypervisor. */
export const PV_FLUSH_ALL: number = declareCounter(
  "pv.flush.all",
  "full TLB flushes the hypervisor performed (global entries included)",
  "flushes",
);
/** Single-page flushes by the hypervisor. */
export const PV_FLUSH_ONE: number = declareCounter(
  "pv.flush.one",
  "single-page TLB flushes the hypervisor performed",
  "flushes",
);
/** Flushes forced by a type change. */
export const PV_FLUSH_TYPE: number = declareCounter(
  "pv.flush.typeChange",
  "full flushes forced by a frame changing type (part of pv.flush.all)",
  "flushes",
);
/** Flushes after upper-level updates. */
export const PV_FLUSH_LINEAR: number = declareCounter(
  "pv.flush.linear",
  "full flushes after L2..L4 updates of tables in use (XSA-286; part of pv.flush.all)",
  "flushes",
);

/** set_trap_table calls. */
export const HC_SET_TRAP_TABLE: number = declareCounter(
  "hypercall.set_trap_table",
  "set_trap_table calls (the virtual IDT)",
  "calls",
);
/** stack_switch calls. */
export const HC_STACK_SWITCH: number = declareCounter(
  "hypercall.stack_switch",
  "stack_switch calls (the kernel stack for entries from user mode)",
  "calls",
);
/** xen_version calls. */
export const HC_XEN_VERSION: number = declareCounter(
  "hypercall.xen_version",
  "xen_version calls (also the guest's way to have Xen check for pending events)",
  "calls",
);
/** iret calls. */
export const HC_IRET: number = declareCounter(
  "hypercall.iret",
  "iret calls: returns from the guest kernel's handlers (to user or kernel mode)",
  "calls",
);
/** vcpu_op calls. */
export const HC_VCPU_OP: number = declareCounter(
  "hypercall.vcpu_op",
  "vcpu_op calls (VCPUOP_register_vcpu_info)",
  "calls",
);
/** sched_op calls. */
export const HC_SCHED_OP: number = declareCounter(
  "hypercall.sched_op",
  "sched_op calls (SCHEDOP_yield, SCHEDOP_block: the PV idle)",
  "calls",
);
/** callback_op calls. */
export const HC_CALLBACK_OP: number = declareCounter(
  "hypercall.callback_op",
  "callback_op calls (event, failsafe and syscall callbacks)",
  "calls",
);
/** event_channel_op calls. */
export const HC_EVENT_CHANNEL_OP: number = declareCounter(
  "hypercall.event_channel_op",
  "event_channel_op calls (binding VIRQs and PIRQs to ports)",
  "calls",
);
/** physdev_op calls. */
export const HC_PHYSDEV_OP: number = declareCounter(
  "hypercall.physdev_op",
  "physdev_op calls (PHYSDEVOP_eoi, PHYSDEVOP_set_iopl)",
  "calls",
);
/** System calls bounced. */
export const PV_BOUNCE_SYSCALL: number = declareCounter(
  "pv.bounce.syscall",
  "system calls the hypervisor bounced to the guest kernel (int 0x80, SYSCALL from user)",
  "calls",
);
/** Event upcalls. */
export const PV_EVENT_UPCALL: number = declareCounter(
  "pv.eventUpcall",
  "event-channel upcalls: bounce frames to the guest's event callback",
  "upcalls",
);
/** Events sent to ports. */
export const PV_EVENT_SENT: number = declareCounter(
  "pv.eventSent",
  "device interrupts turned into an event on a bound port (VIRQ_TIMER, the keyboard PIRQ)",
  "events",
);
/** Device interrupts with no port. */
export const PV_EVENT_DROPPED: number = declareCounter(
  "pv.eventDropped",
  "device interrupts dropped because no event channel was bound to them",
  "interrupts",
);
/** Privileged instructions emulated. */
export const PV_EMULATED_PRIV_OP: number = declareCounter(
  "pv.emulatedPrivOp",
  "privileged instructions of the guest kernel the hypervisor emulated (IN, OUT, CLI, STI)",
  "instructions",
);
/** Port accesses refused by the domain's I/O port permissions. */
export const PV_IO_DENIED: number = declareCounter(
  "pv.ioDenied",
  "emulated port accesses outside the domain's ioports (reads return all ones, writes dropped)",
  "accesses",
);
/** Failsafe callbacks. */
export const PV_FAILSAFE: number = declareCounter(
  "pv.failsafe",
  "returns to the guest that could not be made, bounced to its failsafe callback",
  "bounces",
);

/** The first L4 slot Xen reserves for itself in a 64-bit PV guest's top level. */
export const XEN_FIRST_L4_SLOT = 256;
/** The last reserved L4 slot (ROOT_PAGETABLE_LAST_XEN_SLOT). */
export const XEN_LAST_L4_SLOT = 271;
/** First linear address of Xen's hole (canonical 0xffff_8000_0000_0000). */
export const XEN_HOLE_START: number = UPPER_HALF_START;
/** One past Xen's hole (canonical 0xffff_8800_0000_0000): 16 L4 slots. */
export const XEN_HOLE_END: number = UPPER_HALF_START + 16 * 2 ** 39;

/** Options of {@link PvDomain}. */
export interface PvDomainOptions {
  /** The domain's id. */
  id: DomainId;
  /** Machine memory. */
  memory: MachineMemory;
  /** The machine's frame table (owners). */
  frames: FrameTable;
  /** The machine's page types and counts. */
  types: PageTypes;
  /** The machine-to-physical table (Xen's, shared by all domains); -1 is invalid. */
  m2p: Float64Array;
  /** The domain's (only) vCPU. */
  cpu: Vcpu;
  /** Counters. */
  stats: Stats;
  /** Machine frames outside RAM the domain may map (iomem_caps). */
  ioFrames?: readonly { first: number; count: number }[];
  /** Whether same-level (linear) page tables are allowed (Xen's pv-linear-pt); default true. */
  linearPageTables?: boolean;
  /** Ids of the other domains on the machine (foreign domains the guest may name). */
  otherDomains?: readonly number[];
  /** The vCPU's registers (Xen's cpu_user_regs): the interpreter running the guest. */
  regs?: Interpreter;
  /** I/O port ranges the domain may access directly (ioports_access_permitted). */
  ioPorts?: readonly { first: number; count: number }[];
  /** PIRQs the domain may bind (pirq_access_permitted; `irqs=` in a domain config). */
  pirqs?: readonly number[];
}

/**
 * One PV domain as the hypervisor sees it.
 *
 * @example Built by PvPlatform; the guest's CR3 frame is its `guestTable`
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * const d = platform.domain;
 * assert.equal(platform.cpu.ctl.cr3TableAddress, d.guestTable * 4096);
 * assert.ok(d.types.isPinned(d.guestTable));
 * ```
 */
export class PvDomain {
  /** The domain's id. */
  readonly id: DomainId;
  /** Machine memory. */
  readonly memory: MachineMemory;
  /** The frame table. */
  readonly frames: FrameTable;
  /** Page types and counts. */
  readonly types: PageTypes;
  /** The M2P. */
  readonly m2p: Float64Array;
  /** The vCPU. */
  readonly cpu: Vcpu;
  /** The vCPU's registers (cpu_user_regs), or null when the domain has no interpreter. */
  readonly regs: Interpreter | null;
  /** The vCPU's PV state (trap table, callbacks, vcpu_info) and the event channels. */
  readonly vcpu: PvVcpu;
  /** The run's counters. */
  readonly counts: Float64Array;
  /** The run's counter set (its `trace` sink too). */
  readonly stats: Stats;
  /** pv-linear-pt. */
  readonly linearPageTables: boolean;
  /** The top level in CR3 (`guest_table`), or -1. */
  guestTable: number = -1;
  /** The user-mode top level (`guest_table_user`), or -1. */
  guestTableUser: number = -1;
  /**
   * The TLB-flush clock: advanced by every full flush. A frame records it when its last
   * type reference goes; a type change flushes only if no full flush happened since.
   */
  flushClock = 1;
  /** Whether a multicall is running (a nested one is refused). */
  inMulticall = false;
  /** Low word of the last {@link readGuest64} / {@link readGuest32}. */
  lo = 0;
  /** High word of the last {@link readGuest64}. */
  hi = 0;
  readonly #ioFirst: Float64Array;
  readonly #ioEnd: Float64Array;
  readonly #others: readonly number[];
  readonly #portFirst: Float64Array;
  readonly #portEnd: Float64Array;
  readonly #pirqs: Uint8Array;

  /** The state of a domain built from `options`. */
  constructor(options: PvDomainOptions) {
    this.id = options.id;
    this.memory = options.memory;
    this.frames = options.frames;
    this.types = options.types;
    this.m2p = options.m2p;
    this.cpu = options.cpu;
    this.counts = options.stats.counts;
    this.stats = options.stats;
    this.linearPageTables = options.linearPageTables ?? true;
    const io = options.ioFrames ?? [];
    this.#ioFirst = Float64Array.from(io, (r) => r.first);
    this.#ioEnd = Float64Array.from(io, (r) => r.first + r.count);
    this.#others = [...(options.otherDomains ?? [])];
    this.regs = options.regs ?? null;
    this.vcpu = new PvVcpu(options.memory);
    const ports = options.ioPorts ?? [];
    this.#portFirst = Float64Array.from(ports, (r) => r.first);
    this.#portEnd = Float64Array.from(ports, (r) => r.first + r.count);
    this.#pirqs = new Uint8Array(256);
    for (const pirq of options.pirqs ?? []) this.#pirqs[pirq & 0xff] = 1;
  }

  /**
   * admin_io_okay (pv/emul-priv-op.c): whether ports `port`..`port + bytes - 1` lie in one
   * range the domain was given. Never 0xcf8 as a dword (PCI config address) nor the RTC
   * index/data ports (0x70, 0x71).
   */
  isIoPortPermitted(port: number, bytes: number): boolean {
    if (port === 0xcf8 && bytes === 4) return false;
    if ((port & ~1) === 0x70) return false;
    const last = port + bytes - 1;
    for (let i = 0; i < this.#portFirst.length; i++) {
      if (port >= this.#portFirst[i]! && last < this.#portEnd[i]!) return true;
    }
    return false;
  }

  /** pirq_access_permitted: whether the domain may bind PIRQ `pirq`. */
  isPirqPermitted(pirq: number): boolean {
    return Number.isInteger(pirq) && pirq >= 0 && pirq < 256 && this.#pirqs[pirq] === 1;
  }

  /** Whether the domain has I/O-memory permission (then cache bits are allowed at L1). */
  get hasIoPermission(): boolean {
    return this.#ioFirst.length > 0;
  }

  /** Whether the domain may map machine frame `mfn` as I/O memory (iomem_access_permitted). */
  isIoPermitted(mfn: number): boolean {
    for (let i = 0; i < this.#ioFirst.length; i++) {
      if (mfn >= this.#ioFirst[i]! && mfn < this.#ioEnd[i]!) return true;
    }
    return false;
  }

  /** Whether `id` names another domain on the machine. */
  isOtherDomain(id: number): boolean {
    return id !== this.id && this.#others.includes(id);
  }

  /** Whether `mfn` is a machine RAM frame (mfn_valid). */
  isValidMfn(mfn: number): boolean {
    return Number.isInteger(mfn) && mfn >= 0 && mfn < this.frames.frameCount;
  }

  /**
   * Whether `bytes` bytes at linear `va` are a guest range (access_ok): inside the 48-bit
   * space, outside Xen's hole in the upper half.
   */
  isGuestRange(va: number, bytes: number): boolean {
    if (!Number.isInteger(va) || va < 0 || va + bytes > LINEAR_LIMIT) return false;
    return va + bytes <= XEN_HOLE_START || va >= XEN_HOLE_END;
  }

  /**
   * Reads the u32 at guest linear `va` through the guest's tables at CPL 0 into
   * {@link lo}; false on a fault (the caller answers -EFAULT).
   */
  readGuest32(va: number): boolean {
    const cpu = this.cpu;
    if ((va & 0xfff) <= 0xffc) {
      const pa = cpu.translate(va, ACCESS_READ);
      if (pa < 0) return false;
      this.lo = this.memory.read32(pa);
      return true;
    }
    let value = 0;
    for (let k = 0; k < 4; k++) {
      const pa = cpu.translate(va + k, ACCESS_READ);
      if (pa < 0) return false;
      value |= this.memory.read8(pa) << (8 * k);
    }
    this.lo = value >>> 0;
    return true;
  }

  /** Reads the u64 at `va` into {@link lo} / {@link hi}; false on a fault. */
  readGuest64(va: number): boolean {
    if (!this.readGuest32(va + 4)) return false;
    const hi = this.lo;
    if (!this.readGuest32(va)) return false;
    this.hi = hi;
    return true;
  }

  /** Writes the u32 `value` at guest linear `va`; false on a fault. */
  writeGuest32(va: number, value: number): boolean {
    const cpu = this.cpu;
    if ((va & 0xfff) <= 0xffc) {
      const pa = cpu.translate(va, ACCESS_WRITE);
      if (pa < 0) return false;
      this.memory.write32(pa, value);
      return true;
    }
    for (let k = 0; k < 4; k++) {
      if (cpu.translate(va + k, ACCESS_WRITE) < 0) return false;
    }
    for (let k = 0; k < 4; k++) {
      this.memory.write8(cpu.translate(va + k, ACCESS_WRITE), value >>> (8 * k));
    }
    return true;
  }

  /** Writes the u64 (`hi`:`lo`) at `va`; false on a fault. */
  writeGuest64(va: number, lo: number, hi: number): boolean {
    return this.writeGuest32(va, lo) && this.writeGuest32(va + 4, hi);
  }

  /**
   * A full TLB flush, global entries included: Xen's flushes toggle CR4.PGE (or use
   * INVPCID all-context), and advance the flush clock.
   */
  flushTlbAll(): void {
    this.cpu.tlb.flushAll();
    this.flushClock++;
    this.counts[PV_FLUSH_ALL]++;
  }

  /** Flushes the page of linear `va` (paging_invlpg); a value outside 48 bits is ignored. */
  flushTlbOne(va: number): void {
    if (!Number.isInteger(va) || va < 0 || va >= LINEAR_LIMIT) return;
    this.cpu.invlpg(va - (va % 4096));
    this.counts[PV_FLUSH_ONE]++;
  }
}

/**
 * get_pg_owner plus XSM's verdict for an unprivileged domain: the owner named by
 * `domid` (DOMID_SELF: `d` itself; DOMID_IO allowed for I/O mappings), or -ESRCH for
 * `d`'s own numeric id ("Cannot specify itself as foreign domain") and unknown ids, or
 * -EPERM for another domain or DOMID_XEN (only privileged domains may name them).
 */
export function resolvePageOwner(d: PvDomain, domid: number): number {
  if (domid === DOMID_SELF) return d.id;
  if (domid === d.id) return -XEN_ESRCH;
  if (domid === DOMID_IO) return DOMID_IO;
  if (domid === DOMID_XEN_ID || d.isOtherDomain(domid)) return -XEN_EPERM;
  return -XEN_ESRCH;
}
