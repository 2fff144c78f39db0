/**
 * The shadow core's state and its basic operations: shadow pages keyed by (guest frame,
 * shadow type), their references, the reverse map of shadow leaf entries, write
 * protection of shadowed guest frames, unshadowing, and the pool with LRU eviction of
 * cached top-level shadows. The event handlers (a #PF exit, a CR3 write, INVLPG, an
 * emulated page-table write) live in their own files and work on this state.
 *
 * Follows Xen's `xen/arch/x86/mm/shadow/` (common.c: hash of (gmfn, type), refcounts
 * held by parent entries and pins, `sh_remove_write_access`, `sh_remove_shadows`,
 * `_shadow_prealloc`), with KVM's reverse map in place of Xen's writable-mapping
 * heuristics and brute-force search.
 *
 * @module
 */

import { levelIndex, PAGE_SIZE } from "../x86/address.ts";
import { Interpreter } from "../x86/interpreter.ts";
import { PageWalker, WalkTrace } from "../x86/page_walk.ts";
import { PagingControl } from "../x86/paging_control.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_HI_XD,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
  pteHigh,
  pteLow,
} from "../x86/pte.ts";
import { declareCounter, Stats } from "../x86/stats.ts";
import { Vcpu } from "../x86/vcpu.ts";
import type { FrameTable } from "../memory/frame_table.ts";
import { GuestPhysicalView } from "../memory/guest_physical_view.ts";
import type { MachineMemory } from "../memory/machine_memory.ts";
import { type P2m, P2M_MMIO } from "../memory/p2m.ts";
import { asMfn, DOMID_XEN } from "../memory/types.ts";

/** Shadow of a guest L1 (leaf) table. */
export const SH_L1 = 1;
/** Shadow of a guest L2 table. */
export const SH_L2 = 2;
/** Shadow of a guest L3 table. */
export const SH_L3 = 3;
/** Shadow of a guest L4 (top-level) table. */
export const SH_L4 = 4;
/** "Fake" L1: 4 KiB splinters of a guest 2 MiB page, keyed by the page's first GFN. */
export const SH_FL1 = 5;
/** Names of the shadow types, by type. */
export const SHADOW_TYPE_NAMES: readonly string[] = ["", "l1", "l2", "l3", "l4", "fl1"];

/**
 * Reserved bits that mark a shadow L1 entry as MMIO (Xen's `sh_l1e_mmio`): bits 51..46 of
 * the address are reserved at MAXPHYADDR 46, so the hardware faults with RSVD=1 and the
 * hypervisor knows at once that the access is for the device model.
 */
export const SHADOW_MMIO_MARK_HI = 0x000fc000;

