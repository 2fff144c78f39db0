/**
 * The TLB on its own (Intel SDM Vol. 3A 4.10.2 caching, 4.10.4.1 invalidation; Vol. 2
 * INVLPG and INVPCID): geometry, set selection and LRU replacement, PCID tags and global
 * entries, and exactly which entries each invalidation removes, with exact counters.
 */

import assert from "node:assert/strict";
import { PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import { Stats, type StatsSnapshot } from "../../lib/x86/stats.ts";
import { DEFAULT_TLB_CONFIG, Tlb, TLB_DIRTY, type TlbConfig } from "../../lib/x86/tlb.ts";

/** 4 sets of 4 ways for 4 KiB pages: vpn 0, 4, 8, 12, 16 all fall in set 0. */
const SMALL_4X4: TlbConfig = {
  small: { entries: 16, ways: 4 },
  large: { entries: 8, ways: 2 },
  huge: { entries: 4, ways: 4 },
};

/** A linear address covered by one 4 KiB, one 2 MiB and one 1 GiB page at once. */
const VA = PAGE_SIZE_1G + 3 * PAGE_SIZE_2M + 5 * PAGE_SIZE + 0x123;

function newTlb(config: TlbConfig = SMALL_4X4): { tlb: Tlb; stats: Stats } {
  const stats = new Stats();
  return { tlb: new Tlb(stats, config), stats };
}

/** The counters under `tlb.` that are not zero. */
function tlbCounters(stats: Stats): StatsSnapshot {
  return Object.fromEntries(
    Object.entries(stats.nonZero()).filter(([name]) => name.startsWith("tlb.")),
  );
}

/**
 * Whether an entry translates `va` under `pcid`, read from the tag arrays: unlike
 * lookup() it neither counts nor refreshes the entry's LRU age.
 */
function isCached(tlb: Tlb, va: number, pcid: number): boolean {
  for (let i = 0; i < tlb.tag.length; i++) {
    const size = tlb.offsetMask[i]! + 1;
    if (tlb.tag[i] === Math.floor(va / size) && (tlb.pcid[i] === pcid || tlb.pcid[i] === -1)) {
      return true;
    }
  }
  return false;
}

/** Entries that translate `VA` in every page size: 4 KiB, 2 MiB and 1 GiB. */
function fillAllSizes(tlb: Tlb, pcid: number, isGlobal: boolean): void {
  tlb.fill(VA, pcid, 0x10000000, PAGE_SIZE, 0x3, isGlobal);
  tlb.fill(VA, pcid, 0x20000000, PAGE_SIZE_2M, 0x3, isGlobal);
  tlb.fill(VA, pcid, 0x40000000, PAGE_SIZE_1G, 0x3, isGlobal);
}

Deno.test("new Tlb() accepts the default, fully associative and direct-mapped geometries", () => {
  const stats = new Stats();
  assert.equal(new Tlb(stats).validEntries(), 0);
  assert.equal(new Tlb(stats, DEFAULT_TLB_CONFIG).tag.length, 1536 + 32 + 4);
  const full = { entries: 8, ways: 8 };
  const direct = { entries: 8, ways: 1 };
  assert.equal(new Tlb(stats, { small: full, large: direct, huge: full }).tag.length, 24);
});

Deno.test("new Tlb() throws a RangeError naming the array for an impossible geometry", () => {
  const ok = { entries: 4, ways: 2 };
  const tail = "entries must be a positive multiple of ways with a power-of-two set count";
  const cases: [TlbConfig, string][] = [
    [{ small: { entries: 12, ways: 5 }, large: ok, huge: ok }, "small array of 12 entries, 5 ways"],
    [{ small: { entries: 12, ways: 4 }, large: ok, huge: ok }, "small array of 12 entries, 4 ways"],
    [{ small: ok, large: { entries: 2, ways: 4 }, huge: ok }, "large array of 2 entries, 4 ways"],
    [{ small: ok, large: ok, huge: { entries: 4, ways: 0 } }, "huge array of 4 entries, 0 ways"],
    [{ small: ok, large: ok, huge: { entries: 0, ways: 1 } }, "huge array of 0 entries, 1 ways"],
    [
      { small: { entries: 4.5, ways: 1 }, large: ok, huge: ok },
      "small array of 4.5 entries, 1 ways",
    ],
    [
      { small: ok, large: { entries: 8, ways: 2.5 }, huge: ok },
      "large array of 8 entries, 2.5 ways",
    ],
  ];
  for (const [config, what] of cases) {
    assert.throws(() => new Tlb(new Stats(), config), {
      name: "RangeError",
      message: `Cannot build TLB: ${what}; ${tail}`,
    });
  }
});

Deno.test("lookup() counts exactly one hit or one miss per call, whatever the page size", () => {
  const { tlb, stats } = newTlb();
  assert.equal(tlb.lookup(VA, 0), -1);
  assert.deepEqual(tlbCounters(stats), { "tlb.miss": 1 });
  tlb.fill(VA, 0, 0x40000000, PAGE_SIZE_1G, 0x3, false);
  assert.ok(tlb.lookup(VA, 0) >= 0); // found in the last array searched
  tlb.fill(VA, 0, 0x20000000, PAGE_SIZE_2M, 0x3, false);
  tlb.fill(VA, 0, 0x10000000, PAGE_SIZE, 0x3, false);
  assert.ok(tlb.lookup(VA, 0) >= 0);
  assert.equal(tlb.lookup(VA, 7), -1);
  assert.deepEqual(tlbCounters(stats), { "tlb.hit": 2, "tlb.miss": 2, "tlb.fill": 3 });
});

Deno.test("lookup() returns the entry whose frame, offset mask and flags translate the address", () => {
  const { tlb } = newTlb();
  const flags = 0x3 | (5 << 3) | TLB_DIRTY;
  tlb.fill(VA, 0, 0x7fe00000, PAGE_SIZE_2M, flags, false);
  const i = tlb.lookup(VA, 0);
  assert.equal(tlb.frame[i], 0x7fe00000);
  assert.equal(tlb.offsetMask[i], PAGE_SIZE_2M - 1);
  assert.equal(tlb.flags[i], flags);
  assert.equal(tlb.frame[i]! + (VA & tlb.offsetMask[i]!), 0x7fe00000 + 5 * PAGE_SIZE + 0x123);
});

Deno.test("lookup() prefers the 4 KiB entry when a 4 KiB and a 2 MiB entry cover the address", () => {
  const { tlb } = newTlb();
  tlb.fill(VA, 0, 0x20000000, PAGE_SIZE_2M, 0x3, false);
  tlb.fill(VA, 0, 0x10000000, PAGE_SIZE, 0x3, false);
  assert.equal(tlb.frame[tlb.lookup(VA, 0)], 0x10000000);
  assert.equal(tlb.frame[tlb.lookup(VA + PAGE_SIZE, 0)], 0x20000000);
});

Deno.test("fill() evicts the least recently used way of a full set and counts tlb.evict", () => {
  const { tlb, stats } = newTlb();
  // vpn 0, 4, 8, 12 fill set 0's four ways; touching vpn 0 makes vpn 4 the LRU way.
  for (const vpn of [0, 4, 8, 12]) {
    tlb.fill(vpn * PAGE_SIZE, 0, vpn * PAGE_SIZE, PAGE_SIZE, 3, false);
  }
  assert.equal(stats.get("tlb.evict"), 0);
  assert.ok(tlb.lookup(0, 0) >= 0);
  tlb.fill(16 * PAGE_SIZE, 0, 0x99000, PAGE_SIZE, 3, false);
  assert.equal(stats.get("tlb.evict"), 1);
  assert.equal(tlb.validEntries(), 4);
  for (const vpn of [0, 8, 12, 16]) assert.ok(isCached(tlb, vpn * PAGE_SIZE, 0), `${vpn}`);
  assert.equal(isCached(tlb, 4 * PAGE_SIZE, 0), false);
  // Next victim: vpn 8 (filled before 12 and 16, never looked up since).
  tlb.fill(20 * PAGE_SIZE, 0, 0x9a000, PAGE_SIZE, 3, false);
  assert.equal(stats.get("tlb.evict"), 2);
  assert.equal(isCached(tlb, 8 * PAGE_SIZE, 0), false);
  assert.ok(isCached(tlb, 0, 0));
});

Deno.test("fill() never evicts from another set", () => {
  const { tlb, stats } = newTlb();
  for (const vpn of [1, 2, 3]) tlb.fill(vpn * PAGE_SIZE, 0, 0, PAGE_SIZE, 3, false);
  for (const vpn of [0, 4, 8, 12, 16, 20]) tlb.fill(vpn * PAGE_SIZE, 0, 0, PAGE_SIZE, 3, false);
  assert.equal(stats.get("tlb.evict"), 2);
  for (const vpn of [1, 2, 3]) assert.ok(isCached(tlb, vpn * PAGE_SIZE, 0));
  assert.equal(tlb.validEntries(), 7);
});

Deno.test("fill() replaces the LRU 2 MiB entry in the large array", () => {
  const { tlb, stats } = newTlb(); // large: 4 sets of 2 ways
  const page = (n: number) => n * PAGE_SIZE_2M;
  tlb.fill(page(0), 0, 0, PAGE_SIZE_2M, 3, false);
  tlb.fill(page(4), 0, 0, PAGE_SIZE_2M, 3, false);
  assert.ok(tlb.lookup(page(0) + 0x1234, 0) >= 0);
  tlb.fill(page(8), 0, 0, PAGE_SIZE_2M, 3, false);
  assert.equal(stats.get("tlb.evict"), 1);
  assert.equal(isCached(tlb, page(4), 0), false);
  assert.ok(isCached(tlb, page(0), 0));
  assert.ok(isCached(tlb, page(8) + PAGE_SIZE_2M - 1, 0));
});

Deno.test("fill() replaces an entry for the same page and PCID in place, without an eviction", () => {
  const { tlb, stats } = newTlb();
  const first = tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 0x1, false);
  const second = tlb.fill(0x5abc, 1, 0xa000, PAGE_SIZE, 0x3 | TLB_DIRTY, false);
  assert.equal(second, first);
  assert.equal(tlb.validEntries(), 1);
  assert.equal(tlb.frame[tlb.lookup(0x5000, 1)], 0xa000);
  assert.equal(tlb.flags[first], 0x3 | TLB_DIRTY);
  assert.deepEqual(tlbCounters(stats), { "tlb.hit": 1, "tlb.fill": 2 });
});

