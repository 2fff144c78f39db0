/**
 * Test utility: builds IA-32e (4-level) page tables in a {@link MachineMemory}, one
 * mapping at a time, and pokes single entries so tests can break them on purpose.
 *
 * Tables are taken from consecutive frames after the root (below an optional limit);
 * mapped pages are wherever the test says (they need not be installed memory: the walker
 * never reads them).
 */

import type { MachineMemory } from "../../lib/memory/machine_memory.ts";
import type { Mfn } from "../../lib/memory/types.ts";
import { levelIndex, PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import {
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
  pteHigh,
  pteLow,
} from "../../lib/x86/pte.ts";

/** P | R/W | U/S: the most permissive flags, the default at every level. */
export const ALL_RIGHTS = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

/** How to map one page. */
export interface MapOptions {
  /** 4 KiB (default), 2 MiB or 1 GiB. */
  pageSize?: number;
  /** Low flags of the leaf (PS is added for large pages); default {@link ALL_RIGHTS}. */
  flags?: number;
  /** Low flags of every non-leaf entry; default {@link ALL_RIGHTS}. */
  tableFlags?: number;
  /** Low flags by level (1..4), overriding `flags` / `tableFlags` there. */
  levelFlags?: Readonly<Record<number, number>>;
  /** Levels whose entry has XD (bit 63) set. */
  xdLevels?: readonly number[];
  /** Protection key of the leaf (bits 62..59). */
  pkey?: number;
  /**
   * Leave present table entries on the path as they are (flags, A bits, poked bits), only
   * making the missing ones; by default every entry on the path is rewritten.
   */
  keepTables?: boolean;
}

/** Where a mapping's entries are. */
export interface Mapping {
  /** 1 for a 4 KiB page, 2 for 2 MiB, 3 for 1 GiB. */
  leafLevel: number;
  /** Physical address of the entry at each level (index 1..4); -1 below the leaf. */
  entryAddress: number[];
}

/** The level of the leaf mapping a page of `pageSize`: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB). */
export function leafLevelOf(pageSize: number): number {
  if (pageSize === PAGE_SIZE) return 1;
  if (pageSize === PAGE_SIZE_2M) return 2;
  if (pageSize === PAGE_SIZE_1G) return 3;
  throw new RangeError(`Cannot map a page of ${pageSize} bytes`);
}

/**
 * Page tables under construction in `memory`, rooted at `root` (the CR3 value), with
 * every table frame below `tableLimit`.
 */
export class PageTables {
  readonly memory: MachineMemory;
  readonly root: number;
  readonly tableLimit: number;
  #nextTable: number;

  constructor(memory: MachineMemory, root = 0x1000, tableLimit = Infinity) {
    this.memory = memory;
    this.root = root;
    this.tableLimit = tableLimit;
    this.#nextTable = root + PAGE_SIZE;
  }

  /** Frames used for tables so far: the root and every table made after it. */
  get tableFrames(): number[] {
    const frames: number[] = [];
    for (let pa = this.root; pa < this.#nextTable; pa += PAGE_SIZE) frames.push(pa / PAGE_SIZE);
    return frames;
  }

  /**
   * Maps the page at linear `va` to physical `pa` (both aligned to the page size),
   * making tables as needed and reusing present ones. Every entry on the path is
   * rewritten with the flags asked for, so a later mapping may change shared entries.
   */
  map(va: number, pa: number, options: MapOptions = {}): Mapping {
    const pageSize = options.pageSize ?? PAGE_SIZE;
    const leafLevel = leafLevelOf(pageSize);
    if (va % pageSize !== 0 || pa % pageSize !== 0) {
      throw new RangeError(`Cannot map va 0x${va.toString(16)} to 0x${pa.toString(16)}: unaligned`);
    }
    const xd = (level: number) => options.xdLevels?.includes(level) ?? false;
    const entryAddress = [-1, -1, -1, -1, -1];
    let table = this.root;
    for (let level = 4; level > leafLevel; level--) {
      const entry = table + levelIndex(va, level) * 8;
      entryAddress[level] = entry;
      const existing = this.#tableUnder(entry, level);
      const next = existing >= 0 ? existing : this.#newTable();
      if (existing < 0 || !options.keepTables) {
        const flags = options.levelFlags?.[level] ?? options.tableFlags ?? ALL_RIGHTS;
        this.write(entry, pteLow(next, flags), pteHigh(next, xd(level)));
      }
      table = next;
    }
    const leaf = table + levelIndex(va, leafLevel) * 8;
    entryAddress[leafLevel] = leaf;
    const flags = (options.levelFlags?.[leafLevel] ?? options.flags ?? ALL_RIGHTS) |
      (leafLevel > 1 ? PTE_PAGE_SIZE : 0);
    this.write(leaf, pteLow(pa, flags), pteHigh(pa, xd(leafLevel), options.pkey ?? 0));
    return { leafLevel, entryAddress };
  }

  /** Clears the leaf entry that maps `va` (whatever its level); no-op if none. */
  unmap(va: number): void {
    const leaf = this.leafAddress(va);
    if (leaf >= 0) this.write(leaf, 0, 0);
  }

  /**
   * Physical address of the entry at `level` (4..1) used to translate `va`, or -1 when a
   * table above it is missing or a large page ends the walk first.
   */
  entryAddress(va: number, level: number): number {
    let table = this.root;
    for (let l = 4; l > level && table >= 0; l--) {
      table = this.#tableUnder(table + levelIndex(va, l) * 8, l);
    }
    return table < 0 ? -1 : table + levelIndex(va, level) * 8;
  }

  /** Physical address of the present leaf entry mapping `va`, or -1 when unmapped. */
  leafAddress(va: number): number {
    let table = this.root;
    for (let level = 4;; level--) {
      const entry = table + levelIndex(va, level) * 8;
      const next = level > 1 ? this.#tableUnder(entry, level) : -1;
      if (next < 0) return (this.memory.read32(entry) & PTE_PRESENT) !== 0 ? entry : -1;
      table = next;
    }
  }

  /**
   * The table the entry at `entry` (at `level`) points to, or -1 when it is not present or
   * maps a large page (PS in an l4e is a reserved bit, not a page size: ignored here).
   */
  #tableUnder(entry: number, level: number): number {
    const [lo, hi] = this.read(entry);
    if ((lo & PTE_PRESENT) === 0 || (level < 4 && (lo & PTE_PAGE_SIZE) !== 0)) return -1;
    return pteAddress(lo, hi);
  }

  /** Takes the next table frame. */
  #newTable(): number {
    if (this.#nextTable >= this.tableLimit) {
      throw new RangeError(
        `Cannot map: no table frame left below 0x${this.tableLimit.toString(16)}`,
      );
    }
    const table = this.#nextTable;
    this.#nextTable += PAGE_SIZE;
    return table;
  }

  /** The two words of the entry at `entry`: [low, high]. */
  read(entry: number): [number, number] {
    return [this.memory.read32(entry), this.memory.read32(entry + 4)];
  }

  /** Writes both words of the entry at `entry`. */
  write(entry: number, lo: number, hi: number): void {
    this.memory.write32(entry, lo >>> 0);
    this.memory.write32(entry + 4, hi >>> 0);
  }

  /** Sets bits `loBits` / `hiBits` in the entry at `entry`. */
  setBits(entry: number, loBits: number, hiBits = 0): void {
    const [lo, hi] = this.read(entry);
    this.write(entry, lo | loBits, hi | hiBits);
  }

  /** Clears bits `loBits` / `hiBits` in the entry at `entry`. */
  clearBits(entry: number, loBits: number, hiBits = 0): void {
    const [lo, hi] = this.read(entry);
    this.write(entry, lo & ~loBits, hi & ~hiBits);
  }

  /** A copy of every word of every table frame, without counting memory reads. */
  snapshot(): number[] {
    const words: number[] = [];
    for (const frame of this.tableFrames) {
      const f = this.memory.frameWords(frame as Mfn);
      for (let i = 0; i < 1024; i++) words.push(f === undefined ? 0 : f[i]!);
    }
    return words;
  }
}

/** A linear address from its four table indexes and page offset, by multiplication. */
export function linearOf(l4: number, l3: number, l2: number, l1: number, offset = 0): number {
  return l4 * 2 ** 39 + l3 * 2 ** 30 + l2 * 2 ** 21 + l1 * 2 ** 12 + offset;
}