/** Shadow pages made. */
export const SHADOW_MADE: number = declareCounter(
  "shadow.made",
  "shadow pages made (sh_make_shadow)",
  "pages",
);
/** Shadow pages destroyed. */
export const SHADOW_DESTROYED: number = declareCounter(
  "shadow.destroyed",
  "shadow pages destroyed (last reference dropped, unshadowed or evicted)",
  "pages",
);
/** Shadow pages in use now (a gauge). */
export const SHADOW_PAGES: number = declareCounter(
  "shadow.pages",
  "shadow pages in use (a level: reports show it at the end of the phase)",
  "pages",
  "gauge",
);
/** The most shadow pages ever in use at once. */
export const SHADOW_PAGES_PEAK: number = declareCounter(
  "shadow.pagesPeak",
  "the most shadow pages in use at once (memory the shadows cost, in 4 KiB pages)",
  "pages",
  "gauge",
);
/** Top-level shadows evicted from the pool. */
export const SHADOW_EVICT: number = declareCounter(
  "shadow.evict",
  "cached top-level shadows evicted (LRU) to make room in the pool",
  "shadows",
);
/** Guest frames unshadowed, by any reason. */
export const SHADOW_UNSHADOW: number = declareCounter(
  "shadow.unshadow",
  "guest frames that stopped being shadowed (sh_remove_shadows)",
  "frames",
);
/** Unshadowed: two zero writes in a row (a table being torn down at exit/exec). */
export const SHADOW_UNSHADOW_EARLY: number = declareCounter(
  "shadow.unshadow.early",
  "unshadowed after two emulated zero writes in a row (teardown at exit/exec)",
  "frames",
);
/** Unshadowed: cleared with a REP string store (the frame is being reused as data). */
export const SHADOW_UNSHADOW_REUSED: number = declareCounter(
  "shadow.unshadow.reused",
  "unshadowed because a REP store cleared the frame (reused as a data page)",
  "frames",
);
/** Unshadowed: a user-mode write to a page table. */
export const SHADOW_UNSHADOW_USER: number = declareCounter(
  "shadow.unshadow.user",
  "unshadowed because user mode wrote the frame (not emulated, as Xen does)",
  "frames",
);
/** Unshadowed: the write could not be emulated. */
export const SHADOW_UNSHADOW_EMULATE_FAIL: number = declareCounter(
  "shadow.unshadow.emulateFail",
  "unshadowed because the write to it could not be emulated",
  "frames",
);
/** Shadow leaf entries that lost RW because their target became a shadowed page table. */
export const WP_ENTRIES_CHANGED: number = declareCounter(
  "wp.entriesChanged",
  "shadow entries made read-only because their frame became a shadowed page table",
  "entries",
);
/** TLB flushes the hypervisor did after changing shadows. */
export const SHADOW_TLB_FLUSH: number = declareCounter(
  "shadow.tlbFlush",
  "full TLB flushes by the hypervisor after removing rights or shadows",
  "flushes",
);
/** Guest entries re-propagated into shadows after a guest write. */
export const SHADOW_VALIDATE: number = declareCounter(
  "shadow.validate",
  "shadow entries re-validated after an emulated guest write (sh_validate_guest_entry)",
  "entries",
);
/** Software walks of the guest's tables by the hypervisor. */
export const SHADOW_GUEST_WALK: number = declareCounter(
  "shadow.guestWalk",
  "software walks of the guest's tables by the hypervisor",
  "walks",
);

/** L1 guest tables made out of sync (writable, with a snapshot). */
export const OOS_UNSYNC: number = declareCounter(
  "oos.unsync",
  "guest L1 tables let out of sync: snapshotted and made writable (sh_unsync)",
  "pages",
);
/** Resyncs, all reasons. */
export const OOS_RESYNC: number = declareCounter(
  "oos.resync",
  "out-of-sync tables brought back in sync by diffing against their snapshot",
  "pages",
);
/** Resyncs at a guest CR3 write (a full TLB flush included). */
export const OOS_RESYNC_CR3: number = declareCounter(
  "oos.resync.cr3",
  "resyncs at a guest CR3 write (a full TLB flush is one too)",
  "pages",
);
/** Entries of an out-of-sync table refreshed at a guest INVLPG. */
export const OOS_INVLPG_FIX: number = declareCounter(
  "oos.invlpgFix",
  "entries of an out-of-sync table refreshed at a guest INVLPG (the table stays out of sync)",
  "entries",
);
/** Resyncs at a shadow fault whose guest walk used the page as an upper-level table. */
export const OOS_RESYNC_FAULT: number = declareCounter(
  "oos.resync.fault",
  "resyncs at a shadow fault whose guest walk used the table above L1",
  "pages",
);
/** Resyncs before shadowing the frame at another level. */
export const OOS_RESYNC_PROMOTE: number = declareCounter(
  "oos.resync.promote",
  "resyncs before the frame is shadowed at another level",
  "pages",
);
/** Resyncs of the oldest entry when the list is full. */
export const OOS_RESYNC_EVICT: number = declareCounter(
  "oos.resync.evict",
  "resyncs of the oldest out-of-sync table to make room in the list",
  "pages",
);
/** Out-of-sync entries evicted from a full list. */
export const OOS_EVICT: number = declareCounter(
  "oos.evict",
  "out-of-sync tables evicted from the full list (each resynced)",
  "pages",
);
/** Guest entries that differed from the snapshot at resync. */
export const OOS_RESYNC_ENTRIES: number = declareCounter(
  "oos.resyncEntriesChanged",
  "guest entries found changed at resync and re-propagated",
  "entries",
);
/** Bytes of snapshots held now. */
export const OOS_SNAPSHOT_BYTES: number = declareCounter(
  "oos.snapshotBytes",
  "bytes of out-of-sync snapshots held (a level)",
  "bytes",
  "gauge",
);
/** The most snapshot bytes held at once. */
export const OOS_SNAPSHOT_PEAK: number = declareCounter(
  "oos.snapshotBytesPeak",
  "the most bytes of out-of-sync snapshots held at once",
  "bytes",
  "gauge",
);