Deno.test("fill() counts an eviction when the LRU victim is another PCID's entry for the same page", () => {
  const { tlb, stats } = newTlb({
    small: { entries: 2, ways: 2 },
    large: { entries: 2, ways: 2 },
    huge: { entries: 2, ways: 2 },
  });
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  tlb.fill(0x6000, 1, 0xa000, PAGE_SIZE, 3, false);
  // The set is full; the victim is PCID 1's entry for page 5, a valid entry lost to make room.
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  assert.equal(isCached(tlb, 0x5000, 1), false);
  assert.equal(tlb.validEntries(), 2);
  assert.equal(stats.get("tlb.evict"), 1);
});

Deno.test("lookup() does not see an entry of PCID 1 under PCID 2", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  assert.equal(tlb.lookup(0x5000, 2), -1);
  assert.equal(tlb.lookup(0x5000, 0), -1);
  assert.ok(tlb.lookup(0x5000, 1) >= 0);
  assert.deepEqual(tlbCounters(stats), { "tlb.hit": 1, "tlb.miss": 2, "tlb.fill": 1 });
});

Deno.test("lookup() sees a global entry under every PCID", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, true);
  tlb.fill(VA, 3, 0x20000000, PAGE_SIZE_2M, 3, true);
  for (const pcid of [0, 1, 2, 0xfff]) {
    assert.equal(tlb.frame[tlb.lookup(0x5000, pcid)], 0x9000);
    assert.equal(tlb.frame[tlb.lookup(VA, pcid)], 0x20000000);
  }
  assert.equal(stats.get("tlb.miss"), 0);
});

