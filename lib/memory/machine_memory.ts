/**
 * Machine memory: 4 KiB frames allocated lazily on first write, so a guest of several GiB
 * costs only the frames it touches. Implements the hardware layer's
 * {@link PhysicalMemory}; little-endian, unaligned accesses allowed.
 *
 * Addresses past the installed frames read as all ones and ignore writes, as a PC's
 * unclaimed physical addresses do; a page walk that reads such an "entry" sees reserved
 * bits set and faults with RSVD, which is the defined outcome of a CR3 pointing outside
 * memory.
 *
 * @module
 */

import type { PhysicalMemory } from "../x86/physical_memory.ts";
import type { MmioHandler } from "./mmio_device.ts";
import { declareCounter, Stats } from "../x86/stats.ts";
import type { Mfn } from "./types.ts";

/** Physical reads through the memory interface. */
export const MEM_READ: number = declareCounter("mem.read", "reads of machine memory", "accesses");
/** Physical writes through the memory interface. */
export const MEM_WRITE: number = declareCounter(
  "mem.write",
  "writes of machine memory",
  "accesses",
);
/** Accesses to addresses with no installed frame. */
export const MEM_UNBACKED: number = declareCounter(
  "mem.unbacked",
  "accesses to machine addresses beyond installed memory (read as all ones, writes dropped)",
  "accesses",
);
/** Frames given host storage on first write. */
export const MEM_FRAME_MATERIALIZED: number = declareCounter(
  "mem.framesMaterialized",
  "machine frames given host storage on first write",
  "frames",
);

/** Options of a {@link MachineMemory}. */
export interface MachineMemoryOptions {
  /** Installed frames (memory size / 4 KiB); at most 2^28 (1 TiB). */
  frames: number;
  /** Counters to use; a fresh Stats when omitted. */
  stats?: Stats;
}

/**
 * Lazily backed machine memory.
 *
 * @example
 * ```ts
 * import { MachineMemory } from "./machine_memory.ts";
 * import assert from "node:assert/strict";
 * const memory = new MachineMemory({ frames: 1 << 20 }); // 4 GiB, nothing allocated yet
 * memory.write32(0xfff_f000, 0xdeadbeef);
 * assert.equal(memory.read32(0xfff_f000), 0xdeadbeef);
 * assert.equal(memory.read8(0xfff_f003), 0xde);
 * assert.equal(memory.materializedFrames, 1);
 * assert.equal(memory.read32(2 ** 40), 0xffffffff); // no memory there
 * ```
 */
export class MachineMemory implements PhysicalMemory {
  /** Installed frames. */
  readonly frameCount: number;
  /** The counters. */
  readonly stats: Stats;
  readonly #frames: (Uint32Array | undefined)[];
  readonly #counts: Float64Array;
  #materialized = 0;
  #io: MmioHandler | null = null;
  #ioFirst = 0;
  #ioEnd = 0;

  /** Memory of `options.frames` frames, none backed yet; throws a RangeError for a bad size. */
  constructor(options: MachineMemoryOptions) {
    const frames = options.frames;
    if (!Number.isInteger(frames) || frames < 1 || frames > 2 ** 28) {
      throw new RangeError(`Cannot create machine memory of ${frames} frames: must be 1..2^28`);
    }
    this.frameCount = frames;
    this.stats = options.stats ?? new Stats();
    this.#counts = this.stats.counts;
    this.#frames = new Array(frames);
  }

  /**
   * Places device `handler` at frames [first, first + frames), which must lie above
   * installed memory (an MMIO hole, as a PC's PCI space): accesses there go to it.
   */
  attachIo(first: number, frames: number, handler: MmioHandler): void {
    if (!Number.isInteger(first) || first < this.frameCount || !(frames >= 1)) {
      throw new RangeError(
        `Cannot attach a device at frame ${first}: must be above installed frames 0..${
          this.frameCount - 1
        }`,
      );
    }
    this.#io = handler;
    this.#ioFirst = first;
    this.#ioEnd = first + frames;
  }

  /** Frames that have host storage. */
  get materializedFrames(): number {
    return this.#materialized;
  }

  /** Whether `mfn` is installed memory. */
  isValidMfn(mfn: number): boolean {
    return Number.isInteger(mfn) && mfn >= 0 && mfn < this.frameCount;
  }

