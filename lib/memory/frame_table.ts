/**
 * The frame table: one entry per machine frame, saying which domain owns it (Xen's
 * `struct page_info` keeps the owner, the type and the counts; type and counts arrive
 * with the PV type system), and a machine-frame allocator over it.
 *
 * @module
 */

import { Prng } from "../x86/prng.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";
import { type DomainId, DOMID_NONE, type Mfn } from "./types.ts";

/** Machine frames handed out. */
export const FRAME_ALLOC: number = declareCounter(
  "frame.alloc",
  "machine frames allocated",
  "frames",
);
/** Machine frames returned. */
export const FRAME_FREE: number = declareCounter("frame.free", "machine frames freed", "frames");
/** Allocation requests that found no free frame. */
export const FRAME_ALLOC_FAIL: number = declareCounter(
  "frame.allocFail",
  "machine frame allocations that failed: no free frame",
  "requests",
);

/** Options of a {@link FrameTable}. */
export interface FrameTableOptions {
  /** Frames in the machine. */
  frames: number;
  /** Counters. */
  stats: Stats;
  /**
   * Seed for handing frames out in a scattered order; without it frames go out in
   * ascending order. Scattering makes a GFN == MFN confusion show up in tests.
   */
  scatterSeed?: number;
  /** Frames at the bottom kept back from allocation (e.g. for the hypervisor); default 0. */
  reserved?: number;
}

/**
 * Owner per machine frame plus a free list.
 *
 * @example
 * ```ts
 * import { FrameTable, Stats, asDomainId, DOMID_NONE } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const table = new FrameTable({ frames: 8, stats: new Stats() });
 * const mfn = table.allocate(asDomainId(1));
 * assert.equal(table.ownerOf(mfn), 1);
 * table.free(mfn);
 * assert.equal(table.ownerOf(mfn), DOMID_NONE);
 * ```
 */
export class FrameTable {
  /** Frames in the machine. */
  readonly frameCount: number;
  /** Owner domain of each frame; DOMID_NONE (-1) for a free frame. */
  readonly owner: Int32Array;
  readonly #free: Int32Array;
  #freeCount: number;
  readonly #counts: Float64Array;

  /** A table with every frame free; throws a RangeError for a bad size. */
  constructor(options: FrameTableOptions) {
    const { frames, reserved = 0 } = options;
    if (!Number.isInteger(frames) || frames < 1 || frames > 2 ** 28) {
      throw new RangeError(`Cannot create a frame table of ${frames} frames: must be 1..2^28`);
    }
    if (!Number.isInteger(reserved) || reserved < 0 || reserved > frames) {
      throw new RangeError(`Cannot reserve ${reserved} frames of ${frames}`);
    }
    this.frameCount = frames;
    this.owner = new Int32Array(frames).fill(DOMID_NONE);
    const order: number[] = [];
    for (let mfn = frames - 1; mfn >= reserved; mfn--) order.push(mfn);
    if (options.scatterSeed !== undefined) new Prng(options.scatterSeed).shuffle(order);
    // Popped from the end: ascending order when not scattered.
    this.#free = Int32Array.from(order);
    this.#freeCount = order.length;
    this.#counts = options.stats.counts;
  }

  /** Frames not allocated. */
  get freeFrames(): number {
    return this.#freeCount;
  }

  /** Allocates a frame to `owner`; returns its MFN, or -1 when memory is exhausted. */
  allocate(owner: DomainId): Mfn {
    if (this.#freeCount === 0) {
      this.#counts[FRAME_ALLOC_FAIL]++;
      return -1 as Mfn;
    }
    const mfn = this.#free[--this.#freeCount]!;
    this.owner[mfn] = owner;
    this.#counts[FRAME_ALLOC]++;
    return mfn as Mfn;
  }

  /** Returns frame `mfn` to the free list. Throws a RangeError if it is not allocated. */
  free(mfn: Mfn): void {
    if (!this.isAllocated(mfn)) {
      throw new RangeError(`Cannot free mfn ${mfn}: frame is not allocated`);
    }
    this.owner[mfn] = DOMID_NONE;
    this.#free[this.#freeCount++] = mfn;
    this.#counts[FRAME_FREE]++;
  }

  /** Whether `mfn` is an allocated frame. */
  isAllocated(mfn: number): boolean {
    return Number.isInteger(mfn) && mfn >= 0 && mfn < this.frameCount &&
      this.owner[mfn] !== DOMID_NONE;
  }

  /** Owner of `mfn`, or DOMID_NONE for a free or nonexistent frame. */
  ownerOf(mfn: number): DomainId {
    if (!Number.isInteger(mfn) || mfn < 0 || mfn >= this.frameCount) return DOMID_NONE;
    return this.owner[mfn]! as DomainId;
  }
}