Deno.test("fill() of PCIDs 1 and 2 for one page keeps two entries, each seen by its own PCID", () => {
  const { tlb } = newTlb();
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  tlb.fill(0x5000, 2, 0xa000, PAGE_SIZE, 3, false);
  assert.equal(tlb.validEntries(), 2);
  assert.equal(tlb.frame[tlb.lookup(0x5000, 1)], 0x9000);
  assert.equal(tlb.frame[tlb.lookup(0x5000, 2)], 0xa000);
});

Deno.test("flushForCr3() removes the PCID's non-global entries and keeps globals and other PCIDs", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  tlb.fill(VA, 1, 0x20000000, PAGE_SIZE_2M, 3, false);
  tlb.fill(0x6000, 1, 0xa000, PAGE_SIZE, 3, true);
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  tlb.flushForCr3(1);
  assert.equal(isCached(tlb, 0x5000, 1), false);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.ok(isCached(tlb, 0x6000, 1));
  assert.equal(tlb.frame[tlb.lookup(0x5000, 2)], 0xb000);
  assert.equal(stats.get("tlb.flush.cr3"), 1);
  assert.equal(stats.get("tlb.invalidated"), 2);
  assert.equal(tlb.validEntries(), 2);
});

Deno.test("flushNonGlobal() with -2 removes every PCID's non-global entries, without a flush count", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  tlb.fill(0x6000, 1, 0xa000, PAGE_SIZE, 3, true);
  tlb.flushNonGlobal(-2);
  assert.equal(tlb.validEntries(), 1);
  assert.ok(isCached(tlb, 0x6000, 5));
  assert.deepEqual(tlbCounters(stats), { "tlb.fill": 3, "tlb.invalidated": 2 });
});

