/**
 * The guest kernel: a small Linux-like operating system that runs unchanged on every
 * platform. It owns guest-physical memory (a frame allocator, a direct map in the upper
 * half, a kernel text page, a shared zero page), processes with areas, fork with
 * copy-on-write, exec, exit, mmap/munmap/mprotect/brk, demand-zero and copy-on-write
 * faults, swap, and context switches by CR3 (with PCIDs when enabled).
 *
 * Every page-table change goes through {@link PagingOps}; every read of a table and every
 * clear or copy of a page is an access or an instruction of the vCPU, so the TLB, walk
 * and fault counts include the kernel's own work, as they would on hardware. The Linux
 * function each step follows is named in its comment (mm/memory.c, mm/mmap.c,
 * arch/x86/mm/tlb.c, kernel/fork.c).
 *
 * @module
 */

import { ACCESS_READ, ACCESS_WRITE, type AccessKind } from "../x86/access.ts";
import { formatHex, formatLinear, levelIndex, levelSpan, PAGE_SIZE } from "../x86/address.ts";
import { CR4_PCIDE, CR4_PGE, PFEC_FETCH, PFEC_RSVD, PFEC_WRITE } from "../x86/paging_control.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_XD,
  PTE_PAGE_SIZE,
  PTE_PCD,
  PTE_PRESENT,
  PTE_PWT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
  pteHigh,
  pteLow,
} from "../x86/pte.ts";
import { declareCounter } from "../x86/stats.ts";
import { VECTOR_GP, VECTOR_PF, VECTOR_UD } from "../x86/vcpu.ts";
import {
  type Platform,
  RUN_ABANDONED,
  RUN_CRASHED,
  RUN_DONE,
  TRAP_ABANDON,
  TRAP_RETRY,
} from "../platform/platform.ts";
import { AddressSpace } from "./address_space.ts";
import {
  FRAME_USE_KERNEL,
  FRAME_USE_TABLE,
  FRAME_USE_TASK,
  FRAME_USE_USER,
  GuestFrameAllocator,
} from "./frame_allocator.ts";
import { KernelCode } from "./kernel_code.ts";
import { KernelText } from "./kernel_text.ts";
import type { TextFlavour } from "./entry_text.ts";
import {
  DIRECT_MAP_BASE,
  ECHILD,
  EINVAL,
  ENOMEM,
  IMAGE_DATA_START,
  IMAGE_TEXT_START,
  KERNEL_TEXT_BASE,
  MMAP_BASE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  PTE_SOFT_PROTNONE,
  PTE_SOFT_SWAP,
  SIGKILL,
  SIGSEGV,
  STACK_SIZE,
  STACK_TOP,
} from "./layout.ts";
import { NativePagingOps } from "./native_paging_ops.ts";
import { EntryValue, type PagingOps } from "./paging_ops.ts";
import { Process } from "./process.ts";
import { SharedObject } from "./shared_object.ts";
import { SwapDevice } from "./swap_device.ts";
import { Vma } from "./vma.ts";

// ---------------------------------------------------------------------------------------
// Counters. Guest-visible events: the same on every platform for the same work.
// ---------------------------------------------------------------------------------------

/** #PF delivered to the guest kernel (genuine faults). */
export const GUEST_FAULT: number = declareCounter(
  "guest.fault",
  "page faults delivered to the guest kernel's handler",
  "faults",
);
/** Faults resolved by mapping a zeroed page (or the zero page, for a read). */
export const GUEST_FAULT_DEMAND_ZERO: number = declareCounter(
  "guest.fault.demandZero",
  "faults resolved with a new zeroed page, or the zero page for a read",
  "faults",
);
/** Faults resolved in a shared mapping by mapping its existing page. */
export const GUEST_FAULT_SHARED: number = declareCounter(
  "guest.fault.shared",
  "faults in a shared mapping resolved by mapping the object's page",
  "faults",
);
/** Write faults on a write-protected private page: copy-on-write. */
export const GUEST_FAULT_COW: number = declareCounter(
  "guest.fault.cow",
  "write faults on a copy-on-write page (copied or reused)",
  "faults",
);
/** Faults that brought a page back from swap (major faults). */
export const GUEST_FAULT_SWAP_IN: number = declareCounter(
  "guest.fault.swapIn",
  "faults that read a page back from swap (major faults)",
  "faults",
);
/** Faults against an area's protection: SIGSEGV (SEGV_ACCERR). */
export const GUEST_FAULT_PROTECTION: number = declareCounter(
  "guest.fault.protection",
  "faults denied by the area's protection; the process gets SIGSEGV",
  "faults",
);
/** Faults outside every area: SIGSEGV (SEGV_MAPERR). */
export const GUEST_FAULT_SEGV: number = declareCounter(
  "guest.fault.segv",
  "faults outside every area; the process gets SIGSEGV",
  "faults",
);
/** Faults the tables already allowed (a stale TLB entry): nothing to do. */
export const GUEST_FAULT_SPURIOUS: number = declareCounter(
  "guest.fault.spurious",
  "faults on an entry that already allows the access (stale TLB entry)",
  "faults",
);
/** Copy-on-write faults that copied the page. */
export const GUEST_COW_COPY: number = declareCounter(
  "guest.cow.copy",
  "copy-on-write faults that copied the page",
  "faults",
);
/** Copy-on-write faults that reused the page (last reference). */
export const GUEST_COW_REUSE: number = declareCounter(
  "guest.cow.reuse",
  "copy-on-write faults that made the only reference writable",
  "faults",
);
/** PagingOps.setEntry calls. */
export const GUEST_PTE_SET: number = declareCounter(
  "guest.pte.set",
  "page-table entries written (set_pte and friends)",
  "writes",
);
/** PagingOps.clearEntry calls. */
export const GUEST_PTE_CLEAR: number = declareCounter(
  "guest.pte.clear",
  "page-table entries cleared atomically (ptep_get_and_clear)",
  "writes",
);
/** PagingOps.setFlags / clearFlags calls. */
export const GUEST_PTE_FLAGS: number = declareCounter(
  "guest.pte.flags",
  "atomic flag updates of an entry (write-protect, mkold, mkwrite)",
  "writes",
);
/** Protection changes (start + commit). */
export const GUEST_PTE_PROT: number = declareCounter(
  "guest.pte.protChange",
  "entries changed by mprotect (ptep_modify_prot_start/commit)",
  "entries",
);
/** Reads of page-table entries by the kernel. */
export const GUEST_PTE_READ: number = declareCounter(
  "guest.pte.read",
  "page-table entries read by the kernel",
  "reads",
);
/** Page-table frames allocated. */
export const GUEST_TABLE_ALLOC: number = declareCounter(
  "guest.table.alloc",
  "page-table frames allocated (new top levels included)",
  "tables",
);
/** Page-table frames freed. */
export const GUEST_TABLE_FREE: number = declareCounter(
  "guest.table.free",
  "page-table frames freed",
  "tables",
);
/** CR3 loads by the kernel. */
export const GUEST_CR3_LOAD: number = declareCounter(
  "guest.cr3Load",
  "CR3 loads by the guest kernel (context switches, exec, exit)",
  "writes",
);
/** Single-page TLB flushes. */
export const GUEST_FLUSH_ONE: number = declareCounter(
  "guest.tlbFlush.one",
  "single-page TLB flushes (INVLPG) by the guest kernel",
  "flushes",
);
/** Full TLB flushes of the current address space. */
export const GUEST_FLUSH_ALL: number = declareCounter(
  "guest.tlbFlush.all",
  "full flushes of the current address space by the guest kernel",
  "flushes",
);
/** Pages cleared. */
export const GUEST_CLEAR_PAGE: number = declareCounter(
  "guest.clearPage",
  "pages cleared by the kernel (rep stosq)",
  "pages",
);
/** Pages copied. */
export const GUEST_COPY_PAGE: number = declareCounter(
  "guest.copyPage",
  "pages copied by the kernel (rep movsq)",
  "pages",
);
/** Context switches. */
export const GUEST_CONTEXT_SWITCH: number = declareCounter(
  "guest.contextSwitch",
  "switches from one process (or idle) to another",
  "switches",
);
/** fork calls that succeeded. */
export const GUEST_FORK: number = declareCounter("guest.fork", "processes forked", "calls");
/** exec calls that succeeded. */
export const GUEST_EXEC: number = declareCounter("guest.exec", "exec calls", "calls");
/** Processes that exited (killed ones included). */
export const GUEST_EXIT: number = declareCounter(
  "guest.exit",
  "processes that exited (killed ones included)",
  "processes",
);
/** Processes killed by a signal. */
export const GUEST_KILL: number = declareCounter(
  "guest.kill",
  "processes killed (SIGSEGV, out of memory)",
  "processes",
);
/** Pages written to swap. */
export const GUEST_SWAP_OUT: number = declareCounter(
  "guest.swapOut",
  "pages written to swap under memory pressure",
  "pages",
);
/** Entries the reclaim scan looked at. */
export const GUEST_RECLAIM_SCAN: number = declareCounter(
  "guest.reclaim.scanned",
  "present entries examined by the reclaim scan",
  "entries",
);
/** Out-of-memory kills and failed allocations. */
export const GUEST_OOM: number = declareCounter(
  "guest.oom",
  "allocations that failed with no frame to free",
  "events",
);

// ---------------------------------------------------------------------------------------
// Options and results.
// ---------------------------------------------------------------------------------------

