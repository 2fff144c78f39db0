/**
 * The EPT a hypervisor builds for one HVM domain from its P2M: 4-level tables in machine
 * frames it owns, mapping each GFN to its MFN with 4 KiB leaves, built lazily as KVM's
 * TDP MMU builds them (`kvm_tdp_mmu_map` on an EPT violation) and Xen's `p2m-ept.c`
 * writes them. An MMIO GFN gets KVM's misconfigured leaf (W and X without R,
 * `VMX_EPT_MISCONFIG_WX_VALUE`), so later accesses exit as EPT misconfigurations that the
 * hypervisor recognises as MMIO without a P2M lookup.
 *
 * Entries only ever go from not present to present here, which needs no INVEPT (the
 * processor caches no not-present EPT entries, SDM Vol. 3C 29.4.3); a hypervisor that
 * removes or narrows one must INVEPT.
 *
 * @module
 */

import { levelIndex, PAGE_SIZE } from "../x86/address.ts";
import {
  EPT_MEMTYPE_SHIFT,
  EPT_MEMTYPE_WB,
  EPT_MISCONFIG_WX,
  EPT_RWX,
  eptAddress,
  eptHigh,
  eptLow,
  eptpOf,
  isEptPresent,
} from "../x86/ept.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";
import type { FrameTable } from "./frame_table.ts";
import type { MachineMemory } from "./machine_memory.ts";
import { asMfn, DOMID_XEN, type Mfn } from "./types.ts";

/** EPT table pages in use (a gauge). */
export const EPT_TABLE_PAGES: number = declareCounter(
  "ept.tables",
  "EPT table pages the hypervisor holds (a level: the memory nested paging costs)",
  "pages",
  "gauge",
);
/** RAM GFNs given an EPT leaf. */
export const EPT_MAP: number = declareCounter(
  "ept.map",
  "RAM guest frames given an EPT leaf (on their first EPT violation)",
  "frames",
);
/** MMIO GFNs given the misconfigured leaf. */
export const EPT_MMIO_MARK: number = declareCounter(
  "ept.mmioMark",
  "MMIO guest frames given a misconfigured EPT leaf (W+X without R, as KVM does)",
  "frames",
);

/** Options of {@link EptTables}. */
export interface EptTablesOptions {
  /** EPTP bit 6: the processor keeps accessed/dirty flags in EPT entries; default true. */
  accessedDirty?: boolean;
}

/**
 * One domain's EPT.
 *
 * @example Map a GFN, then translate through it
 * ```ts
 * import { EptTables, FrameTable, MachineMemory, NestedWalker, Stats, EPT_READ,
 *   asDomainId } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const stats = new Stats();
 * const memory = new MachineMemory({ frames: 64, stats });
 * const ept = new EptTables(memory, new FrameTable({ frames: 64, stats }), stats);
 * assert.ok(ept.map(0x12, 40));
 * assert.equal(stats.get("ept.tables"), 4); // PML4, PDPT, PD, PT
 * const walker = new NestedWalker(memory, stats, { eptp: ept.eptp });
 * assert.equal(walker.translateGpa(0x12345, EPT_READ), 40 * 4096 + 0x345);
 * assert.equal(walker.translateGpa(0x13000, EPT_READ), -1); // not mapped: a violation
 * ```
 */
export class EptTables {
  /** Machine memory holding the tables. */
  readonly memory: MachineMemory;
  /** Where table frames come from (owned by DOMID_XEN). */
  readonly frameTable: FrameTable;
  /** The PML4's machine frame. */
  readonly rootMfn: Mfn;
  /** The EPT pointer for the VMCS. */
  readonly eptp: number;
  readonly #counts: Float64Array;

  /**
   * An empty EPT (a zeroed PML4). Throws a RangeError when the frame table has no frame
   * for the PML4.
   */
  constructor(
    memory: MachineMemory,
    frameTable: FrameTable,
    stats: Stats,
    options: EptTablesOptions = {},
  ) {
    this.memory = memory;
    this.frameTable = frameTable;
    this.#counts = stats.counts;
    const root = this.#newTable();
    if (root < 0) throw new RangeError("Cannot build an EPT: no free machine frame for its PML4");
    this.rootMfn = root;
    this.eptp = eptpOf(root * PAGE_SIZE, options.accessedDirty ?? true);
  }

  /**
   * Maps `gfn` to `mfn` with a 4 KiB write-back leaf allowing `rights` (default R|W|X),
   * making the tables on the way. Returns false, changing nothing that is reachable, when
   * no frame was free for a table. Throws a RangeError for a GFN at or above 2^36 or a
   * negative MFN (caller bugs: a GPA has 48 bits).
   */
  map(gfn: number, mfn: number, rights: number = EPT_RWX): boolean {
    if (!Number.isInteger(mfn) || mfn < 0) {
      throw new RangeError(`Cannot map gfn ${gfn} to mfn ${mfn}: not a machine frame`);
    }
    const entry = this.#leafEntry(gfn, true);
    if (entry < 0) return false;
    const ma = mfn * PAGE_SIZE;
    this.memory.write32(
      entry,
      eptLow(ma, (rights & EPT_RWX) | (EPT_MEMTYPE_WB << EPT_MEMTYPE_SHIFT)),
    );
    this.memory.write32(entry + 4, eptHigh(ma));
    this.#counts[EPT_MAP]++;
    return true;
  }

  /**
   * Gives MMIO frame `gfn` KVM's misconfigured leaf. Returns false when no frame was free
   * for a table (the hypervisor then simply takes EPT violations for it).
   */
  markMmio(gfn: number): boolean {
    const entry = this.#leafEntry(gfn, true);
    if (entry < 0) return false;
    this.memory.write32(entry, EPT_MISCONFIG_WX);
    this.memory.write32(entry + 4, 0);
    this.#counts[EPT_MMIO_MARK]++;
    return true;
  }

  /** The low word of `gfn`'s leaf, or 0 when it has none (for tests and explanations). */
  leafLow(gfn: number): number {
    const entry = this.#leafEntry(gfn, false);
    return entry < 0 ? 0 : this.memory.read32(entry);
  }

  // The machine address of gfn's EPT PTE, making missing tables if `make`; -1 if a
  // table is missing (and could not be made).
  #leafEntry(gfn: number, make: boolean): number {
    if (!Number.isInteger(gfn) || gfn < 0 || gfn >= 2 ** 36) {
      throw new RangeError(`Cannot map gfn ${gfn}: a guest frame number is 0..2^36-1`);
    }
    const memory = this.memory;
    const gpa = gfn * PAGE_SIZE;
    let table = this.rootMfn * PAGE_SIZE;
    for (let level = 4; level > 1; level--) {
      const entry = table + levelIndex(gpa, level) * 8;
      const lo = memory.read32(entry);
      if (isEptPresent(lo)) {
        table = eptAddress(lo, memory.read32(entry + 4));
        continue;
      }
      if (!make) return -1;
      const mfn = this.#newTable();
      if (mfn < 0) return -1;
      const ma = mfn * PAGE_SIZE;
      memory.write32(entry + 4, eptHigh(ma));
      memory.write32(entry, eptLow(ma, EPT_RWX)); // non-leaf: everything, as KVM does
      table = ma;
    }
    return table + levelIndex(gpa, 1) * 8;
  }

  #newTable(): Mfn {
    const mfn = this.frameTable.allocate(DOMID_XEN);
    if (mfn < 0) return mfn;
    this.memory.zeroFrame(mfn);
    this.#counts[EPT_TABLE_PAGES]++;
    return asMfn(mfn);
  }
}