Deno.test("flushAll() removes global entries and every PCID's entries", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, true);
  tlb.fill(VA + PAGE_SIZE, 2, 0x10001000, PAGE_SIZE, 3, false);
  tlb.fill(VA + PAGE_SIZE_2M, 2, 0x20200000, PAGE_SIZE_2M, 3, false);
  tlb.fill(VA + PAGE_SIZE_1G, 2, 0x80000000, PAGE_SIZE_1G, 3, false);
  tlb.fill(0x5000, 3, 0x9000, PAGE_SIZE, 3, false);
  assert.equal(tlb.validEntries(), 7);
  tlb.flushAll();
  assert.equal(tlb.validEntries(), 0);
  assert.equal(stats.get("tlb.flush.all"), 1);
  assert.equal(stats.get("tlb.invalidated"), 7);
  tlb.flushAll(); // nothing left: a flush counted, nothing invalidated
  assert.equal(stats.get("tlb.flush.all"), 2);
  assert.equal(stats.get("tlb.invalidated"), 7);
});

Deno.test("invlpg() removes the 4 KiB, 2 MiB and 1 GiB entries that cover the address", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, false);
  tlb.fill(VA + PAGE_SIZE, 1, 0x11000000, PAGE_SIZE, 3, false); // next 4 KiB page
  tlb.invlpg(VA, 1);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.equal(tlb.frame[tlb.lookup(VA + PAGE_SIZE, 1)], 0x11000000);
  assert.equal(stats.get("tlb.flush.invlpg"), 1);
  assert.equal(stats.get("tlb.invalidated"), 3);
  // The 2 MiB and 1 GiB pages were dropped whole: other addresses in them miss too.
  assert.equal(isCached(tlb, VA + 2 * PAGE_SIZE, 1), false);
  assert.equal(isCached(tlb, PAGE_SIZE_1G, 1), false);
});

Deno.test("invlpg() removes a global 2 MiB entry", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(VA, 5, 0x20000000, PAGE_SIZE_2M, 3, true); // filled while PCID 5 was current
  tlb.invlpg(VA - (VA % PAGE_SIZE_2M) + 0x1fffff, 1); // last byte of the page, under PCID 1
  assert.equal(tlb.validEntries(), 0);
  assert.equal(stats.get("tlb.invalidated"), 1);
});

Deno.test("invlpg() removes global entries of any PCID but keeps other PCIDs' non-global entries", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(VA, 1, 0x10000000, PAGE_SIZE, 3, false); // current PCID: removed
  tlb.fill(VA, 2, 0x20000000, PAGE_SIZE_2M, 3, true); // global: removed
  tlb.fill(VA, 3, 0x30000000, PAGE_SIZE, 3, false); // other PCID: kept
  tlb.fill(VA, 3, 0x40000000, PAGE_SIZE_1G, 3, false); // other PCID: kept
  tlb.invlpg(VA, 1);
  assert.equal(tlb.validEntries(), 2);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.equal(isCached(tlb, VA, 2), false);
  assert.equal(tlb.frame[tlb.lookup(VA, 3)], 0x30000000);
  assert.equal(tlb.frame[tlb.lookup(VA + PAGE_SIZE, 3)], 0x40000000);
  assert.equal(stats.get("tlb.invalidated"), 2);
  assert.equal(stats.get("tlb.flush.invlpg"), 1);
});

Deno.test("invpcid() type 0 removes the PCID's non-global entries for the address only", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, false);
  tlb.fill(VA + PAGE_SIZE_1G, 1, 0x9000, PAGE_SIZE, 3, true); // global, other address
  tlb.fill(VA + PAGE_SIZE, 1, 0x11000000, PAGE_SIZE, 3, false); // same PCID, next page
  tlb.fill(VA, 2, 0x30000000, PAGE_SIZE, 3, false); // other PCID
  tlb.invpcid(0, 1, VA);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.equal(tlb.frame[tlb.lookup(VA + PAGE_SIZE, 1)], 0x11000000);
  assert.equal(tlb.frame[tlb.lookup(VA, 2)], 0x30000000);
  assert.equal(tlb.validEntries(), 3);
  assert.equal(stats.get("tlb.invalidated"), 3);
  assert.equal(stats.get("tlb.flush.invpcid"), 1);
});

Deno.test("invpcid() type 0 keeps a global entry for the address", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(VA, 1, 0x20000000, PAGE_SIZE_2M, 3, true);
  tlb.invpcid(0, 1, VA);
  assert.equal(tlb.frame[tlb.lookup(VA, 1)], 0x20000000);
  assert.equal(stats.get("tlb.invalidated"), 0);
  assert.equal(stats.get("tlb.flush.invpcid"), 1);
});