/** 2 MiB. */
const SIZE_2M = 2 * 1024 * 1024;
/** The user half ends here (2^47). */
const USER_HALF_END = 2 ** 47;
/** Flags of a kernel table entry (_KERNPG_TABLE). */
const KERNEL_TABLE_FLAGS = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY;
/** Flags of a user table entry (_PAGE_TABLE). */
const USER_TABLE_FLAGS = KERNEL_TABLE_FLAGS | PTE_USER;
/** Direct-map leaf flags (__PAGE_KERNEL, global, with XD in the high word). */
const DIRECT_MAP_FLAGS = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | PTE_GLOBAL;
/** Kernel text leaf flags (__PAGE_KERNEL_ROX, global). */
const TEXT_FLAGS = PTE_PRESENT | PTE_ACCESSED | PTE_GLOBAL;
/** Linux's tlb_single_page_flush_ceiling. */
const DEFAULT_FLUSH_CEILING = 33;
/** Linux's TLB_NR_DYN_ASIDS: PCIDs 1..6 are handed to address spaces. */
const DYNAMIC_ASIDS = 6;
/** The lowest address mmap hands out (mmap_min_addr). */
const MMAP_MIN = 0x10000;

/** Options of {@link GuestKernel}. */
export interface GuestKernelOptions {
  /** Use PCIDs (CR4.PCIDE) so that a context switch keeps other spaces' TLB entries. */
  pcid?: boolean;
  /** Page size of the direct map: 4 KiB (default) or 2 MiB. */
  directMapPageSize?: 4096 | 2097152;
  /** Swap slots; default as many as guest frames. 0 disables swap. */
  swapSlots?: number;
  /** Free frames below which an allocation first reclaims; default frames / 64, at least 16. */
  lowWatermark?: number;
  /** Frames one reclaim pass tries to free (SWAP_CLUSTER_MAX); default 32. */
  reclaimBatch?: number;
  /** Pages above which a range flush becomes a full flush; default 33 as Linux. */
  flushCeiling?: number;
  /** Keep {@link GuestKernel.faultLog}; default false. */
  recordFaults?: boolean;
  /** Builds the paging-ops backend; default the native (instruction) backend. */
  pagingOps?: (code: KernelCode) => PagingOps;
  /** The system text's flavour: "native" (default) or "pv" (see entry_text.ts). */
  textFlavour?: TextFlavour;
}

/** An area of an executable image. */
export interface ImageArea {
  /** First address (page-aligned). */
  start: number;
  /** Bytes (rounded up to pages). */
  length: number;
  /** PROT_* bits. */
  prot: number;
  /** Name for reports. */
  name: string;
}

/** What exec loads: areas, and where the heap starts. */
export interface ExecImage {
  /** The areas (text, data, stack ...), none overlapping. */
  areas: readonly ImageArea[];
  /** Start of the heap (page-aligned, above every area but the stack). */
  brk: number;
}

/** The default image: 16 pages of text, 16 of data, the heap after them, 32 pages of stack. */
export const DEFAULT_IMAGE: ExecImage = {
  areas: [
    { start: IMAGE_TEXT_START, length: 16 * PAGE_SIZE, prot: PROT_READ | PROT_EXEC, name: "text" },
    { start: IMAGE_DATA_START, length: 16 * PAGE_SIZE, prot: PROT_READ | PROT_WRITE, name: "data" },
    {
      start: STACK_TOP - STACK_SIZE,
      length: STACK_SIZE,
      prot: PROT_READ | PROT_WRITE,
      name: "stack",
    },
  ],
  brk: IMAGE_DATA_START + 16 * PAGE_SIZE,
};

/** One genuine page fault, as the guest saw it. */
export interface GuestFault {
  /** The process that faulted. */
  pid: number;
  /** CR2 (48-bit linear value). */
  cr2: number;
  /** The #PF error code. */
  errorCode: number;
  /** How the kernel resolved it: demandZero, shared, cow, swapIn, protection, segv, spurious. */
  kind: string;
}

/** A reaped child: pid and how it ended. */
export interface WaitResult {
  /** The child's pid. */
  pid: number;
  /** Its exit code (0 if killed). */
  exitCode: number;
  /** The signal that killed it, or 0. */
  signal: number;
}

/** Frames and slots in use, for leak checks. */
export interface KernelUsage {
  /** Process page-table frames. */
  tables: number;
  /** User data frames. */
  user: number;
  /** Task frames. */
  tasks: number;
  /** Swap slots. */
  swapSlots: number;
  /** Free frames. */
  free: number;
}

/**
 * The guest kernel. Create it on a platform, {@link boot} it, then drive it with the
 * process calls; the lab's scenario API wraps these.
 *
 * @example Fork, copy-on-write, and the values each side sees
 * ```ts
 * import { GuestKernel } from "./kernel.ts";
 * import { NativePlatform } from "../platform/native.ts";
 * import assert from "node:assert/strict";
 *
 * const kernel = new GuestKernel(new NativePlatform({ frames: 4096 }));
 * kernel.boot();
 * const parent = kernel.spawn();
 * kernel.writeU32(parent, 0x600000, 1);
 * const child = kernel.fork(parent);
 * kernel.writeU32(child, 0x600000, 2); // copy-on-write: the child gets its own page
 * assert.equal(kernel.readU32(parent, 0x600000), 1);
 * assert.equal(kernel.readU32(child, 0x600000), 2);
 * kernel.exit(child, 0);
 * assert.deepEqual(kernel.wait(parent, child), { pid: child, exitCode: 0, signal: 0 });
 * ```
 */
export class GuestKernel {
  /** The platform the kernel runs on. */
  readonly platform: Platform;
  /** The frame allocator. */
  readonly frames: GuestFrameAllocator;
  /** The swap device. */
  readonly swap: SwapDevice;
  /** The paging-ops backend. */
  readonly ops: PagingOps;
  /** The kernel text bound to the platform. */
  readonly code: KernelCode;
  /** Genuine faults in order (when `recordFaults`). */
  readonly faultLog: GuestFault[] = [];
  /** Live processes (running and zombie), by pid. */
  readonly processes: Map<number, Process> = new Map();

  readonly #counts: Float64Array;
  readonly #pcid: boolean;
  readonly #directMapPageSize: number;
  readonly #lowWatermark: number;
  readonly #reclaimBatch: number;
  readonly #flushCeiling: number;
  readonly #recordFaults: boolean;
  readonly #entry = new EntryValue();
  readonly #old = new EntryValue();
  readonly #page = new Uint32Array(PAGE_SIZE / 4);
  #booted = false;
  #kernelMm: AddressSpace | null = null;
  #loadedMm: AddressSpace | null = null;
  #current: Process | null = null;
  #zeroGfn = 0;
  #nextPid = 1;
  #nextMmId = 1;
  #allocEpoch = 0;
  #reclaimCursor = 0;
  // Linux's swap cache, for slots still shared after a swap-in: slot -> frame.
  readonly #swapCache = new Map<number, number>();
  readonly #swapCacheSlot = new Map<number, number>(); // frame -> slot
  #inReclaim = false;
  // Linux's per-CPU ASID slots (arch/x86/mm/tlb.c): which space each PCID holds, and the
  // space's tlb_gen when the slot was last flushed.
  readonly #asidMm = new Int32Array(DYNAMIC_ASIDS).fill(-1);
  readonly #asidGen = new Float64Array(DYNAMIC_ASIDS);
  #nextAsid = 0;
  // The range that a tlb gather collected (Linux's mmu_gather start/end).
  #gatherStart = Infinity;
  #gatherEnd = -Infinity;

  /** A kernel for `platform`; nothing runs until {@link boot}. */
  constructor(platform: Platform, options: GuestKernelOptions = {}) {
    this.platform = platform;
    this.#counts = platform.stats.counts;
    this.frames = new GuestFrameAllocator(platform.guestFrames, platform.stats);
    this.swap = new SwapDevice(options.swapSlots ?? platform.guestFrames);
    this.code = new KernelCode(
      platform,
      new KernelText(KERNEL_TEXT_BASE, options.textFlavour ?? "native"),
    );
    this.ops = options.pagingOps?.(this.code) ?? new NativePagingOps(this.code);
    this.#pcid = options.pcid ?? false;
    this.#directMapPageSize = options.directMapPageSize ?? PAGE_SIZE;
    if (this.#directMapPageSize !== PAGE_SIZE && this.#directMapPageSize !== SIZE_2M) {
      throw new RangeError(
        `Cannot map the direct map with ${this.#directMapPageSize}-byte pages: use 4096 or 2097152`,
      );
    }
    this.#lowWatermark = options.lowWatermark ??
      Math.max(16, Math.floor(platform.guestFrames / 64));
    this.#reclaimBatch = options.reclaimBatch ?? 32;
    this.#flushCeiling = options.flushCeiling ?? DEFAULT_FLUSH_CEILING;
    this.#recordFaults = options.recordFaults ?? false;
  }

  /** The running process, or null when idle (the kernel's own address space is loaded). */
  get current(): Process | null {
    return this.#current;
  }

  /** Whether the domain crashed (a kernel bug or a hypervisor's verdict). */
  get isCrashed(): boolean {
    return this.platform.crashReason !== "";
  }

  // -------------------------------------------------------------------------------------
  // Boot.
  // -------------------------------------------------------------------------------------

