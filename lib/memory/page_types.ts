/**
 * The PV type system's per-frame state: what Xen keeps in `struct page_info` beside the
 * owner (which the {@link FrameTable} holds). Each machine frame has
 *
 * - a general reference count (`count_info`): one reference for being allocated to a
 *   domain (PGC_allocated), one per mapping or use of the frame;
 * - a type (`type_info` bits 63..61): none, L1..L4 page table, segment descriptors,
 *   shared, writable; and a type count: how many uses need the frame to keep that type
 *   (a writable mapping, a higher-level entry pointing at a table, a pin, a CR3);
 * - flags: validated (every entry of a table was checked when it took the type), pinned;
 * - the linear page-table count of XSA-240 (positive: the table holds that many same-level
 *   links; negative: it is the target of that many), and the TLB-flush time stamp Xen
 *   uses to skip a flush on a type change (`tlbflush_timestamp`).
 *
 * The type can change only while the type count is 0; the rules that move the counts
 * (get/put page and type, validation) live with the hypercalls, in `hypercalls/`.
 *
 * ```
 * type_info (Xen, asm/mm.h)            this table
 *  63..61  type                         type[mfn]        PGT_NONE .. PGT_WRITABLE
 *  PGT_pinned, PGT_validated            flags[mfn]       PAGE_PINNED | PAGE_VALIDATED
 *  count (low bits)                     typeCount[mfn]
 * count_info count                      count[mfn]
 * ```
 *
 * @module
 */

import type { FrameTable } from "./frame_table.ts";

/** PGT_none: the frame has no type yet. */
export const PGT_NONE = 0;
/** PGT_l1_page_table. */
export const PGT_L1 = 1;
/** PGT_l2_page_table. */
export const PGT_L2 = 2;
/** PGT_l3_page_table. */
export const PGT_L3 = 3;
/** PGT_l4_page_table (PGT_root_page_table on 64-bit). */
export const PGT_L4 = 4;
/** PGT_seg_desc_page (GDT/LDT frames). */
export const PGT_SEG_DESC = 5;
/** PGT_shared_page (memory sharing). */
export const PGT_SHARED = 6;
/** PGT_writable_page: mapped writable somewhere. */
export const PGT_WRITABLE = 7;
/** Names of the types, indexed by type. */
export const PGT_NAMES: readonly string[] = [
  "none",
  "l1",
  "l2",
  "l3",
  "l4",
  "seg_desc",
  "shared",
  "writable",
];

/** PGT_validated: every entry was checked when the frame took its table type. */
export const PAGE_VALIDATED = 0x1;
/** PGT_pinned: the guest pinned the table (MMUEXT_PIN_Ln_TABLE). */
export const PAGE_PINNED = 0x2;

/** Options of {@link PageTypes}. */
export interface PageTypesOptions {
  /**
   * The largest general reference count a frame may reach (Xen: PGC_count_mask less the
   * two references it keeps in reserve). Default 2^31 - 1; tests lower it to overflow it.
   */
  maxCount?: number;
  /** The largest type count (Xen: PGT_count_mask). Default 2^31 - 1. */
  maxTypeCount?: number;
}

/**
 * Type, counts and flags of every machine frame. All arrays are indexed by MFN and public
 * so that the hypervisor's hot paths read them without a call.
 *
 * @example A frame allocated to a domain holds its allocation reference
 * ```ts
 * import { FrameTable, PageTypes, PGT_NONE, Stats, asDomainId } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const frames = new FrameTable({ frames: 8, stats: new Stats() });
 * const types = new PageTypes(frames);
 * const mfn = frames.allocate(asDomainId(1));
 * types.assign(mfn);
 * assert.deepEqual([types.count[mfn], types.typeCount[mfn], types.type[mfn]], [1, 0, PGT_NONE]);
 * ```
 */