/** One shadow page. */
export class ShadowPage {
  /** Its machine frame. */
  readonly smfn: number;
  /** SH_L1 .. SH_FL1. */
  readonly type: number;
  /** The guest frame it shadows (for an fl1: the first frame of the 2 MiB page). */
  readonly gfn: number;
  /** Machine addresses of the shadow entries that point at this page (its references). */
  readonly parents: Set<number> = new Set();
  /** Pinned: a cached top level (Xen's sh_pin), kept while not in any CR3. */
  pinned = false;
  /** LRU stamp of the last CR3 load of this top level. */
  lastUse = 0;

  /** A page at `smfn` shadowing `gfn` as `type`. */
  constructor(smfn: number, type: number, gfn: number) {
    this.smfn = smfn;
    this.type = type;
    this.gfn = gfn;
  }
}

/** Options of {@link ShadowMmu}. */
export interface ShadowMmuOptions {
  /** Most shadow pages at once (the pool); default 4096 (16 MiB). */
  poolPages?: number;
  /** Let written L1 tables go out of sync instead of emulating every write; default false. */
  oos?: boolean;
  /** Out-of-sync tables at once (Xen's SHADOW_OOS_PAGES per vCPU); default 3. */
  oosPages?: number;
}

/**
 * The shadow state of one HVM domain with one vCPU.
 *
 * @example See `HvmShadowPlatform`, which owns one; alone:
 * ```ts
 * import { FrameTable, MachineMemory, P2m, ShadowMmu, Stats, Vcpu, PagingControl,
 *   asDomainId, SH_L4 } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const stats = new Stats();
 * const memory = new MachineMemory({ frames: 256, stats });
 * const frames = new FrameTable({ frames: 256, stats, scatterSeed: 1 });
 * const p2m = P2m.populate(frames, asDomainId(1), 64);
 * const cpu = new Vcpu(memory, new PagingControl(), stats);
 * const mmu = new ShadowMmu(memory, frames, p2m, cpu, stats);
 * const top = mmu.topLevel(5)!;
 * assert.equal(top.type, SH_L4);
 * assert.equal(mmu.topLevel(5), top); // cached
 * assert.equal(stats.get("shadow.pages"), 1);
 * ```
 */
export class ShadowMmu {
  /** Machine memory (shadows and guest RAM). */
  readonly memory: MachineMemory;
  /** The machine's frame table (shadows are allocated to DOMID_XEN). */
  readonly frameTable: FrameTable;
  /** The domain's P2M. */
  readonly p2m: P2m;
  /** Guest-physical memory through the P2M. */
  readonly view: GuestPhysicalView;
  /** The hardware vCPU (its TLB is flushed when shadows lose rights). */
  readonly cpu: Vcpu;
  /** The guest's own paging state: its CR3 (virtual), CR0/CR4/EFER, CPL. */
  readonly guestCtl: PagingControl;
  /** Walker of the guest's tables (sets the guest's A/D flags as hardware would). */
  readonly guestWalker: PageWalker;
  /** Per-level record of the last guest walk. */
  readonly trace: WalkTrace = new WalkTrace();
  /** The emulator: a vCPU over guest-physical memory with the guest's paging, no TLB. */
  readonly emulator: Interpreter;
  /** The run's counters. */
  readonly stats: Stats;
  /** Shadow pages by machine frame. */
  readonly pages: Map<number, ShadowPage> = new Map();
  /** Pool size in pages. */
  readonly poolPages: number;
  /** Whether L1 tables may go out of sync. */
  readonly oosEnabled: boolean;
  /** Out-of-sync tables at once. */
  readonly oosLimit: number;
  // Out-of-sync guest L1 frames -> snapshot (1024 words), oldest first.
  readonly #oos = new Map<number, Uint32Array>();

  readonly #byKey = new Map<number, ShadowPage>();
  // Table-type shadows per guest frame (bit per SH_L1..SH_L4): the frame is a shadowed GPT.
  readonly #tableTypes = new Map<number, number>();
  // Reverse map: guest frame -> machine addresses of present shadow leaf entries mapping it.
  readonly #rmap = new Map<number, Set<number>>();
  readonly #counts: Float64Array;
  #clock = 0;
  /** The top-level shadow in the hardware CR3, which eviction must not take. */
  current: ShadowPage | null = null;