  /**
   * Builds the kernel's tables as a boot loader would (the direct map, the kernel text, a
   * zero page), loads them into guest memory, enters paging and installs the trap
   * handlers. Throws a RangeError if called twice.
   */
  boot(): void {
    if (this.#booted) throw new RangeError("Cannot boot the guest kernel twice");
    this.#booted = true;
    const platform = this.platform;
    const frames = this.frames;
    const memoryBytes = platform.guestFrames * PAGE_SIZE;
    const store = (gpa: number, lo: number, hi: number) => {
      platform.loadGuestPhysical32(gpa, lo);
      platform.loadGuestPhysical32(gpa + 4, hi);
    };
    const newKernelTable = () => {
      const gfn = frames.allocate(FRAME_USE_KERNEL);
      for (let i = 0; i < PAGE_SIZE; i += 4) platform.loadGuestPhysical32(gfn * PAGE_SIZE + i, 0);
      return gfn;
    };
    const link = (tableGfn: number, index: number, toGfn: number) => {
      const to = toGfn * PAGE_SIZE;
      store(tableGfn * PAGE_SIZE + index * 8, pteLow(to, KERNEL_TABLE_FLAGS), pteHigh(to));
    };
    const l4 = newKernelTable();

    // The direct map: every guest-physical byte at DIRECT_MAP_BASE + gpa, XD, global.
    const dmL3 = newKernelTable();
    link(l4, levelIndex(DIRECT_MAP_BASE, 4), dmL3);
    const l2Tables = new Map<number, number>();
    const l1Tables = new Map<number, number>();
    const leafSize = this.#directMapPageSize;
    for (let gpa = 0; gpa < memoryBytes; gpa += leafSize) {
      const va = DIRECT_MAP_BASE + gpa;
      const gib = Math.floor(gpa / levelSpan(3));
      let l2 = l2Tables.get(gib);
      if (l2 === undefined) {
        l2 = newKernelTable();
        l2Tables.set(gib, l2);
        link(dmL3, levelIndex(va, 3), l2);
      }
      if (leafSize === SIZE_2M) {
        store(
          l2 * PAGE_SIZE + levelIndex(va, 2) * 8,
          pteLow(gpa, DIRECT_MAP_FLAGS | PTE_PAGE_SIZE),
          pteHigh(gpa, true),
        );
        continue;
      }
      const mib2 = Math.floor(gpa / SIZE_2M);
      let l1 = l1Tables.get(mib2);
      if (l1 === undefined) {
        l1 = newKernelTable();
        l1Tables.set(mib2, l1);
        link(l2, levelIndex(va, 2), l1);
      }
      store(
        l1 * PAGE_SIZE + levelIndex(va, 1) * 8,
        pteLow(gpa, DIRECT_MAP_FLAGS),
        pteHigh(gpa, true),
      );
    }

    // The kernel text: one read-only, executable, global page.
    const textL3 = newKernelTable();
    const textL2 = newKernelTable();
    const textL1 = newKernelTable();
    link(l4, levelIndex(KERNEL_TEXT_BASE, 4), textL3);
    link(textL3, levelIndex(KERNEL_TEXT_BASE, 3), textL2);
    link(textL2, levelIndex(KERNEL_TEXT_BASE, 2), textL1);
    const textGfn = frames.allocate(FRAME_USE_KERNEL);
    const bytes = this.code.text.bytes;
    for (let i = 0; i < PAGE_SIZE; i += 4) {
      const word = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
      platform.loadGuestPhysical32(textGfn * PAGE_SIZE + i, word >>> 0);
    }
    store(
      textL1 * PAGE_SIZE + levelIndex(KERNEL_TEXT_BASE, 1) * 8,
      pteLow(textGfn * PAGE_SIZE, TEXT_FLAGS),
      pteHigh(textGfn * PAGE_SIZE),
    );

    // The zero page that read faults of private memory map (empty_zero_page).
    this.#zeroGfn = newKernelTable();

    this.#kernelMm = new AddressSpace(0, l4);
    this.#loadedMm = this.#kernelMm;
    platform.start(l4 * PAGE_SIZE, CR4_PGE | (this.#pcid ? CR4_PCIDE : 0));
    platform.setTrapHandler(VECTOR_PF, this.#handleTrap);
    platform.setTrapHandler(VECTOR_GP, this.#handleTrap);
    platform.setTrapHandler(VECTOR_UD, this.#handleTrap);
  }

  /** Guest frame of the kernel's top level (init_mm's pgd). */
  get kernelL4Gfn(): number {
    return this.#requireBooted().l4Gfn;
  }

  /** Guest frame of the shared zero page. */
  get zeroPageGfn(): number {
    return this.#zeroGfn;
  }

  // -------------------------------------------------------------------------------------
  // Processes.
  // -------------------------------------------------------------------------------------

  /**
   * Creates a process running `image` (default {@link DEFAULT_IMAGE}) whose parent is the
   * lab (pid 0). Returns its pid, or -ENOMEM.
   */
  spawn(image: ExecImage = DEFAULT_IMAGE): number {
    this.#requireBooted();
    if (this.isCrashed) return -ENOMEM;
    const task = this.#allocate(FRAME_USE_TASK);
    if (task < 0) return -ENOMEM;
    this.#clearPage(task);
    const mm = this.#createMm();
    if (mm === null) {
      this.frames.put(task);
      return -ENOMEM;
    }
    this.#loadImage(mm, image);
    const process = new Process(this.#nextPid++, 0, task, mm);
    this.processes.set(process.pid, process);
    return process.pid;
  }

  /**
   * fork (kernel/fork.c dup_mm, mm/memory.c copy_page_range): the child gets a copy of
   * the parent's areas; private pages are shared copy-on-write (both sides' entries lose
   * RW, the frame gains a reference), swap entries gain a slot reference, shared areas are
   * not copied (the child faults their pages in from the object). The parent's TLB is
   * flushed once at the end (flush_tlb_mm). Returns the child's pid, or -ENOMEM. Throws a RangeError if `pid` is not running.
   */
  fork(pid: number): number {
    const parent = this.#running(pid);
    if (this.isCrashed) return -ENOMEM;
    this.#switchTo(parent);
    const task = this.#allocate(FRAME_USE_TASK);
    if (task < 0) return -ENOMEM;
    this.#copyPage(task, parent.taskGfn); // arch_dup_task_struct
    const parentMm = parent.mm!;
    const childMm = this.#createMm();
    if (childMm === null) {
      this.frames.put(task);
      return -ENOMEM;
    }
    childMm.brkStart = parentMm.brkStart;
    childMm.brkEnd = parentMm.brkEnd;
    let failed = false;
    for (const vma of parentMm.vmas.areas) {
      childMm.vmas.areas.push(vma.clone());
      if (vma.shared || failed) continue;
      this.ops.enterLazy();
      failed = !this.#copyRange(parentMm, childMm, vma);
      this.ops.leaveLazy();
    }
    this.#flushAll(); // flush_tlb_mm(oldmm): the parent's entries lost RW
    if (failed || this.isCrashed) {
      this.#destroyMm(childMm);
      this.frames.put(task);
      return -ENOMEM;
    }
    const child = new Process(this.#nextPid++, parent.pid, task, childMm);
    this.processes.set(child.pid, child);
    this.#counts[GUEST_FORK]++;
    return child.pid;
  }

  /**
   * exec (fs/exec.c exec_mmap): a new address space with `image`'s areas replaces the
   * old one, which is torn down after the switch. Returns 0 or -ENOMEM; throws a
   * RangeError if `pid` is not running.
   */
  exec(pid: number, image: ExecImage = DEFAULT_IMAGE): number {
    const process = this.#running(pid);
    if (this.isCrashed) return -ENOMEM;
    this.#switchTo(process);
    const mm = this.#createMm();
    if (mm === null) return -ENOMEM;
    this.#loadImage(mm, image);
    const old = process.mm!;
    process.mm = mm;
    this.#switchMm(mm);
    this.#destroyMm(old);
    this.#counts[GUEST_EXEC]++;
    return 0;
  }

  /**
   * exit (kernel/exit.c do_exit, mm/mmap.c exit_mmap): zaps every page, frees the page
   * tables, flushes, switches to the kernel's address space and frees the top level. The
   * process stays a zombie until its parent waits; its children go to the lab (pid 0).
   */
  exit(pid: number, exitCode: number): void {
    const process = this.#running(pid);
    this.#switchTo(process);
    this.#exit(process, exitCode, 0, "");
  }

  /**
   * exec's loader for one page: fills the page at `va` (page-aligned, inside an area of
   * process `pid`, not yet mapped) with `bytes` (at most 4096, the rest zero), read from
   * disk by DMA into a new frame, and maps it with the area's protection, as a file page
   * faulted in by the loader. Returns 0, -EINVAL (no area, not aligned, already mapped,
   * too many bytes) or -ENOMEM. Throws a RangeError if `pid` is not running.
   */
  loadPage(pid: number, va: number, bytes: Uint8Array): number {
    const process = this.#running(pid);
    const mm = process.mm!;
    if (!isPageAligned(va) || bytes.length > PAGE_SIZE) return -EINVAL;
    const vma = mm.vmas.find(va);
    if (vma === undefined || vma.deviceGfn >= 0 || vma.shared) return -EINVAL;
    const l1e = this.#l1eAddress(mm, va, true);
    if (l1e < 0) return -ENOMEM;
    const e = this.#readEntry(1, l1e);
    if (e.lo !== 0 || e.hi !== 0) return -EINVAL;
    const gfn = this.#allocate(FRAME_USE_USER);
    if (gfn < 0) return -ENOMEM;
    const page = this.#page;
    page.fill(0);
    new Uint8Array(page.buffer, page.byteOffset, PAGE_SIZE).set(bytes);
    this.platform.dmaWrite(gfn, page);
    const pa = gfn * PAGE_SIZE;
    const lo = this.#protectedEntry(
      pteLow(pa, PTE_PRESENT | PTE_USER),
      pteHigh(pa),
      vma.prot,
      false,
    );
    this.#setEntry(1, l1e, lo, this.#wantHi);
    return 0;
  }

  /**
   * The kernel's exception entry in C (Linux's do_page_fault / do_trap): what the
   * entry stubs' trap service calls for an exception. A user #PF is resolved (demand
   * zero, COW, swap-in) or kills the process with SIGSEGV; another exception from user
   * mode kills it; any exception from kernel mode is an oops that crashes the domain.
   * Returns TRAP_RETRY (re-execute the instruction) or TRAP_ABANDON (the process is gone).
   */
  handleTrap(vector: number, errorCode: number, cr2: number, fromUser: boolean): number {
    return this.#handleTrap(vector, errorCode, cr2, fromUser);
  }

  /**
   * Reaps a zombie child of `parentPid` (0: the lab); `childPid` -1 means any. Returns the
   * child's status, null if the child(ren) still run, or -ECHILD if there is none. A
   * parent process is switched to first (it is the one calling wait).
   */
  wait(parentPid: number, childPid = -1): WaitResult | null | number {
    // The parent runs to call wait (the lab, pid 0, needs no switch).
    if (parentPid !== 0) this.#switchTo(this.#running(parentPid));
    let found = false;
    for (const child of this.processes.values()) {
      if (child.parentPid !== parentPid || (childPid !== -1 && child.pid !== childPid)) continue;
      found = true;
      if (child.state !== "zombie") continue;
      this.processes.delete(child.pid);
      this.frames.put(child.taskGfn);
      return { pid: child.pid, exitCode: child.exitCode, signal: child.signal };
    }
    return found ? null : -ECHILD;
  }

  /** The process `pid` (running or zombie), or undefined. */
  process(pid: number): Process | undefined {
    return this.processes.get(pid);
  }

  /**
   * Runs the scheduler: switches to the next running process after the current one (in
   * pid order, wrapping). Returns its pid, or 0 if nothing runs.
   */
  schedule(): number {
    const running = [...this.processes.values()].filter((p) => p.state === "running");
    if (running.length === 0) return 0;
    const after = this.#current?.pid ?? 0;
    const next = running.find((p) => p.pid > after) ?? running[0]!;
    this.#switchTo(next);
    return next.pid;
  }

  /** Makes `pid` the running process (a context switch if it is not). */
  switchTo(pid: number): void {
    this.#switchTo(this.#running(pid));
  }

  // -------------------------------------------------------------------------------------
  // Memory calls.
  // -------------------------------------------------------------------------------------

  /**
   * mmap of anonymous memory: `length` bytes (rounded up to pages) with `prot`, private or
   * `shared`, at `address` when `fixed` (replacing what was there) or else placed
   * top-down below MMAP_BASE. Returns the address, -EINVAL or -ENOMEM.
   */
  mmap(
    pid: number,
    length: number,
    prot: number,
    options: { shared?: boolean; fixed?: number } = {},
  ): number {
    const process = this.#running(pid);
    const mm = process.mm!;
    const bytes = roundUpToPage(length);
    if (!Number.isInteger(length) || length <= 0 || (prot & ~7) !== 0) return -EINVAL;
    let start: number;
    if (options.fixed !== undefined) {
      start = options.fixed;
      if (!isPageAligned(start) || start < MMAP_MIN || start + bytes > USER_HALF_END) {
        return -EINVAL;
      }
      if (mm.vmas.overlaps(start, start + bytes)) this.munmap(pid, start, bytes);
    } else {
      start = mm.vmas.findGapTopDown(bytes, MMAP_BASE, MMAP_MIN);
      if (start < 0) return -ENOMEM;
    }
    const object = options.shared === true ? new SharedObject() : null;
    mm.vmas.insert(new Vma(start, start + bytes, prot, "mmap", object));
    return start;
  }

  /**
   * Maps the platform's device registers (one page) into process `pid`, as a driver's
   * mmap with remap_pfn_range does: the entry is installed at once, uncached. Returns the
   * address or -ENOMEM.
   */
  mmapDevice(pid: number): number {
    const process = this.#running(pid);
    const mm = process.mm!;
    const start = mm.vmas.findGapTopDown(PAGE_SIZE, MMAP_BASE, MMAP_MIN);
    if (start < 0) return -ENOMEM;
    const vma = new Vma(
      start,
      start + PAGE_SIZE,
      PROT_READ | PROT_WRITE,
      "device",
      null,
      0,
      this.platform.deviceGfn,
    );
    mm.vmas.insert(vma);
    this.#switchTo(process);
    const l1e = this.#l1eAddress(mm, start, true);
    if (l1e < 0) return -ENOMEM;
    this.#setEntry(1, l1e, ...this.#deviceEntry(vma, start));
    return start;
  }

  /**
   * munmap (mm/mmap.c unmap_region): zaps the range's pages, frees page tables that no
   * area needs any more, and flushes the range (INVLPG per page up to the flush ceiling,
   * else a full flush). Returns 0 or -EINVAL.
   */
  munmap(pid: number, address: number, length: number): number {
    const process = this.#running(pid);
    if (!isPageAligned(address) || !Number.isInteger(length) || length <= 0) return -EINVAL;
    const end = address + roundUpToPage(length);
    if (end > USER_HALF_END) return -EINVAL;
    this.#switchTo(process);
    this.#unmapRange(process.mm!, address, end);
    return 0;
  }

  /**
   * mprotect (mm/mprotect.c change_protection): sets the areas' protection and changes
   * the present entries (RW removed, XD set or cleared, PROT_NONE made non-present), then
   * flushes each area's range. Write access is granted to private pages only by a later
   * write fault (copy-on-write stays correct). Returns 0, -EINVAL, or -ENOMEM when the
   * range is not fully mapped.
   */
  mprotect(pid: number, address: number, length: number, prot: number): number {
    const process = this.#running(pid);
    if (!isPageAligned(address) || !Number.isInteger(length) || length < 0 || (prot & ~7) !== 0) {
      return -EINVAL;
    }
    const end = address + roundUpToPage(length);
    const mm = process.mm!;
    if (!mm.vmas.covers(address, end)) return -ENOMEM;
    this.#switchTo(process);
    for (const vma of mm.vmas.isolate(address, end)) {
      vma.prot = prot;
      if (this.#changeProtection(mm, vma) > 0) this.#flushRange(mm, vma.start, vma.end);
    }
    return 0;
  }

  /**
   * brk: moves the heap's end to `newEnd` (0 queries). Growing adds to the heap area;
   * shrinking unmaps the pages past the new end. Returns the new break, or the old one
   * when the request cannot be met (as Linux does).
   */
  brk(pid: number, newEnd: number): number {
    const process = this.#running(pid);
    const mm = process.mm!;
    if (newEnd === 0 || !Number.isInteger(newEnd) || newEnd < mm.brkStart) return mm.brkEnd;
    const oldTop = roundUpToPage(mm.brkEnd);
    const newTop = roundUpToPage(newEnd);
    if (newTop > oldTop) {
      if (newTop > MMAP_BASE || mm.vmas.overlaps(oldTop, newTop)) return mm.brkEnd;
      const heap = oldTop > mm.brkStart ? mm.vmas.find(oldTop - 1) : undefined;
      if (heap !== undefined && heap.name === "heap" && heap.end === oldTop) heap.end = newTop;
      else mm.vmas.insert(new Vma(oldTop, newTop, PROT_READ | PROT_WRITE, "heap"));
    } else if (newTop < oldTop) {
      this.#switchTo(process);
      this.#unmapRange(mm, newTop, oldTop);
    }
    mm.brkEnd = newEnd;
    return newEnd;
  }

  // -------------------------------------------------------------------------------------
  // User accesses.
  // -------------------------------------------------------------------------------------

  /**
   * One access by process `pid` at CPL 3 (switching to it first). Reads leave the value in
   * the platform's `cpu.data` / `cpu.dataHi`. Returns RUN_DONE, RUN_ABANDONED (the process
   * was killed) or RUN_CRASHED. Throws a RangeError if `pid` is not running.
   */
  access(
    pid: number,
    va: number,
    size: 1 | 2 | 4 | 8,
    kind: AccessKind,
    lo = 0,
    hi = 0,
  ): number {
    const process = this.#current;
    if (process === null || process.pid !== pid) this.#switchTo(this.#running(pid));
    return this.platform.access(va, size, kind, lo, hi, true);
  }

  /** Reads a u32 of process `pid` at `va`; throws a RangeError if the access fails. */
  readU32(pid: number, va: number): number {
    this.#expectDone(this.access(pid, va, 4, ACCESS_READ), pid, va);
    return this.platform.cpu.data;
  }

  /** Writes a u32 of process `pid` at `va`; throws a RangeError if the access fails. */
  writeU32(pid: number, va: number, value: number): void {
    this.#expectDone(this.access(pid, va, 4, ACCESS_WRITE, value >>> 0, 0), pid, va);
  }

  /** Frames and swap slots in use (for leak checks). */
  usage(): KernelUsage {
    const f = this.frames;
    return {
      tables: f.inUse(FRAME_USE_TABLE),
      user: f.inUse(FRAME_USE_USER),
      tasks: f.inUse(FRAME_USE_TASK),
      swapSlots: this.swap.used,
      free: f.freeFrames,
    };
  }

  /** The guest-physical address of `va`'s leaf entry in `pid`'s tables, or -1 (for tests). */
  leafEntryAddress(pid: number, va: number): number {
    return this.#l1eAddress(this.#running(pid).mm!, va, false);
  }

  // -------------------------------------------------------------------------------------
  // The fault handler (arch/x86/mm/fault.c, mm/memory.c handle_mm_fault).
  // -------------------------------------------------------------------------------------

  readonly #handleTrap = (
    vector: number,
    errorCode: number,
    cr2: number,
    fromUser: boolean,
  ): number => {
    const process = this.#current;
    if (!fromUser || process === null) {
      // The kernel never faults on its own memory: an oops ends the domain.
      this.platform.crash(
        `kernel oops: vector ${vector} error code ${formatHex(errorCode)} at ${formatLinear(cr2)}`,
      );
      return TRAP_ABANDON;
    }
    if (vector !== VECTOR_PF) {
      this.#kill(process, SIGSEGV, `vector ${vector} in user mode`);
      return TRAP_ABANDON;
    }
    this.#counts[GUEST_FAULT]++;
    const kind = this.#resolveFault(process, errorCode, cr2);
    this.platform.stats.trace?.(`guest.fault.${kind}`, cr2, errorCode);
    if (this.#recordFaults) this.faultLog.push({ pid: process.pid, cr2, errorCode, kind });
    return kind === "protection" || kind === "segv" || kind === "oom" ? TRAP_ABANDON : TRAP_RETRY;
  };

  // Resolves a user #PF; returns the kind (see GuestFault.kind), or "oom" when killed
  // for lack of memory.
  #resolveFault(process: Process, errorCode: number, cr2: number): string {
    const mm = process.mm!;
    if ((errorCode & PFEC_RSVD) !== 0) {
      this.platform.crash(`kernel bug: reserved bit set in a table for ${formatLinear(cr2)}`);
      return "crash";
    }
    const vma = mm.vmas.find(cr2);
    if (vma === undefined) {
      this.#counts[GUEST_FAULT_SEGV]++;
      this.#kill(process, SIGSEGV, `SEGV_MAPERR at ${formatLinear(cr2)}`);
      return "segv";
    }
    const write = (errorCode & PFEC_WRITE) !== 0;
    const fetch = (errorCode & PFEC_FETCH) !== 0;
    const needed = write ? PROT_WRITE : fetch ? PROT_EXEC : PROT_READ;
    if ((vma.prot & needed) === 0) {
      this.#counts[GUEST_FAULT_PROTECTION]++;
      this.#kill(process, SIGSEGV, `SEGV_ACCERR at ${formatLinear(cr2)}`);
      return "protection";
    }
    const va = cr2 - (cr2 % PAGE_SIZE);
    const l1e = this.#l1eAddress(mm, va, true);
    if (l1e < 0) return this.#outOfMemory(process);
    const e = this.#readEntry(1, l1e);
    const lo = e.lo;
    const hi = e.hi;
    if ((lo & PTE_PRESENT) === 0) {
      if ((lo & PTE_SOFT_SWAP) !== 0) return this.#swapIn(process, vma, va, l1e, lo, hi, write);
      if (lo !== 0 || hi !== 0) {
        this.platform.crash(
          `kernel bug: entry ${formatHex(hi)}:${formatHex(lo)} for ${formatLinear(va)} ` +
            `is not present in an accessible area`,
        );
        return "crash";
      }
      if (vma.deviceGfn >= 0) return this.#deviceFault(vma, va, l1e);
      return vma.shared
        ? this.#sharedFault(process, vma, va, l1e, write)
        : this.#anonymousFault(process, vma, l1e, write);
    }
    if (write && (lo & PTE_WRITABLE) === 0) {
      return this.#writeProtectFault(process, vma, va, l1e, lo, hi);
    }
    if (fetch && (hi & PTE_HI_XD) !== 0) {
      this.#updateFlags(false, l1e, 0, PTE_HI_XD); // cannot happen after mprotect; be safe
    }
    this.#counts[GUEST_FAULT_SPURIOUS]++;
    return "spurious";
  }

  // do_anonymous_page: a read maps the zero page, a write a new zeroed page.
  #anonymousFault(process: Process, vma: Vma, l1e: number, write: boolean): string {
    const xd = (vma.prot & PROT_EXEC) === 0;
    if (!write) {
      const zero = this.#zeroGfn * PAGE_SIZE;
      this.#setEntry(1, l1e, pteLow(zero, PTE_PRESENT | PTE_USER), pteHigh(zero, xd));
    } else {
      const gfn = this.#allocate(FRAME_USE_USER);
      if (gfn < 0) return this.#outOfMemory(process);
      this.#clearPage(gfn);
      const pa = gfn * PAGE_SIZE;
      this.#setEntry(
        1,
        l1e,
        pteLow(pa, PTE_PRESENT | PTE_USER | PTE_WRITABLE | PTE_DIRTY),
        pteHigh(pa, xd),
      );
    }
    this.#counts[GUEST_FAULT_DEMAND_ZERO]++;
    return "demandZero";
  }

  // A device mapping's entry: the registers' frame, uncached (PCD | PWT), never executable.
  #deviceFault(vma: Vma, va: number, l1e: number): string {
    this.#setEntry(1, l1e, ...this.#deviceEntry(vma, va));
    this.#counts[GUEST_FAULT_SHARED]++;
    return "shared";
  }

  #deviceEntry(vma: Vma, va: number): [number, number] {
    const gpa = (vma.deviceGfn + vma.pgoff + (va - vma.start) / PAGE_SIZE) * PAGE_SIZE;
    const rw = (vma.prot & PROT_WRITE) !== 0 ? PTE_WRITABLE : 0;
    const flags = PTE_PRESENT | PTE_USER | PTE_ACCESSED | PTE_PCD | PTE_PWT | rw;
    return [pteLow(gpa, flags), pteHigh(gpa, true)];
  }

  // shmem_fault + do_set_pte: the object's page, created zeroed on first touch.
  #sharedFault(process: Process, vma: Vma, va: number, l1e: number, write: boolean): string {
    const object = vma.object!;
    const index = vma.pgoff + (va - vma.start) / PAGE_SIZE;
    let gfn = object.pages.get(index);
    let kind = "shared";
    if (gfn === undefined) {
      gfn = this.#allocate(FRAME_USE_USER);
      if (gfn < 0) return this.#outOfMemory(process);
      this.#clearPage(gfn);
      object.pages.set(index, gfn);
      kind = "demandZero";
    }
    this.frames.get(gfn);
    const pa = gfn * PAGE_SIZE;
    const rw = (vma.prot & PROT_WRITE) !== 0 ? PTE_WRITABLE : 0;
    this.#setEntry(
      1,
      l1e,
      pteLow(pa, PTE_PRESENT | PTE_USER | rw | (write ? PTE_DIRTY : 0)),
      pteHigh(pa, (vma.prot & PROT_EXEC) === 0),
    );
    this.#counts[kind === "shared" ? GUEST_FAULT_SHARED : GUEST_FAULT_DEMAND_ZERO]++;
    return kind;
  }

  // do_wp_page: reuse the page if this is its only reference, else copy it.
  #writeProtectFault(
    process: Process,
    vma: Vma,
    va: number,
    l1e: number,
    lo: number,
    hi: number,
  ): string {
    this.#counts[GUEST_FAULT_COW]++;
    const gfn = Math.floor(pteAddress(lo, hi) / PAGE_SIZE);
    if (vma.shared || (gfn !== this.#zeroGfn && this.frames.refcount[gfn] === 1)) {
      // wp_page_reuse: ptep_set_access_flags; the #PF already dropped the TLB entry.
      this.#updateFlags(true, l1e, PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY, 0);
      this.#counts[GUEST_COW_REUSE]++;
      return "cow";
    }
    // wp_page_copy: new page, ptep_clear_flush, set_pte, drop the old reference. The old
    // page is held (get_page) while the copy is allocated, so reclaim cannot take it.
    const epoch = this.#allocEpoch;
    const pinned = gfn !== this.#zeroGfn;
    if (pinned) this.frames.get(gfn);
    const copy = this.#allocate(FRAME_USE_USER);
    if (pinned) this.frames.put(gfn);
    if (copy < 0) return this.#outOfMemory(process);
    if (epoch !== this.#allocEpoch) {
      // The allocation reclaimed memory, maybe this very page (it may be in swap now):
      // if the entry no longer maps it, give the frame back and let the access fault anew.
      const e = this.#readEntry(1, l1e);
      if ((e.lo & PTE_PRESENT) === 0 || pteAddress(e.lo, e.hi) !== pteAddress(lo, hi)) {
        this.frames.put(copy);
        this.#counts[GUEST_FAULT_SPURIOUS]++;
        return "spurious";
      }
    }
    if (gfn === this.#zeroGfn) this.#clearPage(copy);
    else this.#copyPage(copy, gfn);
    this.#clearEntry(1, l1e);
    this.#flushPage(process.mm!, va);
    const pa = copy * PAGE_SIZE;
    this.#setEntry(
      1,
      l1e,
      pteLow(pa, PTE_PRESENT | PTE_USER | PTE_WRITABLE | PTE_DIRTY),
      pteHigh(pa, (vma.prot & PROT_EXEC) === 0),
    );
    if (gfn !== this.#zeroGfn) this.frames.put(gfn);
    this.#counts[GUEST_COW_COPY]++;
    return "cow";
  }

  // do_swap_page: read the slot into a frame by DMA and map it. A slot that other
  // entries still name (shared since a fork) goes through the swap cache: the first
  // swap-in reads it, the others map the same frame read-only, and a write then copies
  // (copy-on-write, as before the page went out).
  #swapIn(
    process: Process,
    vma: Vma,
    va: number,
    l1e: number,
    lo: number,
    hi: number,
    write: boolean,
  ): string {
    const slot = Math.floor(pteAddress(lo, hi) / PAGE_SIZE);
    if (!this.swap.isInUse(slot)) {
      this.platform.crash(`kernel bug: swap entry for ${formatLinear(va)} names free slot ${slot}`);
      return "crash";
    }
    const xd = (vma.prot & PROT_EXEC) === 0;
    const shared = this.swap.references(slot) > 1;
    let gfn = this.#swapCache.get(slot) ?? -1;
    if (gfn < 0) {
      gfn = this.#allocate(FRAME_USE_USER);
      if (gfn < 0) return this.#outOfMemory(process);
      this.platform.dmaWrite(gfn, this.swap.page(slot));
      if (shared) {
        this.#swapCache.set(slot, gfn); // the cache's own reference
        this.#swapCacheSlot.set(gfn, slot);
        this.frames.get(gfn);
      }
    } else {
      this.frames.get(gfn);
    }
    const pa = gfn * PAGE_SIZE;
    // Mapped young (A set), as a page just faulted in is on the active list: reclaim
    // gives it a second chance instead of taking it straight back.
    const rw = write && !shared ? PTE_WRITABLE | PTE_DIRTY : 0;
    this.#setEntry(1, l1e, pteLow(pa, PTE_PRESENT | PTE_USER | PTE_ACCESSED | rw), pteHigh(pa, xd));
    this.#putSlot(slot);
    this.#counts[GUEST_FAULT_SWAP_IN]++;
    return "swapIn";
  }

  // swap_free: drops a slot reference; the last one also drops the swap cache's frame.
  #putSlot(slot: number): void {
    this.swap.put(slot);
    if (this.swap.isInUse(slot)) return;
    const cached = this.#swapCache.get(slot);
    if (cached === undefined) return;
    this.#swapCache.delete(slot);
    this.#swapCacheSlot.delete(cached);
    this.frames.put(cached);
  }

