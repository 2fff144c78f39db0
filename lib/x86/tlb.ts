/**
 * The translation lookaside buffer (Intel SDM Vol. 3A 4.10): set-associative arrays, one
 * per page size, with LRU replacement, PCID tags and global entries.
 *
 * An entry caches what 4.10.2.2 lists: the page frame, the logical AND of the R/W and U/S
 * flags over all levels, the logical OR of XD, the leaf's dirty flag and protection key,
 * and whether it is global. Stale entries are used until they are invalidated: changing a
 * table in memory changes nothing here, which is exactly what a hypervisor modelling x86
 * must respect.
 *
 * Storage is parallel typed arrays indexed by entry number (4 KiB entries first, then
 * 2 MiB, then 1 GiB), so a lookup allocates nothing.
 *
 * @module
 */

import { PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "./address.ts";
import { declareCounter, type Stats } from "./stats.ts";

/** TLB hits. */
export const TLB_HIT: number = declareCounter(
  "tlb.hit",
  "accesses translated by a TLB entry",
  "accesses",
);
/** TLB misses (a walk follows). */
export const TLB_MISS: number = declareCounter(
  "tlb.miss",
  "accesses with no usable TLB entry (a page walk follows)",
  "accesses",
);
/** Valid entries replaced to make room. */
export const TLB_EVICT: number = declareCounter(
  "tlb.evict",
  "valid TLB entries replaced by a fill (LRU victim)",
  "entries",
);
/** TLB fills. */
export const TLB_FILL: number = declareCounter(
  "tlb.fill",
  "TLB entries filled after a walk",
  "entries",
);
/** Flushes by a CR3 write. */
export const TLB_FLUSH_CR3: number = declareCounter(
  "tlb.flush.cr3",
  "MOV to CR3 that flushed non-global entries",
  "flushes",
);
/** INVLPG executions. */
export const TLB_FLUSH_INVLPG: number = declareCounter(
  "tlb.flush.invlpg",
  "INVLPG (single linear address) invalidations",
  "flushes",
);
/** INVPCID executions. */
export const TLB_FLUSH_INVPCID: number = declareCounter(
  "tlb.flush.invpcid",
  "INVPCID invalidations (any type)",
  "flushes",
);
/** Full flushes including global entries. */
export const TLB_FLUSH_ALL: number = declareCounter(
  "tlb.flush.all",
  "flushes of every entry including global ones (CR4.PGE/PCIDE change, explicit)",
  "flushes",
);
/** Entries invalidated because a fault or permission re-check hit them. */
export const TLB_FLUSH_FAULT: number = declareCounter(
  "tlb.flush.fault",
  "entries dropped because a page fault was delivered for their address (SDM 4.10.4.1)",
  "flushes",
);
/** Entries invalidated by any flush. */
export const TLB_INVALIDATED: number = declareCounter(
  "tlb.invalidated",
  "valid entries removed by flushes and invalidations",
  "entries",
);

/** Entries and associativity of one page size's array. */
export interface TlbArrayConfig {
  /** Total entries; a multiple of `ways`, and entries / ways a power of two. */
  readonly entries: number;
  /** Ways per set (entries = ways gives a fully associative array). */
  readonly ways: number;
}

/** The geometry of a TLB. */
export interface TlbConfig {
  /** Array for 4 KiB pages. */
  readonly small: TlbArrayConfig;
  /** Array for 2 MiB pages. */
  readonly large: TlbArrayConfig;
  /** Array for 1 GiB pages. */
  readonly huge: TlbArrayConfig;
}

/**
 * A second-level-TLB-like default (Skylake's STLB holds 1536 4 KiB entries, 12-way;
 * its L1 DTLB holds 32 2 MiB and 4 1 GiB entries).
 */
export const DEFAULT_TLB_CONFIG: TlbConfig = Object.freeze({
  small: Object.freeze({ entries: 1536, ways: 12 }),
  large: Object.freeze({ entries: 32, ways: 4 }),
  huge: Object.freeze({ entries: 4, ways: 4 }),
});

/** Flag bits of an entry (see {@link Tlb.flags}): combined rights in bits 2..0. */
export const TLB_RIGHTS_MASK = 0x7;
/** Protection key in bits 6..3. */
export const TLB_PKEY_SHIFT = 3;
/** Bits 6..0 together: the permission-table index part of an entry. */
export const TLB_PERMISSION_BITS = 0x7f;
/** The leaf's D flag was set when the entry was filled. */
export const TLB_DIRTY = 0x80;

const GLOBAL_PCID = -1;
const INVALID_TAG = -1;

/**
 * A TLB. `lookup` returns an entry index whose fields (`frame`, `flags`, `offsetMask`)
 * the vCPU reads directly; `fill` installs a walk's result.
 *
 * @example Stale entries survive until INVLPG
 * ```ts
 * import { Tlb, Stats } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const tlb = new Tlb(new Stats());
 * tlb.fill(0x5000, 0, 0x9000, 4096, 0x3, false);
 * assert.ok(tlb.lookup(0x5abc, 0) >= 0);
 * tlb.invlpg(0x5000, 0);
 * assert.equal(tlb.lookup(0x5abc, 0), -1);
 * ```
 */
export class Tlb {
  /** The geometry. */
  readonly config: TlbConfig;
  /** Virtual page number at the entry's page size, or -1 for an empty entry. */
  readonly tag: Float64Array;
  /** PCID of the entry, or -1 for a global entry (matches every PCID). */
  readonly pcid: Int32Array;
  /** Rights, protection key and dirty state ({@link TLB_DIRTY}). */
  readonly flags: Int32Array;
  /** Physical base address of the page. */
  readonly frame: Float64Array;
  /** Offset mask of the entry's page size (0xfff, 0x1fffff or 0x3fffffff). */
  readonly offsetMask: Int32Array;
  /**
   * Storage of the frame a 4 KiB entry maps, when memory lent it (see
   * PhysicalMemory.hostFrame); undefined otherwise. Not architectural: it only saves
   * the lookup of the frame on a hit.
   */
  readonly host: (Uint32Array | undefined)[];
  /**
   * Bumped by every invalidation (a #PF's, INVLPG, INVPCID, a CR3 flush, a full flush).
   * Caches that the same operations must invalidate, such as a walker's paging-structure
   * caches (SDM 4.10.4.1 lists them beside the TLB), compare it before use.
   */
  generation = 0;
  readonly #stamp: Float64Array;
  #clock = 0;
  readonly #counts: Float64Array;
  // Per array (0 small, 1 large, 2 huge): first entry, set mask, ways, page size.
  readonly #base: Int32Array;
  readonly #setMask: Int32Array;
  readonly #ways: Int32Array;
  readonly #smallSetMask: number;
  readonly #smallWays: number;

  /** An empty TLB of geometry `config`; throws a RangeError for an impossible geometry. */
  constructor(stats: Stats, config: TlbConfig = DEFAULT_TLB_CONFIG) {
    const arrays = [config.small, config.large, config.huge];
    for (const [i, a] of arrays.entries()) {
      const sets = a.entries / a.ways;
      if (
        !Number.isInteger(a.entries) || !Number.isInteger(a.ways) || a.ways < 1 ||
        a.entries < a.ways || !Number.isInteger(sets) || (sets & (sets - 1)) !== 0
      ) {
        const name = ["small", "large", "huge"][i];
        throw new RangeError(
          `Cannot build TLB: ${name} array of ${a.entries} entries, ${a.ways} ways; ` +
            "entries must be a positive multiple of ways with a power-of-two set count",
        );
      }
    }
    this.config = config;
    const total = config.small.entries + config.large.entries + config.huge.entries;
    this.tag = new Float64Array(total).fill(INVALID_TAG);
    this.pcid = new Int32Array(total);
    this.flags = new Int32Array(total);
    this.frame = new Float64Array(total);
    this.offsetMask = new Int32Array(total);
    this.host = new Array<Uint32Array | undefined>(total).fill(undefined);
    this.#stamp = new Float64Array(total);
    this.#base = Int32Array.of(
      0,
      config.small.entries,
      config.small.entries + config.large.entries,
    );
    this.#setMask = Int32Array.of(...arrays.map((a) => a.entries / a.ways - 1));
    this.#ways = Int32Array.of(...arrays.map((a) => a.ways));
    this.#smallSetMask = this.#setMask[0]!;
    this.#smallWays = this.#ways[0]!;
    this.#counts = stats.counts;
  }

  /**
   * Finds the entry translating `va` for `pcid` (or a global one), counting a hit or a
   * miss. Returns the entry index, or -1.
   */
  lookup(va: number, pcid: number): number {
    // 4 KiB array first: the common case, kept small so callers can inline it.
    const tag = this.tag;
    const vpn = Math.floor(va / PAGE_SIZE);
    let i = (vpn & this.#smallSetMask) * this.#smallWays;
    const end = i + this.#smallWays;
    for (; i < end; i++) {
      if (tag[i] === vpn) {
        const p = this.pcid[i];
        if (p === pcid || p === GLOBAL_PCID) {
          this.#stamp[i] = ++this.#clock;
          this.#counts[TLB_HIT]++;
          return i;
        }
      }
    }
    return this.#lookupLarge(va, pcid);
  }

  #lookupLarge(va: number, pcid: number): number {
    const tag = this.tag;
    for (let array = 1; array < 3; array++) {
      const vpn = Math.floor(va / (array === 1 ? PAGE_SIZE_2M : PAGE_SIZE_1G));
      const ways = this.#ways[array]!;
      let i = this.#base[array]! + (vpn & this.#setMask[array]!) * ways;
      const end = i + ways;
      for (; i < end; i++) {
        if (tag[i] === vpn) {
          const p = this.pcid[i];
          if (p === pcid || p === GLOBAL_PCID) return this.#hit(i);
        }
      }
    }
    this.#counts[TLB_MISS]++;
    return -1;
  }

  #hit(i: number): number {
    this.#stamp[i] = ++this.#clock;
    this.#counts[TLB_HIT]++;
    return i;
  }

  /**
   * Installs a translation: page containing `va` for `pcid`, physical page base
   * `pageBase`, `pageSize` (4 KiB, 2 MiB or 1 GiB), entry flags (rights | pkey << 3 |
   * TLB_DIRTY), whether it is global, and the frame's host storage if any. Replaces an entry for the same page, else an
   * empty way, else the least recently used one. Returns the entry index.
   */
  fill(
    va: number,
    pcid: number,
    pageBase: number,
    pageSize: number,
    flags: number,
    isGlobal: boolean,
    host: Uint32Array | undefined = undefined,
  ): number {
    const array = pageSize === PAGE_SIZE ? 0 : pageSize === PAGE_SIZE_2M ? 1 : 2;
    const vpn = Math.floor(va / pageSize);
    const ways = this.#ways[array]!;
    const first = this.#base[array]! + (vpn & this.#setMask[array]!) * ways;
    const tagPcid = isGlobal ? GLOBAL_PCID : pcid;
    let victim = -1;
    let oldest = Infinity;
    let isSamePage = false;
    for (let i = first; i < first + ways; i++) {
      const t = this.tag[i]!;
      if (t === vpn && (this.pcid[i] === tagPcid || this.pcid[i] === GLOBAL_PCID || isGlobal)) {
        victim = i; // same page: replace in place
        isSamePage = true;
        break;
      }
      if (t === INVALID_TAG) {
        if (oldest !== -Infinity) {
          victim = i;
          oldest = -Infinity;
        }
      } else if (this.#stamp[i]! < oldest) {
        victim = i;
        oldest = this.#stamp[i]!;
      }
    }
    if (!isSamePage && this.tag[victim] !== INVALID_TAG) this.#counts[TLB_EVICT]++;
    this.tag[victim] = vpn;
    this.pcid[victim] = tagPcid;
    this.flags[victim] = flags;
    this.frame[victim] = pageBase;
    this.offsetMask[victim] = pageSize - 1;
    this.host[victim] = host;
    this.#stamp[victim] = ++this.#clock;
    this.#counts[TLB_FILL]++;
    return victim;
  }

  /**
   * The invalidation that delivering a #PF for `va` performs (SDM 4.10.4.1): every entry
   * for the page of `va` in the current PCID, and global ones.
   */
  invalidateForFault(va: number, pcid: number): void {
    this.generation++;
    const before = this.#counts[TLB_INVALIDATED]!;
    this.#invalidateAddress(va, pcid, true);
    this.#counts[TLB_FLUSH_FAULT] += this.#counts[TLB_INVALIDATED]! - before;
  }

  /**
   * INVLPG: removes every entry, of any page size, that translates the page of `va` for
   * `pcid`, and every global entry for it whatever its PCID (SDM Vol. 2, INVLPG; 4.10.4.1).
   */
  invlpg(va: number, pcid: number): void {
    this.generation++;
    this.#counts[TLB_FLUSH_INVLPG]++;
    this.#invalidateAddress(va, pcid, true);
  }

  /**
   * INVPCID (SDM Vol. 2): type 0 removes the non-global entries for `va` and `pcid`;
   * type 1 all non-global entries of `pcid`; type 2 every entry, global ones included;
   * type 3 every non-global entry. The caller has checked the operands (#GP cases).
   */
  invpcid(type: 0 | 1 | 2 | 3, pcid: number, va: number): void {
    this.generation++;
    this.#counts[TLB_FLUSH_INVPCID]++;
    if (type === 0) this.#invalidateAddress(va, pcid, false);
    else if (type === 1) this.#invalidateWhere(pcid, false);
    else if (type === 2) this.#invalidateWhere(-2, true);
    else this.#invalidateWhere(-2, false);
  }

  /**
   * The flush of a MOV to CR3 without the no-flush bit: removes the non-global entries of
   * `pcid` (with PCIDE=0 every entry is PCID 0). SDM 4.10.4.1.
   */
  flushForCr3(pcid: number): void {
    this.generation++;
    this.#counts[TLB_FLUSH_CR3]++;
    this.#invalidateWhere(pcid, false);
  }

  /** Removes every entry of `pcid`, global ones kept (`pcid` -2: every non-global entry). */
  flushNonGlobal(pcid: number): void {
    this.generation++;
    this.#invalidateWhere(pcid, false);
  }

  /** Removes every entry, global ones included (a CR4.PGE toggle, for example). */
  flushAll(): void {
    this.generation++;
    this.#counts[TLB_FLUSH_ALL]++;
    this.#invalidateWhere(-2, true);
  }

  /** Number of valid entries (for tests and reports). */
  validEntries(): number {
    let n = 0;
    for (let i = 0; i < this.tag.length; i++) if (this.tag[i] !== INVALID_TAG) n++;
    return n;
  }

  #invalidateAddress(va: number, pcid: number, includeGlobal: boolean): void {
    for (let array = 0; array < 3; array++) {
      const size = array === 0 ? PAGE_SIZE : array === 1 ? PAGE_SIZE_2M : PAGE_SIZE_1G;
      const vpn = Math.floor(va / size);
      const ways = this.#ways[array]!;
      const first = this.#base[array]! + (vpn & this.#setMask[array]!) * ways;
      for (let i = first; i < first + ways; i++) {
        if (this.tag[i] !== vpn) continue;
        const p = this.pcid[i];
        if (p === pcid || (includeGlobal && p === GLOBAL_PCID)) {
          this.tag[i] = INVALID_TAG;
          this.#counts[TLB_INVALIDATED]++;
        }
      }
    }
  }

  // pcid -2 matches every non-global entry; includeGlobal also drops global ones.
  #invalidateWhere(pcid: number, includeGlobal: boolean): void {
    const tag = this.tag;
    for (let i = 0; i < tag.length; i++) {
      if (tag[i] === INVALID_TAG) continue;
      const p = this.pcid[i];
      if (p === GLOBAL_PCID ? includeGlobal : pcid === -2 || p === pcid) {
        tag[i] = INVALID_TAG;
        this.#counts[TLB_INVALIDATED]++;
      }
    }
  }
}