  /** Reads the 32-bit value at `pa` (unaligned allowed). */
  read32(pa: number): number {
    this.#counts[MEM_READ]++;
    const mfn = Math.floor(pa / 4096);
    const offset = pa & 0xfff;
    if ((offset & 3) === 0) {
      if (mfn >= this.frameCount || mfn < 0) {
        if (this.#isIo(mfn)) return this.#io!.read(pa, 4) >>> 0;
        this.#counts[MEM_UNBACKED]++;
        return 0xffffffff;
      }
      const f = this.#frames[mfn];
      return f === undefined ? 0 : f[offset >> 2]!;
    }
    this.#countUnbacked(pa, 4);
    return (this.#byte(pa) | (this.#byte(pa + 1) << 8) | (this.#byte(pa + 2) << 16) |
      (this.#byte(pa + 3) << 24)) >>> 0;
  }

  /** Reads the 16-bit value at `pa`. */
  read16(pa: number): number {
    this.#counts[MEM_READ]++;
    if (this.#isIo(Math.floor(pa / 4096))) return this.#io!.read(pa, 2) & 0xffff;
    this.#countUnbacked(pa, 2);
    return this.#byte(pa) | (this.#byte(pa + 1) << 8);
  }

  /** Reads the byte at `pa`. */
  read8(pa: number): number {
    this.#counts[MEM_READ]++;
    if (this.#isIo(Math.floor(pa / 4096))) return this.#io!.read(pa, 1) & 0xff;
    this.#countUnbacked(pa, 1);
    return this.#byte(pa);
  }

  /** Writes the 32-bit `value` at `pa`. */
  write32(pa: number, value: number): void {
    this.#counts[MEM_WRITE]++;
    if (this.#isIo(Math.floor(pa / 4096))) return this.#io!.write(pa, 4, value);
    this.#countUnbacked(pa, 4);
    const offset = pa & 0xfff;
    if ((offset & 3) === 0) {
      const f = this.#frameForWrite(Math.floor(pa / 4096));
      if (f !== undefined) f[offset >> 2] = value;
      return;
    }
    for (let k = 0; k < 4; k++) this.#setByte(pa + k, value >>> (8 * k));
  }

  /** Writes the low 16 bits of `value` at `pa`. */
  write16(pa: number, value: number): void {
    this.#counts[MEM_WRITE]++;
    if (this.#isIo(Math.floor(pa / 4096))) return this.#io!.write(pa, 2, value);
    this.#countUnbacked(pa, 2);
    this.#setByte(pa, value);
    this.#setByte(pa + 1, value >>> 8);
  }

  /** Writes the low 8 bits of `value` at `pa`. */
  write8(pa: number, value: number): void {
    this.#counts[MEM_WRITE]++;
    if (this.#isIo(Math.floor(pa / 4096))) return this.#io!.write(pa, 1, value);
    this.#countUnbacked(pa, 1);
    this.#setByte(pa, value);
  }

  /**
   * The 1024 words of frame `mfn` for bulk work (snapshots, copies), or undefined when
   * the frame has never been written (it reads as zeros) or is not installed.
   */
  frameWords(mfn: Mfn): Uint32Array | undefined {
    return this.#frames[mfn];
  }

  /** Copies frame `from` to frame `to` (both installed). */
  copyFrame(from: Mfn, to: Mfn): void {
    this.#checkMfn(from);
    this.#checkMfn(to);
    const source = this.#frames[from];
    if (source === undefined) this.zeroFrame(to);
    else this.#frameForWrite(to)!.set(source);
  }

  /**
   * Makes frame `mfn` read as zeros again. Storage once given stays with the frame
   * (see {@link hostFrame}), so this clears it in place.
   */
  zeroFrame(mfn: Mfn): void {
    this.#checkMfn(mfn);
    this.#frames[mfn]?.fill(0);
  }

  /**
   * The storage of frame `pfn` for direct word access (stable for the memory's life), or
   * undefined when the frame is not installed, or not yet backed and `materialize` is
   * false. Accesses through it are not counted in `mem.read` / `mem.write`.
   */
  hostFrame(pfn: number, materialize: boolean): Uint32Array | undefined {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.frameCount) return undefined;
    const f = this.#frames[pfn];
    if (f !== undefined || !materialize) return f;
    return this.#frameForWrite(pfn);
  }

  #checkMfn(mfn: number): void {
    if (!this.isValidMfn(mfn)) {
      throw new RangeError(`Cannot use mfn ${mfn}: installed frames are 0..${this.frameCount - 1}`);
    }
  }

  #isIo(mfn: number): boolean {
    return this.#io !== null && mfn >= this.#ioFirst && mfn < this.#ioEnd;
  }

  // One count per access that touches any byte past installed memory.
  #countUnbacked(pa: number, size: number): void {
    if (pa < 0 || Math.floor((pa + size - 1) / 4096) >= this.frameCount) {
      this.#counts[MEM_UNBACKED]++;
    }
  }

  #byte(pa: number): number {
    const mfn = Math.floor(pa / 4096);
    if (mfn >= this.frameCount || mfn < 0) return 0xff;
    const f = this.#frames[mfn];
    if (f === undefined) return 0;
    const offset = pa & 0xfff;
    return (f[offset >> 2]! >>> (8 * (offset & 3))) & 0xff;
  }

  #setByte(pa: number, value: number): void {
    const f = this.#frameForWrite(Math.floor(pa / 4096));
    if (f === undefined) return;
    const offset = pa & 0xfff;
    const shift = 8 * (offset & 3);
    const word = offset >> 2;
    f[word] = (f[word]! & ~(0xff << shift)) | ((value & 0xff) << shift);
  }

  #frameForWrite(mfn: number): Uint32Array | undefined {
    if (mfn >= this.frameCount || mfn < 0) return undefined;
    let f = this.#frames[mfn];
    if (f === undefined) {
      f = new Uint32Array(1024);
      this.#frames[mfn] = f;
      this.#materialized++;
      this.#counts[MEM_FRAME_MATERIALIZED]++;
    }
    return f;
  }
}