  /** Shadows for the domain whose memory `p2m` maps, run on `cpu`. */
  constructor(
    memory: MachineMemory,
    frameTable: FrameTable,
    p2m: P2m,
    cpu: Vcpu,
    stats: Stats,
    options: ShadowMmuOptions = {},
  ) {
    this.memory = memory;
    this.frameTable = frameTable;
    this.p2m = p2m;
    this.cpu = cpu;
    this.stats = stats;
    this.#counts = stats.counts;
    this.poolPages = options.poolPages ?? 4096;
    this.oosEnabled = options.oos ?? false;
    this.oosLimit = options.oosPages ?? 3;
    this.view = new GuestPhysicalView(memory, p2m);
    // The hypervisor's walks and emulation count into a scratch set: the hardware
    // counters (walk.*, tlb.*) stay the processor's own.
    const scratch = new Stats();
    this.guestCtl = new PagingControl({
      cr0: cpu.ctl.cr0,
      cr4: cpu.ctl.cr4,
      efer: cpu.ctl.efer,
      maxPhyAddr: cpu.ctl.maxPhyAddr,
      has1GbPages: false, // not offered to shadowed guests (no 1 GiB shadows)
    });
    this.guestWalker = new PageWalker(this.view, scratch);
    this.emulator = new Interpreter(
      new Vcpu(this.view, this.guestCtl, scratch, { tlbEnabled: false }),
    );
  }

  /** Whether guest frame `gfn` is shadowed as a page table (any of L1..L4). */
  isShadowedTable(gfn: number): boolean {
    return this.#tableTypes.has(gfn);
  }

  /** The bit set of table types `gfn` is shadowed as (bit n for SH_Ln). */
  tableTypesOf(gfn: number): number {
    return this.#tableTypes.get(gfn) ?? 0;
  }

  /** The shadow of `gfn` as `type`, or undefined. */
  lookup(gfn: number, type: number): ShadowPage | undefined {
    return this.#byKey.get(gfn * 8 + type);
  }

  /** Machine addresses of the present shadow leaf entries that map `gfn`. */
  mappingsOf(gfn: number): ReadonlySet<number> {
    return this.#rmap.get(gfn) ?? EMPTY;
  }