Deno.test("invpcid() type 1 removes every non-global entry of the PCID and keeps globals", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, false);
  tlb.fill(0x5000, 1, 0x9000, PAGE_SIZE, 3, false);
  tlb.fill(0x6000, 1, 0xa000, PAGE_SIZE, 3, true);
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  tlb.invpcid(1, 1, 0);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.equal(isCached(tlb, 0x5000, 1), false);
  assert.ok(isCached(tlb, 0x6000, 1));
  assert.equal(tlb.frame[tlb.lookup(0x5000, 2)], 0xb000);
  assert.equal(stats.get("tlb.invalidated"), 4);
  assert.equal(tlb.validEntries(), 2);
});

Deno.test("invpcid() type 2 removes every entry, global ones included", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, true);
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  tlb.invpcid(2, 0, 0);
  assert.equal(tlb.validEntries(), 0);
  assert.equal(stats.get("tlb.invalidated"), 4);
  assert.equal(stats.get("tlb.flush.invpcid"), 1);
  assert.equal(stats.get("tlb.flush.all"), 0);
});

Deno.test("invpcid() type 3 removes every non-global entry of every PCID and keeps globals", () => {
  const { tlb, stats } = newTlb();
  fillAllSizes(tlb, 1, false);
  tlb.fill(0x5000, 2, 0xb000, PAGE_SIZE, 3, false);
  tlb.fill(0x6000, 7, 0xa000, PAGE_SIZE, 3, true);
  tlb.fill(VA + PAGE_SIZE_1G, 9, 0x40000000, PAGE_SIZE_1G, 3, true);
  tlb.invpcid(3, 0, 0);
  assert.equal(tlb.validEntries(), 2);
  assert.ok(isCached(tlb, 0x6000, 0));
  assert.ok(isCached(tlb, VA + PAGE_SIZE_1G, 0));
  assert.equal(stats.get("tlb.invalidated"), 4);
});

Deno.test("invalidateForFault() removes the current PCID's and global entries for the address", () => {
  const { tlb, stats } = newTlb();
  tlb.fill(VA, 1, 0x10000000, PAGE_SIZE, 3, false);
  tlb.fill(VA, 4, 0x20000000, PAGE_SIZE_2M, 3, true);
  tlb.fill(VA, 2, 0x30000000, PAGE_SIZE, 3, false);
  tlb.fill(VA + PAGE_SIZE, 1, 0x11000000, PAGE_SIZE, 3, false);
  tlb.invalidateForFault(VA, 1);
  assert.equal(isCached(tlb, VA, 1), false);
  assert.ok(isCached(tlb, VA, 2));
  assert.ok(isCached(tlb, VA + PAGE_SIZE, 1));
  assert.deepEqual(tlbCounters(stats), {
    "tlb.fill": 4,
    "tlb.flush.fault": 2,
    "tlb.invalidated": 2,
  });
  tlb.invalidateForFault(VA, 1); // nothing left for the address
  assert.equal(stats.get("tlb.flush.fault"), 2);
});

Deno.test("invalidations of an empty TLB count the operation and no entries", () => {
  const { tlb, stats } = newTlb();
  tlb.invlpg(VA, 0);
  tlb.invpcid(0, 0, VA);
  tlb.invpcid(1, 0, 0);
  tlb.invpcid(2, 0, 0);
  tlb.invpcid(3, 0, 0);
  tlb.flushForCr3(0);
  tlb.flushAll();
  assert.deepEqual(tlbCounters(stats), {
    "tlb.flush.cr3": 1,
    "tlb.flush.invlpg": 1,
    "tlb.flush.invpcid": 4,
    "tlb.flush.all": 1,
  });
});

Deno.test("lookup() tells apart pages whose numbers differ only above bit 31", () => {
  const { tlb } = newTlb();
  const top = 2 ** 48 - PAGE_SIZE; // vpn 2^36 - 1
  const alias = top - 2 ** 44; // vpn differs by 2^32: same low 32 bits, same set
  tlb.fill(top, 0, 0x9000, PAGE_SIZE, 3, false);
  assert.equal(tlb.frame[tlb.lookup(top + 0xfff, 0)], 0x9000);
  assert.equal(isCached(tlb, alias, 0), false);
  tlb.fill(alias, 0, 0xa000, PAGE_SIZE, 3, false);
  tlb.invlpg(alias, 0);
  assert.equal(tlb.frame[tlb.lookup(top, 0)], 0x9000);
  assert.equal(isCached(tlb, alias, 0), false);
});
