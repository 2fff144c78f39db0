/**
 * The guest kernel's frame allocator: every guest-physical frame has a use and a
 * reference count; free frames sit on a LIFO stack, so the frame freed last is the one
 * handed out next. That is how Linux's per-CPU page lists behave, and it matters to the
 * lab: a page-table frame freed at exit is soon reused as a data page (and vice versa),
 * which a shadow-paging hypervisor must notice (its unshadow heuristics).
 *
 * @module
 */

import { declareCounter, type Stats } from "../x86/stats.ts";

/** Frame use: free. */
export const FRAME_USE_FREE = 0;
/** Frame use: reserved or kernel (boot tables, kernel text, the zero page). */
export const FRAME_USE_KERNEL = 1;
/** Frame use: a process page table (L1..L4). */
export const FRAME_USE_TABLE = 2;
/** Frame use: a user data page. */
export const FRAME_USE_USER = 3;
/** Frame use: a task's kernel page (task struct and kernel stack). */
export const FRAME_USE_TASK = 4;
/** Names of the frame uses, indexed by use. */
export const FRAME_USE_NAMES: readonly string[] = ["free", "kernel", "table", "user", "task"];

/** Guest frames allocated. */
export const GUEST_FRAME_ALLOC: number = declareCounter(
  "guest.frame.alloc",
  "guest-physical frames allocated by the guest kernel",
  "frames",
);
/** Guest frames freed. */
export const GUEST_FRAME_FREE: number = declareCounter(
  "guest.frame.free",
  "guest-physical frames freed by the guest kernel",
  "frames",
);

/**
 * Frames of guest-physical memory with a use and a reference count each.
 *
 * @example Freed frames are reused first
 * ```ts
 * import { FRAME_USE_TABLE, FRAME_USE_USER, GuestFrameAllocator } from "./frame_allocator.ts";
 * import { Stats } from "../x86/stats.ts";
 * import assert from "node:assert/strict";
 * const frames = new GuestFrameAllocator(16, new Stats());
 * const table = frames.allocate(FRAME_USE_TABLE);
 * frames.put(table);
 * assert.equal(frames.allocate(FRAME_USE_USER), table); // the old table is now a data page
 * ```
 */
export class GuestFrameAllocator {
  /** Number of frames. */
  readonly frames: number;
  /** Reference count per frame (0 = free). */
  readonly refcount: Int32Array;
  /** Use per frame (`FRAME_*`). */
  readonly use: Uint8Array;
  readonly #stack: Int32Array;
  #top = 0;
  readonly #inUse = new Int32Array(FRAME_USE_NAMES.length);
  readonly #counts: Float64Array;

  /** `frames` frames; frame 0 is reserved (as the BIOS data area is on a PC). */
  constructor(frames: number, stats: Stats) {
    if (!Number.isInteger(frames) || frames < 16) {
      throw new RangeError(`Cannot manage ${frames} guest frames: need an integer >= 16`);
    }
    this.frames = frames;
    this.refcount = new Int32Array(frames);
    this.use = new Uint8Array(frames);
    this.#stack = new Int32Array(frames);
    this.#counts = stats.counts;
    for (let gfn = frames - 1; gfn >= 1; gfn--) this.#stack[this.#top++] = gfn;
    this.use[0] = FRAME_USE_KERNEL;
    this.refcount[0] = 1;
    this.#inUse[FRAME_USE_KERNEL] = 1;
  }

  /** Frames on the free stack. */
  get freeFrames(): number {
    return this.#top;
  }

  /** Frames currently allocated for `use`. */
  inUse(use: number): number {
    return this.#inUse[use] ?? 0;
  }

  /** Allocates a frame for `use` with reference count 1; -1 when none is free. */
  allocate(use: number): number {
    if (this.#top === 0) return -1;
    const gfn = this.#stack[--this.#top]!;
    this.refcount[gfn] = 1;
    this.use[gfn] = use;
    this.#inUse[use]++;
    this.#counts[GUEST_FRAME_ALLOC]++;
    return gfn;
  }

  /** Takes one more reference to allocated frame `gfn`. */
  get(gfn: number): void {
    this.#check(gfn);
    this.refcount[gfn]++;
  }

  /** Drops a reference to `gfn`; frees it when none is left. Returns whether it was freed. */
  put(gfn: number): boolean {
    this.#check(gfn);
    if (--this.refcount[gfn] > 0) return false;
    this.#inUse[this.use[gfn]!]--;
    this.use[gfn] = FRAME_USE_FREE;
    this.#stack[this.#top++] = gfn;
    this.#counts[GUEST_FRAME_FREE]++;
    return true;
  }

  #check(gfn: number): void {
    if (!Number.isInteger(gfn) || gfn < 1 || gfn >= this.frames || this.refcount[gfn] === 0) {
      throw new RangeError(`Cannot reference guest frame ${gfn}: it is not allocated`);
    }
  }
}