  #outOfMemory(process: Process): string {
    this.#kill(process, SIGKILL, "out of memory");
    return "oom";
  }

  #kill(process: Process, signal: number, reason: string): void {
    this.#counts[GUEST_KILL]++;
    this.#switchTo(process);
    this.#exit(process, 0, signal, reason);
  }

  // -------------------------------------------------------------------------------------
  // Address spaces.
  // -------------------------------------------------------------------------------------

  // pgd_alloc: a zeroed top level with the kernel half copied in (clone_pgd_range).
  #createMm(): AddressSpace | null {
    const l4 = this.#allocate(FRAME_USE_TABLE);
    if (l4 < 0) return null;
    this.#counts[GUEST_TABLE_ALLOC]++;
    this.#clearPage(l4);
    const half = PAGE_SIZE / 2;
    this.code.copyQwords(l4 * PAGE_SIZE + half, this.#kernelMm!.l4Gfn * PAGE_SIZE + half, 256);
    this.ops.newTable(4, l4);
    return new AddressSpace(this.#nextMmId++, l4);
  }

  #loadImage(mm: AddressSpace, image: ExecImage): void {
    for (const area of image.areas) {
      mm.vmas.insert(
        new Vma(area.start, area.start + roundUpToPage(area.length), area.prot, area.name),
      );
    }
    mm.brkStart = image.brk;
    mm.brkEnd = image.brk;
  }

  // exit_mmap + pgd_free. A loaded space is flushed, then the kernel's space is loaded
  // before the top level is released (a PV hypervisor refuses to free a loaded base).
  #destroyMm(mm: AddressSpace): void {
    const loaded = mm === this.#loadedMm;
    const areas = mm.vmas.removeRange(0, USER_HALF_END);
    for (const vma of areas) {
      this.#zapRange(mm, vma.start, vma.end);
      this.#releaseArea(vma);
    }
    // free_pgtables area by area, as exit_mmap does: the floor stays at the bottom and
    // the ceiling is the next area's start, so a table shared with the next area is
    // freed by the next area's turn (which reaches it) and never twice.
    for (let i = 0; i < areas.length; i++) {
      const ceiling = i + 1 < areas.length ? areas[i + 1]!.start : USER_HALF_END;
      this.#freeTables(mm, areas[i]!.start, areas[i]!.end, 0, ceiling);
    }
    this.#gatherStart = Infinity;
    this.#gatherEnd = -Infinity;
    if (loaded) {
      this.#flushAll(); // tlb_finish_mmu of a full-mm gather
      this.#switchMm(this.#kernelMm!);
    }
    const slot = this.#asidMm.indexOf(mm.id);
    if (slot >= 0) this.#asidMm[slot] = -1;
    this.ops.releaseTable(4, mm.l4Gfn);
    this.frames.put(mm.l4Gfn);
    this.#counts[GUEST_TABLE_FREE]++;
  }

  #exit(process: Process, exitCode: number, signal: number, reason: string): void {
    const mm = process.mm!;
    process.mm = null;
    process.state = "zombie";
    process.exitCode = exitCode;
    process.signal = signal;
    process.killReason = reason;
    this.#destroyMm(mm);
    this.#current = null;
    for (const child of this.processes.values()) {
      if (child.parentPid === process.pid) child.parentPid = 0;
    }
    this.#counts[GUEST_EXIT]++;
  }

  #releaseArea(vma: Vma): void {
    const object = vma.object;
    if (object === null || --object.areas > 0) return;
    for (const gfn of object.pages.values()) this.frames.put(gfn);
    object.pages.clear();
  }

  // copy_page_range for one private area: per leaf table of the parent, the child's
  // table is found (or allocated) once, then each entry is copied (copy_pte_range).
  #copyRange(parentMm: AddressSpace, childMm: AddressSpace, vma: Vma): boolean {
    let ok = true;
    let region = -1; // the 2 MiB region whose child leaf table is `childTable`
    let childTable = -1;
    this.#forEachLeaf(parentMm, vma.start, vma.end, (pl1e, va) => {
      let lo = this.#entry.lo;
      let hi = this.#entry.hi;
      if (lo === 0 && hi === 0) return false;
      if (Math.floor(va / SIZE_2M) !== region) {
        const epoch = this.#allocEpoch;
        const cl1e = this.#l1eAddress(childMm, va, true);
        if (cl1e < 0) {
          ok = false;
          return true;
        }
        region = Math.floor(va / SIZE_2M);
        childTable = cl1e - levelIndex(va, 1) * 8;
        if (epoch !== this.#allocEpoch) {
          // The allocation reclaimed memory, maybe this very page: read it again.
          const e = this.#readEntry(1, pl1e);
          lo = e.lo;
          hi = e.hi;
          if (lo === 0 && hi === 0) return false;
        }
      }
      if ((lo & PTE_PRESENT) !== 0 || (lo & PTE_SOFT_PROTNONE) !== 0) {
        const gfn = Math.floor(pteAddress(lo, hi) / PAGE_SIZE);
        if (gfn !== this.#zeroGfn) this.frames.get(gfn);
        if ((lo & PTE_WRITABLE) !== 0) {
          this.#updateFlags(false, pl1e, PTE_WRITABLE, 0); // ptep_set_wrprotect
          lo &= ~PTE_WRITABLE;
        }
        lo &= ~PTE_ACCESSED; // pte_mkold
      } else if ((lo & PTE_SOFT_SWAP) !== 0) {
        this.swap.get(Math.floor(pteAddress(lo, hi) / PAGE_SIZE)); // swap_duplicate
      }
      this.#setEntry(1, childTable + levelIndex(va, 1) * 8, lo >>> 0, hi);
      return false;
    });
    return ok;
  }

  // zap_pte_range: clear every entry of [start, end), dropping frame and slot references;
  // present entries join the gather range for the flush.
  #zapRange(mm: AddressSpace, start: number, end: number): void {
    // zap_pte_range batches its clears in lazy MMU mode (a PV guest sends them together).
    this.ops.enterLazy();
    this.#forEachLeaf(mm, start, end, (l1e, va) => {
      if (this.#entry.lo === 0 && this.#entry.hi === 0) return false;
      const old = this.#clearEntry(1, l1e);
      const lo = old.lo;
      const target = Math.floor(pteAddress(lo, old.hi) / PAGE_SIZE);
      if ((lo & PTE_PRESENT) !== 0 || (lo & PTE_SOFT_PROTNONE) !== 0) {
        // Device frames (above RAM) and the zero page hold no reference.
        if (target !== this.#zeroGfn && target < this.frames.frames) this.frames.put(target);
        if ((lo & PTE_PRESENT) !== 0) this.#gather(va, va + PAGE_SIZE);
      } else if ((lo & PTE_SOFT_SWAP) !== 0) {
        this.#putSlot(target);
      }
      return false;
    });
    this.ops.leaveLazy();
  }

  #unmapRange(mm: AddressSpace, start: number, end: number): void {
    for (const vma of mm.vmas.removeRange(start, end)) {
      this.#zapRange(mm, vma.start, vma.end);
      this.#releaseArea(vma);
    }
    // free_pgtables between the neighbouring areas.
    let floor = 0;
    let ceiling = USER_HALF_END;
    for (const v of mm.vmas.areas) {
      if (v.end <= start) floor = Math.max(floor, v.end);
      if (v.start >= end) ceiling = Math.min(ceiling, v.start);
    }
    this.#freeTables(mm, start, end, floor, ceiling);
    this.#finishGather(mm);
  }

  // change_pte_range for one area with its new protection; returns entries changed.
  #changeProtection(mm: AddressSpace, vma: Vma): number {
    let changed = 0;
    this.ops.enterLazy(); // change_pte_range runs in lazy MMU mode too
    const prot = vma.prot;
    this.#forEachLeaf(mm, vma.start, vma.end, (l1e) => {
      const lo = this.#entry.lo;
      if ((lo & PTE_PRESENT) === 0 && (lo & PTE_SOFT_PROTNONE) === 0) return false;
      const want = this.#protectedEntry(lo, this.#entry.hi, prot, vma.shared);
      if (want === lo && this.#wantHi === this.#entry.hi) return false;
      const old = this.#old;
      this.ops.startProtectionChange(l1e, old);
      const newLo = this.#protectedEntry(old.lo, old.hi, prot, vma.shared);
      this.ops.commitProtectionChange(l1e, newLo, this.#wantHi);
      this.#counts[GUEST_PTE_PROT]++;
      changed++;
      return false;
    });
    this.ops.leaveLazy();
    return changed;
  }

  #wantHi = 0;

  // pte_modify: the entry with protection `prot` (high word left in #wantHi).
  #protectedEntry(lo: number, hi: number, prot: number, shared: boolean): number {
    this.#wantHi = (prot & PROT_EXEC) !== 0 ? (hi & ~PTE_HI_XD) >>> 0 : (hi | PTE_HI_XD) >>> 0;
    if (prot === 0) {
      return ((lo & ~(PTE_PRESENT | PTE_WRITABLE)) | PTE_SOFT_PROTNONE) >>> 0;
    }
    let out = ((lo & ~PTE_SOFT_PROTNONE) | PTE_PRESENT | PTE_USER) >>> 0;
    if ((prot & PROT_WRITE) === 0) out &= ~PTE_WRITABLE;
    else if (shared) out |= PTE_WRITABLE;
    return out >>> 0;
  }

  // -------------------------------------------------------------------------------------
  // Page tables.
  // -------------------------------------------------------------------------------------

  // The guest-physical address of va's l1e in mm, allocating missing tables when `alloc`
  // (pud_alloc / pmd_alloc / pte_alloc); -1 if a table is missing or none can be had.
  #l1eAddress(mm: AddressSpace, va: number, alloc: boolean): number {
    let table = mm.l4Gfn;
    for (let level = 4; level > 1; level--) {
      const entryGpa = table * PAGE_SIZE + levelIndex(va, level) * 8;
      const e = this.#readEntry(level, entryGpa);
      if ((e.lo & PTE_PRESENT) !== 0) {
        table = Math.floor(pteAddress(e.lo, e.hi) / PAGE_SIZE);
        continue;
      }
      if (!alloc) return -1;
      const gfn = this.#allocate(FRAME_USE_TABLE);
      if (gfn < 0) return -1;
      this.#counts[GUEST_TABLE_ALLOC]++;
      this.#clearPage(gfn);
      this.ops.newTable(level - 1, gfn);
      const pa = gfn * PAGE_SIZE;
      this.#setEntry(level, entryGpa, pteLow(pa, USER_TABLE_FLAGS), pteHigh(pa));
      table = gfn;
    }
    return table * PAGE_SIZE + levelIndex(va, 1) * 8;
  }

  // Calls visit(l1eGpa, va) for every l1e of [start, end) whose table exists, with the
  // entry in #entry. A true return stops the walk.
  #forEachLeaf(
    mm: AddressSpace,
    start: number,
    end: number,
    visit: (l1e: number, va: number) => boolean,
  ): void {
    this.#walkLevel(4, mm.l4Gfn, start, end, visit);
  }

  #walkLevel(
    level: number,
    table: number,
    start: number,
    end: number,
    visit: (l1e: number, va: number) => boolean,
  ): boolean {
    const span = levelSpan(level);
    for (let va = start; va < end;) {
      const next = Math.min(end, (Math.floor(va / span) + 1) * span);
      const entryGpa = table * PAGE_SIZE + levelIndex(va, level) * 8;
      const e = this.#readEntry(level, entryGpa);
      if (this.isCrashed) return true;
      if (level === 1) {
        if (visit(entryGpa, va)) return true;
      } else if ((e.lo & PTE_PRESENT) !== 0) {
        const child = Math.floor(pteAddress(e.lo, e.hi) / PAGE_SIZE);
        if (this.#walkLevel(level - 1, child, va, next, visit)) return true;
      }
      va = next;
    }
    return false;
  }

  // free_pgd_range: frees each table below `level` whose whole span lies in
  // [floor, ceiling) and meets [start, end): its entry is cleared, the table released.
  #freeTables(mm: AddressSpace, start: number, end: number, floor: number, ceiling: number): void {
    this.#freeLevel(4, mm.l4Gfn, start, end, floor, ceiling);
  }

  #freeLevel(
    level: number,
    table: number,
    start: number,
    end: number,
    floor: number,
    ceiling: number,
  ): void {
    const span = levelSpan(level);
    for (let va = start; va < end;) {
      const base = Math.floor(va / span) * span;
      const next = Math.min(end, base + span);
      const entryGpa = table * PAGE_SIZE + levelIndex(va, level) * 8;
      const e = this.#readEntry(level, entryGpa);
      if (this.isCrashed) return;
      if ((e.lo & PTE_PRESENT) !== 0) {
        const child = Math.floor(pteAddress(e.lo, e.hi) / PAGE_SIZE);
        if (level > 2) this.#freeLevel(level - 1, child, va, next, floor, ceiling);
        if (base >= floor && base + span <= ceiling) {
          this.#setEntry(level, entryGpa, 0, 0); // pmd_clear / pud_clear / p4d_clear
          this.ops.releaseTable(level - 1, child);
          this.frames.put(child);
          this.#counts[GUEST_TABLE_FREE]++;
          this.#gather(base, base + PAGE_SIZE); // pte_free_tlb adds a page to the range
        }
      }
      va = next;
    }
  }

  // -------------------------------------------------------------------------------------
  // TLB management (arch/x86/mm/tlb.c).
  // -------------------------------------------------------------------------------------

  #gather(start: number, end: number): void {
    if (start < this.#gatherStart) this.#gatherStart = start;
    if (end > this.#gatherEnd) this.#gatherEnd = end;
  }

  // tlb_finish_mmu: flush what the gather collected.
  #finishGather(mm: AddressSpace): void {
    const start = this.#gatherStart;
    const end = this.#gatherEnd;
    this.#gatherStart = Infinity;
    this.#gatherEnd = -Infinity;
    if (end > start) this.#flushRange(mm, start, end);
  }

  // flush_tlb_mm_range: INVLPG each page up to the ceiling, else a full flush. A space
  // that is not loaded only has its generation bumped (its PCID is flushed at next use).
  #flushRange(mm: AddressSpace, start: number, end: number): void {
    if (mm !== this.#loadedMm) {
      mm.tlbGen++;
      return;
    }
    if ((end - start) / PAGE_SIZE > this.#flushCeiling) {
      this.#flushAll();
      return;
    }
    for (let va = start; va < end; va += PAGE_SIZE) {
      this.#counts[GUEST_FLUSH_ONE]++;
      this.ops.flushOne(va);
    }
  }

  #flushPage(mm: AddressSpace, va: number): void {
    this.#flushRange(mm, va, va + PAGE_SIZE);
  }

  #flushAll(): void {
    this.#counts[GUEST_FLUSH_ALL]++;
    this.ops.flushAll();
  }

  // switch_mm_irqs_off: load mm's top level. With PCIDs, reuse the PCID that still holds
  // mm's translations when its generation is current (CR3 bit 63: no flush), else take
  // the next slot round-robin and flush it (choose_new_asid).
  #switchMm(mm: AddressSpace): void {
    if (mm === this.#loadedMm) return;
    this.#loadedMm = mm;
    this.#counts[GUEST_CR3_LOAD]++;
    if (!this.#pcid) {
      this.ops.switchCr3(mm.l4Gfn, 0, false);
      return;
    }
    if (mm === this.#kernelMm) {
      this.ops.switchCr3(mm.l4Gfn, 0, true); // PCID 0 only ever holds global kernel entries
      return;
    }
    let slot = this.#asidMm.indexOf(mm.id);
    let noFlush = slot >= 0 && this.#asidGen[slot] === mm.tlbGen;
    if (slot < 0) {
      slot = this.#nextAsid;
      this.#nextAsid = (slot + 1) % DYNAMIC_ASIDS;
      this.#asidMm[slot] = mm.id;
      noFlush = false;
    }
    this.#asidGen[slot] = mm.tlbGen;
    this.ops.switchCr3(mm.l4Gfn, slot + 1, noFlush);
  }

  // __switch_to: save the old task's stack pointer, load the new one's (kernel data
  // accesses through the direct map), then switch address spaces.
  #switchTo(next: Process): void {
    const prev = this.#current;
    if (prev === next) return;
    const platform = this.platform;
    if (prev !== null && prev.state === "running") {
      platform.access(
        DIRECT_MAP_BASE + prev.taskGfn * PAGE_SIZE,
        8,
        ACCESS_WRITE,
        prev.pid,
        0,
        false,
      );
    }
    platform.access(DIRECT_MAP_BASE + next.taskGfn * PAGE_SIZE, 8, ACCESS_READ, 0, 0, false);
    this.#switchMm(next.mm!);
    this.#current = next;
    this.#counts[GUEST_CONTEXT_SWITCH]++;
  }

  // -------------------------------------------------------------------------------------
  // Frames and swap.
  // -------------------------------------------------------------------------------------

  // alloc_pages: below the low watermark, reclaim first (direct reclaim).
  #allocate(use: number): number {
    const frames = this.frames;
    if (frames.freeFrames <= this.#lowWatermark && !this.#inReclaim) {
      this.#inReclaim = true;
      try {
        this.#reclaim(this.#reclaimBatch);
      } finally {
        this.#inReclaim = false;
      }
    }
    const gfn = frames.allocate(use);
    if (gfn < 0) this.#counts[GUEST_OOM]++;
    return gfn;
  }

  // A clock over the running processes' private pages, as Linux 2.4's swap_out did: a
  // page with A set gets a second chance (A cleared), one with A clear goes to swap.
  // A page shared after fork is unmapped from every process that maps it.
  #reclaim(target: number): number {
    if (this.swap.slots === 0) return 0;
    let freed = 0;
    // Clean swap-cache pages no process maps any more cost nothing to drop: their
    // contents are still in their slot (shrink_page_list takes them first).
    for (const [slot, gfn] of this.#swapCache) {
      if (this.frames.refcount[gfn] !== 1) continue;
      this.#swapCache.delete(slot);
      this.#swapCacheSlot.delete(gfn);
      this.frames.put(gfn);
      if (++freed >= target) break;
    }
    const processes = [...this.processes.values()].filter((p) => p.state === "running");
    for (let round = 0; round < 2 * processes.length && freed < target; round++) {
      const process = processes[this.#reclaimCursor++ % processes.length]!;
      const mm = process.mm!;
      freed += this.#reclaimFrom(mm, target - freed);
    }
    if (freed > 0) this.#allocEpoch++;
    return freed;
  }

  #reclaimFrom(mm: AddressSpace, target: number): number {
    let freed = 0;
    const areas = mm.vmas.areas.filter((v) => !v.shared);
    // Resume after the last page scanned, wrapping once.
    const resume = mm.scanVa;
    const passes: [number, number][] = [[resume, USER_HALF_END], [0, resume]];
    for (const [from, to] of passes) {
      for (const vma of areas) {
        const start = Math.max(vma.start, from);
        const end = Math.min(vma.end, to);
        if (start >= end) continue;
        this.#forEachLeaf(mm, start, end, (l1e, va) => {
          const lo = this.#entry.lo;
          if ((lo & PTE_PRESENT) === 0) return false;
          const gfn = Math.floor(pteAddress(lo, this.#entry.hi) / PAGE_SIZE);
          if (gfn === this.#zeroGfn) return false;
          this.#counts[GUEST_RECLAIM_SCAN]++;
          mm.scanVa = va + PAGE_SIZE;
          const mappers = this.#findMappers(mm, l1e, va, gfn);
          if (mappers === null) return false;
          // page_referenced: any mapping with A set gives the page a second chance.
          let young = false;
          for (let i = 0; i < mappers.length; i += 2) {
            const entry = this.#readEntry(1, mappers[i + 1] as number);
            if ((entry.lo & PTE_ACCESSED) !== 0) {
              young = true;
              // ptep_clear_flush_young: the generic form, which flushes. (x86 Linux skips the
              // flush; the lab flushes so that the next access sets A again on every
              // platform, and reclaim decides the same way natively and virtualized.)
              this.#updateFlags(false, mappers[i + 1] as number, PTE_ACCESSED, 0);
              this.#flushPage(mappers[i] as AddressSpace, va);
            }
          }
          if (young) return false;
          // With swap full, only swap-cache pages (whose slot exists) can still go.
          if (!this.#swapOut(mappers, va, gfn)) return false;
          freed++;
          return freed >= target;
        });
        if (freed >= target || this.isCrashed) return freed;
      }
    }
    return freed;
  }

  // The reverse map of a private page (what Linux's anon_vma gives try_to_unmap): every
  // (space, l1e) that maps `gfn` at `va`, as a flat [mm, l1e, mm, l1e, ...] list. A
  // private page is shared only through fork, which keeps addresses, so each mapping is
  // at `va` in some running process. Null when not every reference is found.
  #findMappers(
    mm: AddressSpace,
    l1e: number,
    va: number,
    gfn: number,
  ): (AddressSpace | number)[] | null {
    // A page in the swap cache holds one reference for the cache.
    const references = this.frames.refcount[gfn]! - (this.#swapCacheSlot.has(gfn) ? 1 : 0);
    const mappers: (AddressSpace | number)[] = [mm, l1e];
    if (references === 1) return mappers;
    for (const other of this.processes.values()) {
      const otherMm = other.mm;
      if (otherMm === null || otherMm === mm) continue;
      const area = otherMm.vmas.find(va);
      if (area === undefined || area.shared) continue;
      const otherL1e = this.#l1eAddress(otherMm, va, false);
      if (otherL1e < 0) continue;
      const e = this.#readEntry(1, otherL1e);
      if ((e.lo & PTE_PRESENT) !== 0 && Math.floor(pteAddress(e.lo, e.hi) / PAGE_SIZE) === gfn) {
        mappers.push(otherMm, otherL1e);
      }
    }
    return mappers.length / 2 === references ? mappers : null;
  }

  // try_to_unmap + swap_writepage: copy the page out by DMA once, then replace every
  // mapping by a swap entry (ptep_clear_flush, set_pte_at); the slot takes one
  // reference per mapping.
  #swapOut(mappers: (AddressSpace | number)[], va: number, gfn: number): boolean {
    // A swap-cache page is still in its slot, unchanged (its mappings are read-only):
    // unmapping it needs no write (it is clean).
    const cachedSlot = this.#swapCacheSlot.get(gfn);
    const slot = cachedSlot ?? this.swap.allocate();
    if (slot < 0) return false;
    if (cachedSlot === undefined) this.platform.dmaRead(gfn, this.swap.page(slot));
    const swapEntry = slot * PAGE_SIZE;
    for (let i = 0; i < mappers.length; i += 2) {
      const mm = mappers[i] as AddressSpace;
      const l1e = mappers[i + 1] as number;
      if (i > 0 || cachedSlot !== undefined) this.swap.get(slot);
      this.#clearEntry(1, l1e);
      this.#flushPage(mm, va);
      this.#setEntry(1, l1e, pteLow(swapEntry, PTE_SOFT_SWAP), pteHigh(swapEntry));
      this.frames.put(gfn);
    }
    if (cachedSlot !== undefined) {
      this.#swapCache.delete(cachedSlot);
      this.#swapCacheSlot.delete(gfn);
      this.frames.put(gfn);
    } else {
      this.#counts[GUEST_SWAP_OUT]++;
    }
    return true;
  }

  // -------------------------------------------------------------------------------------
  // Counted wrappers of the paging ops and page routines.
  // -------------------------------------------------------------------------------------

  #readEntry(level: number, entryGpa: number): EntryValue {
    this.#counts[GUEST_PTE_READ]++;
    this.ops.readEntry(level, entryGpa, this.#entry);
    return this.#entry;
  }

  #setEntry(level: number, entryGpa: number, lo: number, hi: number): void {
    this.#counts[GUEST_PTE_SET]++;
    this.ops.setEntry(level, entryGpa, lo, hi);
  }

  #clearEntry(level: number, entryGpa: number): EntryValue {
    this.#counts[GUEST_PTE_CLEAR]++;
    this.ops.clearEntry(level, entryGpa, this.#old);
    return this.#old;
  }

  #updateFlags(set: boolean, entryGpa: number, loBits: number, hiBits: number): void {
    this.#counts[GUEST_PTE_FLAGS]++;
    if (set) this.ops.setFlags(1, entryGpa, loBits, hiBits);
    else this.ops.clearFlags(1, entryGpa, loBits, hiBits);
  }

  #clearPage(gfn: number): void {
    this.#counts[GUEST_CLEAR_PAGE]++;
    this.code.clearPage(gfn);
  }

  #copyPage(to: number, from: number): void {
    this.#counts[GUEST_COPY_PAGE]++;
    this.code.copyPage(to, from);
  }

  // -------------------------------------------------------------------------------------
  // Helpers.
  // -------------------------------------------------------------------------------------

  #requireBooted(): AddressSpace {
    if (this.#kernelMm === null) throw new RangeError("The guest kernel has not booted");
    return this.#kernelMm;
  }

  #running(pid: number): Process {
    this.#requireBooted();
    const process = this.processes.get(pid);
    if (process === undefined || process.state !== "running") {
      const why = process === undefined
        ? "no such process"
        : `it exited${process.signal !== 0 ? ` (killed: ${process.killReason})` : ""}`;
      throw new RangeError(`Cannot run process ${pid}: ${why}`);
    }
    return process;
  }

  #expectDone(outcome: number, pid: number, va: number): void {
    if (outcome === RUN_DONE) return;
    const why = outcome === RUN_ABANDONED
      ? `the process was killed (${this.processes.get(pid)?.killReason ?? "reaped"})`
      : outcome === RUN_CRASHED
      ? `the domain crashed: ${this.platform.crashReason}`
      : `outcome ${outcome}`;
    throw new RangeError(`Cannot access ${formatLinear(va)} in process ${pid}: ${why}`);
  }
}

function roundUpToPage(bytes: number): number {
  return Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
}

function isPageAligned(address: number): boolean {
  return Number.isInteger(address) && address >= 0 && address % PAGE_SIZE === 0;
}
