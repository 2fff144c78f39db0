/**
 * Virtual memory areas: the ranges of a process's user half that are valid, with their
 * protection and sharing. A sorted, non-overlapping list, split and merged as Linux's
 * mmap/munmap/mprotect do (without Linux's maple tree: processes here have few areas).
 *
 * @module
 */

import { formatLinear } from "../x86/address.ts";
import { PROT_EXEC, PROT_READ, PROT_WRITE } from "./layout.ts";
import type { SharedObject } from "./shared_object.ts";

/** One area: [start, end), page-aligned. */
export class Vma {
  /** First address. */
  start: number;
  /** One past the last address. */
  end: number;
  /** PROT_READ | PROT_WRITE | PROT_EXEC bits. */
  prot: number;
  /** What the area is (text, data, heap, stack, mmap), for reports. */
  readonly name: string;
  /**
   * The shared object this area maps (a shared mapping: writes are seen by every process
   * that maps it, no copy-on-write), or null for a private anonymous area.
   */
  readonly object: SharedObject | null;
  /** Page index within {@link object} of {@link start}. */
  pgoff: number;

  /**
   * An area of [start, end). A shared area takes a reference to `object` only through
   * {@link clone} and splits; the first area holds the object's initial reference.
   */
  constructor(
    start: number,
    end: number,
    prot: number,
    name: string,
    object: SharedObject | null = null,
    pgoff = 0,
    deviceGfn = -1,
  ) {
    this.start = start;
    this.end = end;
    this.prot = prot;
    this.name = name;
    this.object = object;
    this.pgoff = pgoff;
    this.deviceGfn = deviceGfn;
  }

  /**
   * For a mapping of device registers (Linux's VM_IO | VM_PFNMAP, as remap_pfn_range
   * makes): the guest frame of page `pgoff` 0; -1 for memory.
   */
  readonly deviceGfn: number;

  /** Whether the area is shared (an object, or device registers). */
  get shared(): boolean {
    return this.object !== null || this.deviceGfn >= 0;
  }

  /** A copy referencing the same object (for fork and splits). */
  clone(): Vma {
    if (this.object !== null) this.object.areas++;
    return new Vma(
      this.start,
      this.end,
      this.prot,
      this.name,
      this.object,
      this.pgoff,
      this.deviceGfn,
    );
  }

  /** `r-xp`-style protection, as /proc/PID/maps shows it. */
  describe(): string {
    const p = this.prot;
    return `${formatLinear(this.start)}-${formatLinear(this.end)} ${
      (p & PROT_READ) !== 0 ? "r" : "-"
    }${(p & PROT_WRITE) !== 0 ? "w" : "-"}${(p & PROT_EXEC) !== 0 ? "x" : "-"}${
      this.shared ? "s" : "p"
    } ${this.name}`;
  }
}

/**
 * The areas of one address space.
 *
 * @example
 * ```ts
 * import { VmaList, Vma } from "./vma.ts";
 * import assert from "node:assert/strict";
 * const list = new VmaList();
 * list.insert(new Vma(0x1000, 0x5000, 3, "heap"));
 * list.removeRange(0x2000, 0x3000);
 * assert.deepEqual(list.areas.map((v) => [v.start, v.end]), [[0x1000, 0x2000], [0x3000, 0x5000]]);
 * ```
 */
export class VmaList {
  /** The areas, sorted by start. */
  readonly areas: Vma[] = [];

  /** The area containing `va`, or undefined. */
  find(va: number): Vma | undefined {
    const areas = this.areas;
    let lo = 0;
    let hi = areas.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = areas[mid]!;
      if (va < v.start) hi = mid - 1;
      else if (va >= v.end) lo = mid + 1;
      else return v;
    }
    return undefined;
  }

  /** Whether any area overlaps [start, end). */
  overlaps(start: number, end: number): boolean {
    return this.areas.some((v) => v.start < end && start < v.end);
  }

  /** Whether [start, end) is covered by areas without a gap. */
  covers(start: number, end: number): boolean {
    if (end <= start) return true; // an empty range is covered (mprotect of 0 bytes is 0)
    let at = start;
    for (const v of this.areas) {
      if (v.end <= at) continue;
      if (v.start > at) return false;
      at = v.end;
      if (at >= end) return true;
    }
    return at >= end;
  }

  /** Inserts `vma`, which must not overlap an existing area (RangeError otherwise). */
  insert(vma: Vma): void {
    if (this.overlaps(vma.start, vma.end)) {
      throw new RangeError(
        `Cannot insert area ${vma.describe()}: it overlaps an existing area`,
      );
    }
    let i = 0;
    while (i < this.areas.length && this.areas[i]!.start < vma.start) i++;
    this.areas.splice(i, 0, vma);
  }

  /** Splits areas at `va` so that no area straddles it. */
  splitAt(va: number): void {
    const v = this.find(va);
    if (v === undefined || v.start === va) return;
    const tail = v.clone();
    tail.start = va;
    tail.pgoff = v.pgoff + (va - v.start) / 4096;
    v.end = va;
    this.areas.splice(this.areas.indexOf(v) + 1, 0, tail);
  }

  /**
   * Removes [start, end) from every area, splitting where needed, and returns the areas
   * removed (their objects' references are the caller's to drop).
   */
  removeRange(start: number, end: number): Vma[] {
    this.splitAt(start);
    this.splitAt(end);
    const removed: Vma[] = [];
    for (let i = this.areas.length - 1; i >= 0; i--) {
      const v = this.areas[i]!;
      if (v.start >= start && v.end <= end) removed.unshift(...this.areas.splice(i, 1));
    }
    return removed;
  }

  /** The areas inside [start, end), after splitting at both ends. */
  isolate(start: number, end: number): Vma[] {
    this.splitAt(start);
    this.splitAt(end);
    return this.areas.filter((v) => v.start >= start && v.end <= end);
  }

  /**
   * The highest gap of `length` bytes that ends at or below `below` and starts at or
   * above `floor`, top-down as Linux's mmap does; -1 if none.
   */
  findGapTopDown(length: number, below: number, floor: number): number {
    let top = below;
    for (let i = this.areas.length - 1; i >= -1; i--) {
      const v = i >= 0 ? this.areas[i]! : undefined;
      const gapStart = v === undefined ? floor : Math.max(v.end, floor);
      if (v !== undefined && v.start >= top) continue;
      const gapEnd = top;
      if (gapEnd - gapStart >= length) return gapEnd - length;
      if (v === undefined) break;
      top = Math.min(top, v.start);
    }
    return -1;
  }
}