export class PageTypes {
  /** The frame table (owners). */
  readonly frames: FrameTable;
  /** General reference count per frame (count_info); 0 for a free frame. */
  readonly count: Int32Array;
  /** Type per frame (PGT_*). */
  readonly type: Uint8Array;
  /** Type count per frame. */
  readonly typeCount: Int32Array;
  /** PAGE_VALIDATED | PAGE_PINNED per frame. */
  readonly flags: Uint8Array;
  /** linear_pt_count (XSA-240): > 0 holds same-level links, < 0 is linked to. */
  readonly linearCount: Int16Array;
  /** Value of the TLB-flush clock when the frame last dropped its last type reference. */
  readonly tlbflushStamp: Float64Array;
  /** Limit of {@link count}. */
  readonly maxCount: number;
  /** Limit of {@link typeCount}. */
  readonly maxTypeCount: number;

  /** Empty state for every frame of `frames`; RangeError for a bad limit. */
  constructor(frames: FrameTable, options: PageTypesOptions = {}) {
    const maxCount = options.maxCount ?? 2 ** 31 - 1;
    const maxTypeCount = options.maxTypeCount ?? 2 ** 31 - 1;
    for (const [name, value] of [["maxCount", maxCount], ["maxTypeCount", maxTypeCount]]) {
      if (!Number.isInteger(value) || (value as number) < 2 || (value as number) > 2 ** 31 - 1) {
        throw new RangeError(`Cannot use ${name} ${value}: must be an integer 2..2^31-1`);
      }
    }
    const n = frames.frameCount;
    this.frames = frames;
    this.count = new Int32Array(n);
    this.type = new Uint8Array(n);
    this.typeCount = new Int32Array(n);
    this.flags = new Uint8Array(n);
    this.linearCount = new Int16Array(n);
    this.tlbflushStamp = new Float64Array(n);
    this.maxCount = maxCount;
    this.maxTypeCount = maxTypeCount;
  }

  /** Gives allocated frame `mfn` its allocation reference and no type (assign_pages). */
  assign(mfn: number): void {
    this.#check(mfn);
    this.count[mfn] = 1;
    this.type[mfn] = PGT_NONE;
    this.typeCount[mfn] = 0;
    this.flags[mfn] = 0;
    this.linearCount[mfn] = 0;
  }

  /** Clears the state of a frame returned to the free pool. */
  release(mfn: number): void {
    this.#check(mfn);
    this.count[mfn] = 0;
    this.type[mfn] = PGT_NONE;
    this.typeCount[mfn] = 0;
    this.flags[mfn] = 0;
    this.linearCount[mfn] = 0;
  }

  /** Whether `mfn` holds a table type (L1..L4) with a non-zero type count. */
  isPageTable(mfn: number): boolean {
    const t = this.type[mfn]!;
    return t >= PGT_L1 && t <= PGT_L4 && this.typeCount[mfn]! > 0;
  }

  /** Whether `mfn` is pinned. */
  isPinned(mfn: number): boolean {
    return (this.flags[mfn]! & PAGE_PINNED) !== 0;
  }

  /** Whether `mfn` is validated. */
  isValidated(mfn: number): boolean {
    return (this.flags[mfn]! & PAGE_VALIDATED) !== 0;
  }

  /** "l2 x3 validated pinned, count 5": one frame's state, for messages and tests. */
  describe(mfn: number): string {
    const f = this.flags[mfn]!;
    return `${PGT_NAMES[this.type[mfn]!]} x${this.typeCount[mfn]}` +
      `${f & PAGE_VALIDATED ? " validated" : ""}${f & PAGE_PINNED ? " pinned" : ""}, ` +
      `count ${this.count[mfn]}`;
  }

  #check(mfn: number): void {
    if (!Number.isInteger(mfn) || mfn < 0 || mfn >= this.count.length) {
      throw new RangeError(`Cannot use mfn ${mfn}: frames are 0..${this.count.length - 1}`);
    }
  }
}