  /**
   * The shadow of `gfn` as `type`, made if missing: a zeroed frame from the pool (evicting
   * cached top levels if it is full). A guest frame shadowed as a table for the first
   * time is write-protected in every shadow that maps it. Null when the pool cannot give
   * a page (the caller crashes the domain).
   */
  obtain(gfn: number, type: number): ShadowPage | null {
    const found = this.lookup(gfn, type);
    if (found !== undefined) return found;
    // Shadowing an out-of-sync L1 at another level brings it back in sync first.
    if (type !== SH_L1 && type !== SH_FL1 && this.#oos.has(gfn)) {
      this.resync(gfn, OOS_RESYNC_PROMOTE);
    }
    if (this.pages.size >= this.poolPages && !this.#evict()) return null;
    const smfn = this.frameTable.allocate(DOMID_XEN);
    if (smfn < 0) return null;
    this.memory.zeroFrame(smfn);
    const page = new ShadowPage(smfn, type, gfn);
    this.pages.set(smfn, page);
    this.#byKey.set(gfn * 8 + type, page);
    this.#counts[SHADOW_MADE]++;
    this.#updateGauge();
    if (type !== SH_FL1) {
      const types = this.#tableTypes.get(gfn) ?? 0;
      this.#tableTypes.set(gfn, types | (1 << type));
      if (types === 0) this.removeWriteAccess(gfn);
    }
    return page;
  }

  /**
   * The cached top-level shadow of guest L4 `gfn` (made if missing), pinned and moved to
   * the head of the LRU (sh_set_toplevel_shadow + sh_pin). Null if the pool is exhausted.
   */
  topLevel(gfn: number): ShadowPage | null {
    const page = this.obtain(gfn, SH_L4);
    if (page === null) return null;
    page.pinned = true;
    page.lastUse = ++this.#clock;
    return page;
  }

  /**
   * Writes a shadow leaf entry (L1 or FL1) at machine address `sl1eMa`, keeping the
   * reverse map in step. Returns whether the old entry granted something the new one
   * does not (then TLB entries may be stale: Xen's SHADOW_SET_FLUSH).
   */
  setLeaf(sl1eMa: number, lo: number, hi: number): boolean {
    const memory = this.memory;
    const oldLo = memory.read32(sl1eMa);
    const oldHi = memory.read32(sl1eMa + 4);
    if ((oldLo & PTE_PRESENT) !== 0) {
      const oldGfn = this.p2m.mfnToGfn(pteAddress(oldLo, oldHi) / PAGE_SIZE);
      this.#rmap.get(oldGfn)?.delete(sl1eMa);
    }
    memory.write32(sl1eMa, lo);
    memory.write32(sl1eMa + 4, hi);
    if ((lo & PTE_PRESENT) !== 0 && (hi & SHADOW_MMIO_MARK_HI) !== SHADOW_MMIO_MARK_HI) {
      const gfn = this.p2m.mfnToGfn(pteAddress(lo, hi) / PAGE_SIZE);
      let set = this.#rmap.get(gfn);
      if (set === undefined) {
        set = new Set();
        this.#rmap.set(gfn, set);
      }
      set.add(sl1eMa);
    }
    return reducesRights(oldLo, oldHi, lo, hi);
  }

  /**
   * Writes a non-leaf shadow entry at `slotMa` pointing at `child` with the guest entry's
   * rights (`guestLo`/`guestHi`: RW, U/S, XD), or clears it when `child` is null. The old
   * child loses a reference (and is destroyed at zero, unless pinned). Returns whether
   * rights were reduced (as {@link setLeaf}).
   */
  setLink(slotMa: number, child: ShadowPage | null, guestLo: number, guestHi: number): boolean {
    const memory = this.memory;
    const oldLo = memory.read32(slotMa);
    const oldHi = memory.read32(slotMa + 4);
    const oldChild = (oldLo & PTE_PRESENT) !== 0
      ? this.pages.get(pteAddress(oldLo, oldHi) / PAGE_SIZE)
      : undefined;
    if (child !== null) {
      const ma = child.smfn * PAGE_SIZE;
      // Non-leaf shadow entries carry the guest's rights, always A and D (Xen _sh_propagate).
      const flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY |
        (guestLo & (PTE_WRITABLE | PTE_USER));
      memory.write32(slotMa, pteLow(ma, flags));
      memory.write32(slotMa + 4, pteHigh(ma, (guestHi & PTE_HI_XD) !== 0));
      child.parents.add(slotMa);
    } else {
      memory.write32(slotMa, 0);
      memory.write32(slotMa + 4, 0);
    }
    if (oldChild !== undefined && oldChild !== child) {
      oldChild.parents.delete(slotMa);
      this.#release(oldChild);
    }
    return reducesRights(oldLo, oldHi, memory.read32(slotMa), memory.read32(slotMa + 4));
  }

  /**
   * Removes RW from every shadow leaf entry that maps `gfn` (sh_remove_write_access);
   * flushes the TLB if any changed. Returns the number changed.
   */
  removeWriteAccess(gfn: number): number {
    const entries = this.#rmap.get(gfn);
    if (entries === undefined) return 0;
    let changed = 0;
    const memory = this.memory;
    for (const ma of entries) {
      const lo = memory.read32(ma);
      if ((lo & PTE_WRITABLE) === 0) continue;
      memory.write32(ma, lo & ~PTE_WRITABLE);
      changed++;
    }
    if (changed > 0) {
      this.#counts[WP_ENTRIES_CHANGED] += changed;
      this.flushTlb();
    }
    return changed;
  }

  /**
   * Stops shadowing guest frame `gfn` (sh_remove_shadows): every shadow of it is unhooked
   * from its parents and destroyed, except a top level that is in the hardware CR3. Counts
   * the reason's counter. Returns whether any shadow went.
   */
  unshadow(gfn: number, reasonCounter: number): boolean {
    let removed = false;
    for (const type of [SH_L4, SH_L3, SH_L2, SH_L1]) {
      const page = this.lookup(gfn, type);
      if (page === undefined || page === this.current) continue;
      page.pinned = false;
      for (const slot of [...page.parents]) this.setLink(slot, null, 0, 0);
      if (this.pages.has(page.smfn)) this.#destroy(page);
      removed = true;
    }
    if (removed) {
      this.stats.trace?.("shadow.unshadow", gfn, "");
      this.#counts[SHADOW_UNSHADOW]++;
      this.#counts[reasonCounter]++;
      this.flushTlb();
    }
    return removed;
  }

  /** Flushes the whole hardware TLB (after shadows lost rights or went away). */
  flushTlb(): void {
    this.#counts[SHADOW_TLB_FLUSH]++;
    this.cpu.tlb.flushAll();
  }

  /**
   * Walks the guest's tables for `va` (48-bit) with the guest's control state, setting its
   * A/D flags on success (as the processor would). Returns the GPA or -1 with the guest's
   * error code in `guestWalker.errorCode`; `trace` records each level.
   */
  walkGuest(va: number, kind: number): number {
    this.#counts[SHADOW_GUEST_WALK]++;
    return this.guestWalker.walk(this.guestCtl, va, kind as 0, this.trace);
  }

  /**
   * The shadow leaf entry for a guest leaf (an l1e, or a 2 MiB l2e splintered at 4 KiB
   * offset `page` of it) as Xen's _sh_propagate makes it: not present unless the guest
   * entry is present and accessed; read-only when the guest's D is clear or the target is
   * a shadowed page table; MMIO targets get the reserved-bit mark. Result in `out`.
   */
  propagateLeaf(
    glo: number,
    ghi: number,
    level: number,
    page: number,
    out: Uint32Array,
    demandWrite = false,
  ): void {
    out[0] = 0;
    out[1] = 0;
    if ((glo & PTE_PRESENT) === 0 || (glo & PTE_ACCESSED) === 0) return;
    const base = pteAddress(glo, ghi) -
      (level === 2 ? pteAddress(glo, ghi) % (2 * 1024 * 1024) : 0);
    const gfn = base / PAGE_SIZE + page;
    const mfn = this.p2m.gfnToMfn(gfn);
    let flags = glo & (PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED | PTE_DIRTY | 0x100);
    // A shadowed page table stays read-only, unless it is out of sync and this is the
    // guest's demand write (then it is written natively until its resync).
    if (
      (glo & PTE_DIRTY) === 0 ||
      (this.isShadowedTable(gfn) && !(demandWrite && this.#oos.has(gfn)))
    ) flags &= ~PTE_WRITABLE;
    const xd = (ghi & PTE_HI_XD) !== 0;
    if (mfn === P2M_MMIO) {
      // Present, reserved high bits, the gfn: any access faults with RSVD=1.
      out[0] = pteLow(gfn * PAGE_SIZE, flags);
      out[1] = (pteHigh(gfn * PAGE_SIZE, xd) | SHADOW_MMIO_MARK_HI) >>> 0;
      return;
    }
    if (mfn < 0) return; // no RAM: leave it empty; the access faults and is reflected
    out[0] = pteLow(mfn * PAGE_SIZE, flags);
    out[1] = pteHigh(mfn * PAGE_SIZE, xd);
  }

  /**
   * Re-propagates guest entry `index` of guest frame `gfn` into every table-type shadow of
   * the frame (sh_validate_guest_entry): leaves eagerly, links to existing shadows only.
   * Returns whether some shadow entry lost rights (the caller flushes the TLB).
   */
  validateEntry(gfn: number, index: number): boolean {
    const types = this.tableTypesOf(gfn);
    if (types === 0) return false;
    let reduced = false;
    const ma = this.p2m.gfnToMfn(gfn) * PAGE_SIZE + index * 8;
    const glo = this.memory.read32(ma);
    const ghi = this.memory.read32(ma + 4);
    for (let type = SH_L1; type <= SH_L4; type++) {
      if ((types & (1 << type)) === 0) continue;
      const page = this.lookup(gfn, type)!;
      const slot = page.smfn * PAGE_SIZE + index * 8;
      this.#counts[SHADOW_VALIDATE]++;
      if (type === SH_L1) {
        this.noteSnapshotEntry(gfn, index, glo, ghi);
        this.propagateLeaf(glo, ghi, 1, 0, this.#scratch);
        if (this.setLeaf(slot, this.#scratch[0]!, this.#scratch[1]!)) reduced = true;
        continue;
      }
      // Link to the next level's shadow if it exists; otherwise (and for a 2 MiB mapping,
      // whose splinters are rebuilt) leave the entry empty to be filled on demand.
      let child: ShadowPage | null = null;
      if (
        (glo & PTE_PRESENT) !== 0 && (glo & PTE_ACCESSED) !== 0 && (glo & PTE_PAGE_SIZE) === 0
      ) {
        child = this.lookup(pteAddress(glo, ghi) / PAGE_SIZE, type - 1) ?? null;
      }
      if (this.setLink(slot, child, glo, ghi)) reduced = true;
    }
    return reduced;
  }

  readonly #scratch = new Uint32Array(2);

  /** The shadow leaf entry address for `va` under top level `top`, or -1 (for INVLPG and checks). */
  shadowLeafAddress(
    top: ShadowPage,
    va: number,
  ): { ma: number; type: number; gfn: number } | null {
    let page = top;
    for (let level = 4; level > 1; level--) {
      const slot = page.smfn * PAGE_SIZE + levelIndex(va, level) * 8;
      const lo = this.memory.read32(slot);
      if ((lo & PTE_PRESENT) === 0) return null;
      const child = this.pages.get(pteAddress(lo, this.memory.read32(slot + 4)) / PAGE_SIZE);
      if (child === undefined) return null;
      page = child;
    }
    return { ma: page.smfn * PAGE_SIZE + levelIndex(va, 1) * 8, type: page.type, gfn: page.gfn };
  }

  // Drops a page that lost a reference: destroyed when nothing points at it.
  #release(page: ShadowPage): void {
    if (page.parents.size === 0 && !page.pinned && page !== this.current) this.#destroy(page);
  }

  // sh_destroy_*_shadow: drop the references its entries hold, free the frame.
  #destroy(page: ShadowPage): void {
    if (page.type === SH_L1 && this.#oos.delete(page.gfn)) this.#updateOosGauge();
    const memory = this.memory;
    const base = page.smfn * PAGE_SIZE;
    this.pages.delete(page.smfn);
    this.#byKey.delete(page.gfn * 8 + page.type);
    for (let i = 0; i < 512; i++) {
      const slot = base + i * 8;
      const lo = memory.read32(slot);
      if ((lo & PTE_PRESENT) === 0) continue;
      if (page.type === SH_L1 || page.type === SH_FL1) this.setLeaf(slot, 0, 0);
      else this.setLink(slot, null, 0, 0);
    }
    if (page.type !== SH_FL1) {
      const types = (this.#tableTypes.get(page.gfn) ?? 0) & ~(1 << page.type);
      if (types === 0) this.#tableTypes.delete(page.gfn);
      else this.#tableTypes.set(page.gfn, types);
    }
    this.frameTable.free(asMfn(page.smfn));
    this.#counts[SHADOW_DESTROYED]++;
    this.#updateGauge();
  }

  // _shadow_prealloc stage 1: unpin least recently used top levels not in CR3.
  #evict(): boolean {
    const before = this.pages.size;
    const candidates = [...this.pages.values()]
      .filter((p) => p.pinned && p !== this.current)
      .sort((a, b) => a.lastUse - b.lastUse);
    for (const page of candidates) {
      page.pinned = false;
      this.#counts[SHADOW_EVICT]++;
      this.#release(page);
      if (this.pages.size < this.poolPages) break;
    }
    if (this.pages.size < before) this.flushTlb();
    return this.pages.size < this.poolPages;
  }

  #updateGauge(): void {
    const counts = this.#counts;
    counts[SHADOW_PAGES] = this.pages.size;
    if (this.pages.size > counts[SHADOW_PAGES_PEAK]!) counts[SHADOW_PAGES_PEAK] = this.pages.size;
  }

  /** Whether guest frame `gfn` is an out-of-sync L1 table. */
  isOutOfSync(gfn: number): boolean {
    return this.#oos.has(gfn);
  }

  /** The out-of-sync frames, oldest first. */
  outOfSyncFrames(): number[] {
    return [...this.#oos.keys()];
  }

  /**
   * Whether a write to shadowed frame `gfn` may unsync it instead of being emulated: OOS
   * is on, the frame is shadowed only as an L1 (Xen's rule: by exactly one shadow), and it
   * is not out of sync already.
   */
  canUnsync(gfn: number): boolean {
    return this.oosEnabled && this.tableTypesOf(gfn) === 1 << SH_L1 && !this.#oos.has(gfn);
  }

  /**
   * sh_unsync: snapshots guest L1 `gfn` and marks it out of sync, so that the guest's
   * demand write gets a writable shadow entry and later writes run without exits. A full
   * list first resyncs its oldest entry.
   */
  unsync(gfn: number): void {
    if (this.#oos.size >= this.oosLimit) {
      const oldest = this.#oos.keys().next().value as number;
      this.#counts[OOS_EVICT]++;
      this.resync(oldest, OOS_RESYNC_EVICT);
    }
    const snapshot = new Uint32Array(PAGE_SIZE / 4);
    const words = this.memory.frameWords(asMfn(this.p2m.gfnToMfn(gfn)));
    if (words !== undefined) snapshot.set(words);
    this.#oos.set(gfn, snapshot);
    this.#counts[OOS_UNSYNC]++;
    this.stats.trace?.("oos.unsync", gfn, this.#oos.size);
    this.#updateOosGauge();
  }

  /**
   * _sh_resync: write-protects `gfn` again everywhere, then re-propagates every guest
   * entry that differs from the snapshot into the shadow, drops the snapshot, and flushes
   * the TLB (always, as Xen). Counts `reasonCounter`. Nothing if `gfn` is in sync.
   */
  resync(gfn: number, reasonCounter: number): void {
    const snapshot = this.#oos.get(gfn);
    if (snapshot === undefined) return;
    this.#oos.delete(gfn);
    this.#updateOosGauge();
    this.removeWriteAccess(gfn);
    const base = this.p2m.gfnToMfn(gfn) * PAGE_SIZE;
    const memory = this.memory;
    let changed = 0;
    for (let i = 0; i < 512; i++) {
      const lo = memory.read32(base + i * 8);
      const hi = memory.read32(base + i * 8 + 4);
      if (lo === snapshot[2 * i] && hi === snapshot[2 * i + 1]) continue;
      changed++;
      this.validateEntry(gfn, i);
    }
    this.#counts[OOS_RESYNC_ENTRIES] += changed;
    this.stats.trace?.("oos.resync", gfn, changed);
    this.#counts[OOS_RESYNC]++;
    this.#counts[reasonCounter]++;
    this.flushTlb();
  }

  /** Resyncs every out-of-sync table (a guest CR3 write: sh_update_cr3 step 1). */
  resyncAll(reasonCounter: number): void {
    for (const gfn of [...this.#oos.keys()]) this.resync(gfn, reasonCounter);
  }

  /**
   * Keeps an out-of-sync frame's snapshot equal to what its shadow reflects: called
   * whenever the hypervisor itself propagates entry `index` of `gfn` (Xen does the same).
   */
  noteSnapshotEntry(gfn: number, index: number, lo: number, hi: number): void {
    const snapshot = this.#oos.get(gfn);
    if (snapshot === undefined) return;
    snapshot[2 * index] = lo;
    snapshot[2 * index + 1] = hi;
  }

  #updateOosGauge(): void {
    const counts = this.#counts;
    counts[OOS_SNAPSHOT_BYTES] = this.#oos.size * PAGE_SIZE;
    if (counts[OOS_SNAPSHOT_BYTES]! > counts[OOS_SNAPSHOT_PEAK]!) {
      counts[OOS_SNAPSHOT_PEAK] = counts[OOS_SNAPSHOT_BYTES]!;
    }
  }

  /** Reads the guest's view of its entry for diagnostics (no side effects). */
  readGuestEntry(gpa: number): [number, number] {
    return [this.view.read32(gpa), this.view.read32(gpa + 4)];
  }
}

const EMPTY: ReadonlySet<number> = new Set();

// Whether entry (lo, hi) replacing (oldLo, oldHi) takes away a translation or a right.
function reducesRights(oldLo: number, oldHi: number, lo: number, hi: number): boolean {
  if ((oldLo & PTE_PRESENT) === 0) return false;
  if ((lo & PTE_PRESENT) === 0) return true;
  if (pteAddress(oldLo, oldHi) !== pteAddress(lo, hi)) return true;
  if ((oldLo & ~lo & (PTE_WRITABLE | PTE_USER)) !== 0) return true;
  return (hi & ~oldHi & PTE_HI_XD) !== 0;
}
