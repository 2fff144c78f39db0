/**
 * The 2-D walker against SDM Vol. 3C 29.3 (EPT translation, misconfigurations,
 * violations, A/D flags) and Table 28-7 (exit qualification): the 24 references of a
 * 4-level guest over a 4-level EPT in their exact order, the counts with large pages in
 * either dimension ((n + 1)(m + 1) - 1), exits with their GPA and qualification, and the
 * references the walk caches save.
 *
 * Layout of every fixture (host-physical memory of 8 MiB):
 * - guest tables at GPA 0x1000 (the l4, CR3), 0x2000, 0x3000, ... in the order made;
 * - RAM GPA 0..4 MiB mapped by the EPT at HPA = GPA + 2 MiB (4 KiB and 2 MiB EPT pages)
 *   or HPA = GPA (one 1 GiB EPT page);
 * - EPT tables at HPA 0x700000 (PML4), 0x701000 (PDPT), 0x702000 (PD), 0x703000 and
 *   0x704000 (PTs for GFN 0..511 and 512..1023).
 */

import assert from "node:assert/strict";
import { MachineMemory } from "../../lib/memory/machine_memory.ts";
import { ACCESS_FETCH, ACCESS_READ, ACCESS_WRITE, type AccessKind } from "../../lib/x86/access.ts";
import { levelIndex, PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import {
  EPT_ACCESSED,
  EPT_DIRTY,
  EPT_EXECUTE,
  EPT_MEMTYPE_SHIFT,
  EPT_MEMTYPE_WB,
  EPT_PAGE_SIZE,
  EPT_READ,
  EPT_RWX,
  EPT_WRITE,
  eptAddress,
  eptHigh,
  eptLow,
  eptpOf,
} from "../../lib/x86/ept.ts";
import { NestedWalker } from "../../lib/x86/nested_walk.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  PagingControl,
  PFEC_PRESENT,
  PFEC_RSVD,
  PFEC_USER,
} from "../../lib/x86/paging_control.ts";
import type { PhysicalMemory } from "../../lib/x86/physical_memory.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteHigh,
  pteLow,
} from "../../lib/x86/pte.ts";
import { Stats } from "../../lib/x86/stats.ts";
import { Tlb } from "../../lib/x86/tlb.ts";
import { Vcpu, VECTOR_EPT_MISCONFIG, VECTOR_EPT_VIOLATION, VECTOR_PF } from "../../lib/x86/vcpu.ts";

const ALL = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const WB = EPT_MEMTYPE_WB << EPT_MEMTYPE_SHIFT;
const EPT_POOL = 0x700000;
const RAM_BYTES = 0x400000;
/** va with l4 index 1, l3 index 2, l2 index 3, l1 index 4, offset 0x567. */
const VA = 2 ** 39 + 2 * 2 ** 30 + 3 * 2 ** 21 + 4 * 2 ** 12 + 0x567;
/** GPA of the 4 KiB data page VA maps. */
const DATA_GPA = 0x80000;

/** Physical memory that records the address of every 8-byte entry read. */
class LoggingMemory implements PhysicalMemory {
  readonly log: number[] = [];
  constructor(readonly inner: MachineMemory) {}
  read8(pa: number): number {
    return this.inner.read8(pa);
  }
  read16(pa: number): number {
    return this.inner.read16(pa);
  }
  read32(pa: number): number {
    if (pa % 8 === 0) this.log.push(pa);
    return this.inner.read32(pa);
  }
  write8(pa: number, value: number): void {
    this.inner.write8(pa, value);
  }
  write16(pa: number, value: number): void {
    this.inner.write16(pa, value);
  }
  write32(pa: number, value: number): void {
    this.inner.write32(pa, value);
  }
  hostFrame(pfn: number, materialize: boolean): Uint32Array | undefined {
    return this.inner.hostFrame(pfn, materialize);
  }
}

interface FixtureOptions {
  /** EPT page size for RAM: 4 KiB (default), 2 MiB or 1 GiB. */
  eptPageSize?: number;
  /** EPTP bit 6; default false. */
  ad?: boolean;
  /** Walk caches; default false, so counts are the plain 2-D walk's. */
  walkCaches?: boolean;
}

/** Guest tables, the EPT, a walker and the guest's control registers. */
class Fixture {
  readonly machine = new MachineMemory({ frames: 2048 });
  readonly memory = new LoggingMemory(this.machine);
  readonly stats = new Stats();
  readonly walker: NestedWalker;
  readonly ctl = new PagingControl({ cr3: 0x1000 });
  /** HPA - GPA for RAM. */
  readonly hostOffset: number;
  readonly eptRoot = EPT_POOL;
  #nextEptTable = EPT_POOL + PAGE_SIZE;
  #nextGuestTable = 0x2000;

  constructor(options: FixtureOptions = {}) {
    const size = options.eptPageSize ?? PAGE_SIZE;
    this.hostOffset = size === PAGE_SIZE_1G ? 0 : 0x200000;
    for (let gpa = 0; gpa < RAM_BYTES; gpa += Math.min(size, RAM_BYTES)) {
      this.mapEpt(gpa, gpa + this.hostOffset, size, EPT_RWX | WB);
    }
    this.walker = new NestedWalker(this.memory, this.stats, {
      eptp: eptpOf(this.eptRoot, options.ad ?? false),
      walkCaches: options.walkCaches ?? false,
    });
  }

  /** Writes an EPT leaf for `gpa` of `pageSize` with low flags `flags` (PS added). */
  mapEpt(gpa: number, hpa: number, pageSize: number, flags: number): void {
    const leafLevel = pageSize === PAGE_SIZE ? 1 : pageSize === PAGE_SIZE_2M ? 2 : 3;
    let table = this.eptRoot;
    for (let level = 4; level > leafLevel; level--) {
      const entry = table + levelIndex(gpa, level) * 8;
      if ((this.machine.read32(entry) & EPT_RWX) === 0) {
        const next = this.#nextEptTable;
        this.#nextEptTable += PAGE_SIZE;
        this.machine.write32(entry, eptLow(next, EPT_RWX));
        this.machine.write32(entry + 4, eptHigh(next));
      }
      table = eptAddress(this.machine.read32(entry), this.machine.read32(entry + 4));
    }
    const entry = table + levelIndex(gpa, leafLevel) * 8;
    this.machine.write32(entry, eptLow(hpa, flags | (leafLevel === 1 ? 0 : EPT_PAGE_SIZE)));
    this.machine.write32(entry + 4, eptHigh(hpa));
  }

  /** HPA of the EPT entry at `level` that translates `gpa`. */
  eptEntry(gpa: number, level: number): number {
    let table = this.eptRoot;
    for (let l = 4; l > level; l--) {
      const entry = table + levelIndex(gpa, l) * 8;
      table = eptAddress(this.machine.read32(entry), this.machine.read32(entry + 4));
    }
    return table + levelIndex(gpa, level) * 8;
  }

  /** HPA of guest-physical `gpa` (RAM). */
  hpa(gpa: number): number {
    return gpa + this.hostOffset;
  }

  /** Maps guest `va` to `gpa` with a page of `pageSize`, making guest tables as needed. */
  mapGuest(va: number, gpa: number, pageSize = PAGE_SIZE, flags = ALL): void {
    const leafLevel = pageSize === PAGE_SIZE ? 1 : pageSize === PAGE_SIZE_2M ? 2 : 3;
    let table = 0x1000;
    for (let level = 4; level > leafLevel; level--) {
      const entry = this.hpa(table + levelIndex(va, level) * 8);
      if ((this.machine.read32(entry) & PTE_PRESENT) === 0) {
        const next = this.#nextGuestTable;
        this.#nextGuestTable += PAGE_SIZE;
        this.machine.write32(entry, pteLow(next, ALL));
        this.machine.write32(entry + 4, pteHigh(next));
      }
      table = this.machine.read32(entry) & ~0xfff;
    }
    const entry = this.hpa(table + levelIndex(va, leafLevel) * 8);
    this.machine.write32(entry, pteLow(gpa, flags | (leafLevel === 1 ? 0 : PTE_PAGE_SIZE)));
    this.machine.write32(entry + 4, pteHigh(gpa));
  }

  /** GPA of the guest entry at `level` for `va` (the tables must exist). */
  guestEntry(va: number, level: number): number {
    let table = 0x1000;
    for (let l = 4; l > level; l--) {
      table = this.machine.read32(this.hpa(table + levelIndex(va, l) * 8)) & ~0xfff;
    }
    return table + levelIndex(va, level) * 8;
  }

  walk(va: number, kind: AccessKind = ACCESS_READ, ctl: PagingControl = this.ctl): number {
    this.memory.log.length = 0;
    return this.walker.walk(ctl, va, kind, null);
  }
}

Deno.test("walk() reads the 24 entries of a 4-level guest over a 4-level EPT, in order", () => {
  const f = new Fixture();
  f.mapGuest(VA, DATA_GPA);
  assert.equal(f.walk(VA), 0x280567); // GPA 0x80567 + 2 MiB
  // Worked by hand: each guest entry's GPA (table + index * 8) goes through EPT PML4E,
  // PDPTE, PDE, PTE (index = GFN), then the guest entry is read at GPA + 2 MiB.
  const ept = [0x700000, 0x701000, 0x702000];
  assert.deepEqual(f.memory.log, [
    ...ept,
    0x703000 + 1 * 8,
    0x201008, // gl4e: GPA 0x1000 + 1 * 8 (CR3 = GFN 1)
    ...ept,
    0x703000 + 2 * 8,
    0x202010, // gl3e: GPA 0x2000 + 2 * 8
    ...ept,
    0x703000 + 3 * 8,
    0x203018, // gl2e: GPA 0x3000 + 3 * 8
    ...ept,
    0x703000 + 4 * 8,
    0x204020, // gl1e: GPA 0x4000 + 4 * 8
    ...ept,
    0x703000 + 0x80 * 8, // the final GPA 0x80567: GFN 0x80
  ]);
  assert.equal(f.walker.refs, 24);
  assert.equal(f.walker.nestedRefs, 20);
  assert.equal(f.walker.pageSize, PAGE_SIZE);
  assert.equal(f.walker.pageBase, 0x280000);
  assert.equal(f.stats.get("walk.refs"), 24);
  assert.equal(f.stats.get("walk.nestedRefs"), 20);
  assert.equal(f.stats.get("walk.refsHist2d.24"), 1);
  assert.equal(f.stats.get("walk.count"), 1);
  assert.equal(f.stats.get("walk.adWrite"), 4); // guest A on l4e .. l1e
});

Deno.test("walk() references (n + 1)(m + 1) - 1 entries for guest and EPT pages of every size", () => {
  // Guest pages: 4 KiB (n = 4 levels), 2 MiB (3), 1 GiB (2); EPT pages likewise (m).
  const guest = [
    { size: PAGE_SIZE, va: VA, gpa: DATA_GPA, expect: 0x80567 },
    { size: PAGE_SIZE_2M, va: VA, gpa: 0x200000, expect: 0x204567 },
    { size: PAGE_SIZE_1G, va: 2 ** 39 + 2 * 2 ** 30 + 0x12345, gpa: 0, expect: 0x12345 },
  ];
  const ept = [PAGE_SIZE, PAGE_SIZE_2M, PAGE_SIZE_1G];
  const refs = [
    [24, 19, 14], // guest 4 KiB: 4 * (m + 1) + m
    [19, 15, 11], // guest 2 MiB: 3 * (m + 1) + m
    [14, 11, 8], // guest 1 GiB: 2 * (m + 1) + m
  ];
  for (const [g, page] of guest.entries()) {
    for (const [e, eptSize] of ept.entries()) {
      const f = new Fixture({ eptPageSize: eptSize });
      f.mapGuest(page.va, page.gpa, page.size);
      const label = `guest ${page.size} over EPT ${eptSize}`;
      assert.equal(f.walk(page.va), f.hpa(page.expect), label);
      assert.equal(f.walker.refs, refs[g]![e]!, label);
      assert.equal(f.stats.get(`walk.refsHist2d.${refs[g]![e]!}`), 1, label);
      // The combined page is the smaller of the two; its base is host-physical.
      const size = Math.min(page.size, eptSize);
      assert.equal(f.walker.pageSize, size, label);
      assert.equal(f.walker.pageBase, f.hpa(page.expect) - (f.hpa(page.expect) % size), label);
    }
  }
});

Deno.test("walk() with paging off translates the linear address as a GPA through the EPT only", () => {
  const f = new Fixture();
  const ctl = new PagingControl({ cr0: CR0_PE, cr4: CR4_PAE, efer: EFER_LME | EFER_NXE });
  assert.equal(f.walk(0x80567, ACCESS_WRITE, ctl), 0x280567);
  assert.equal(f.walker.refs, 4);
  assert.equal(f.walker.pageBase, 0x280000);
});

Deno.test("walk() raises an EPT violation for a guest table frame the EPT does not map", () => {
  for (const ad of [false, true]) {
    const f = new Fixture({ ad });
    f.mapGuest(VA, DATA_GPA);
    f.machine.write32(f.eptEntry(0x3000, 1), 0); // the guest l2 table's GFN 3
    f.stats.reset();
    assert.equal(f.walk(VA), -1);
    assert.equal(f.walker.exitVector, VECTOR_EPT_VIOLATION);
    assert.equal(f.walker.exitGpa, 0x3018); // the gl2e's GPA
    // read (plus write with EPT A/D: table reads count as writes), no rights (not
    // present), linear address valid, a paging-structure access (bit 8 clear).
    assert.equal(f.walker.exitQualification, ad ? 0x83 : 0x81);
    assert.equal(f.walker.refs, 14); // gl4e 5, gl3e 5, then 4 EPT refs to the empty PTE
    assert.equal(f.stats.get("walk.eptViolation"), 1);
    assert.equal(f.stats.get("walk.refsHist2d.14"), 1);
    assert.equal(f.stats.get("walk.adWrite"), 0); // a failed walk sets no guest A
  }
});

Deno.test("walk() stops at the first not-present EPT level", () => {
  const f = new Fixture();
  f.mapGuest(VA, DATA_GPA);
  f.machine.write32(f.eptEntry(0x1000, 2), 0); // the EPT PDE of GPA 0..2 MiB
  assert.equal(f.walk(VA), -1);
  assert.equal(f.walker.exitGpa, 0x1008); // CR3's gl4e
  assert.equal(f.walker.exitQualification, 0x81);
  assert.equal(f.walker.refs, 3);
});

Deno.test("walk() raises EPT violations on the final GPA with the access and the rights", () => {
  const cases: { flags: number; kind: AccessKind; qualification: number }[] = [
    { flags: 0, kind: ACCESS_WRITE, qualification: 0x182 }, // not present: write, final
    { flags: EPT_READ | WB, kind: ACCESS_WRITE, qualification: 0x18a }, // R only
    { flags: EPT_READ | EPT_WRITE | WB, kind: ACCESS_FETCH, qualification: 0x19c }, // no X
    { flags: EPT_EXECUTE | WB, kind: ACCESS_READ, qualification: 0x1a1 }, // execute-only
  ];
  for (const c of cases) {
    const f = new Fixture();
    f.mapGuest(VA, DATA_GPA);
    f.mapEpt(DATA_GPA, f.hpa(DATA_GPA), PAGE_SIZE, c.flags);
    assert.equal(f.walk(VA, c.kind), -1);
    assert.equal(f.walker.exitVector, VECTOR_EPT_VIOLATION);
    assert.equal(f.walker.exitGpa, DATA_GPA + 0x567);
    assert.equal(f.walker.exitQualification, c.qualification, `flags ${c.flags}`);
    assert.equal(f.walker.refs, 24);
  }
});

Deno.test("walk() needs EPT write permission for guest A/D updates (and for every table read with EPT A/D)", () => {
  // The guest l1 table's frame (GFN 4) is read-only in the EPT.
  const plain = new Fixture();
  plain.mapGuest(VA, DATA_GPA);
  plain.mapEpt(0x4000, plain.hpa(0x4000), PAGE_SIZE, EPT_READ | WB);
  assert.equal(plain.walk(VA), -1); // setting A in the gl1e is a write
  assert.equal(plain.walker.exitGpa, 0x4020);
  assert.equal(plain.walker.exitQualification, 0x8a); // write, rights R, paging-structure
  assert.equal(plain.walker.refs, 24);
  assert.equal(plain.machine.read32(plain.hpa(0x1008)) & PTE_ACCESSED, 0); // nothing set
  // With A already set in every guest entry no write is needed: the walk succeeds.
  for (let level = 4; level >= 1; level--) {
    const entry = plain.hpa(plain.guestEntry(VA, level));
    plain.machine.write32(entry, plain.machine.read32(entry) | PTE_ACCESSED);
  }
  assert.equal(plain.walk(VA), 0x280567);

  const ad = new Fixture({ ad: true });
  ad.mapGuest(VA, DATA_GPA);
  ad.mapEpt(0x4000, ad.hpa(0x4000), PAGE_SIZE, EPT_READ | WB);
  assert.equal(ad.walk(VA), -1); // the read of the gl1e itself is treated as a write
  assert.equal(ad.walker.exitGpa, 0x4020);
  assert.equal(ad.walker.exitQualification, 0x8b); // read + write, rights R
  assert.equal(ad.walker.refs, 19);
});

Deno.test("walk() reports EPT misconfigurations with the GPA and no qualification", () => {
  const cases: { label: string; poke: (f: Fixture) => void; gpa: number; refs: number }[] = [
    {
      label: "W without R in the final leaf",
      poke: (f) => f.mapEpt(DATA_GPA, f.hpa(DATA_GPA), PAGE_SIZE, EPT_WRITE | WB),
      gpa: DATA_GPA + 0x567,
      refs: 24,
    },
    {
      label: "memory type 2 in a leaf",
      poke: (f) => f.mapEpt(DATA_GPA, f.hpa(DATA_GPA), PAGE_SIZE, EPT_RWX | (2 << 3)),
      gpa: DATA_GPA + 0x567,
      refs: 24,
    },
    {
      label: "PS in the PML4E",
      poke: (f) => f.machine.write32(0x700000, f.machine.read32(0x700000) | EPT_PAGE_SIZE),
      gpa: 0x1008,
      refs: 1,
    },
    {
      label: "bits 6..3 in a PDE that references a table",
      poke: (f) => f.machine.write32(0x702000, f.machine.read32(0x702000) | WB),
      gpa: 0x1008,
      refs: 3,
    },
    {
      label: "address bit 46 (MAXPHYADDR 46) in a PDPTE",
      poke: (f) => f.machine.write32(0x701004, 1 << 14),
      gpa: 0x1008,
      refs: 2,
    },
  ];
  for (const c of cases) {
    const f = new Fixture();
    f.mapGuest(VA, DATA_GPA);
    c.poke(f);
    assert.equal(f.walk(VA), -1, c.label);
    assert.equal(f.walker.exitVector, VECTOR_EPT_MISCONFIG, c.label);
    assert.equal(f.walker.exitGpa, c.gpa, c.label);
    assert.equal(f.walker.exitQualification, 0, c.label);
    assert.equal(f.walker.refs, c.refs, c.label);
    assert.equal(f.stats.get("walk.eptMisconfig"), 1, c.label);
  }
  const large = new Fixture({ eptPageSize: PAGE_SIZE_2M });
  large.mapGuest(VA, DATA_GPA);
  large.machine.write32(0x702000, large.machine.read32(0x702000) | 0x1000); // bit 12 of a 2 MiB leaf
  assert.equal(large.walk(VA), -1);
  assert.equal(large.walker.exitVector, VECTOR_EPT_MISCONFIG);
  assert.equal(large.walker.refs, 3);
});

Deno.test("walk() fails with the guest's #PF, as the 1-D walker does, and no exit", () => {
  const f = new Fixture();
  f.mapGuest(VA, DATA_GPA);
  // A not-present gl2e: three guest levels read, each through 4 EPT references.
  const l2e = f.hpa(f.guestEntry(VA, 2));
  const saved = f.machine.read32(l2e);
  f.machine.write32(l2e, 0);
  assert.equal(f.walk(VA), -1);
  assert.equal(f.walker.exitVector, 0);
  assert.equal(f.walker.errorCode, 0);
  assert.equal(f.walker.faultLevel, 2);
  assert.equal(f.walker.refs, 15);
  f.machine.write32(l2e, saved);
  // PS in a gl4e is reserved: P | RSVD.
  const l4e = f.hpa(0x1008);
  f.machine.write32(l4e, f.machine.read32(l4e) | PTE_PAGE_SIZE);
  assert.equal(f.walk(VA), -1);
  assert.equal(f.walker.errorCode, PFEC_PRESENT | PFEC_RSVD);
  assert.equal(f.walker.faultLevel, 4);
  assert.equal(f.walker.refs, 5);
  f.machine.write32(l4e, f.machine.read32(l4e) & ~PTE_PAGE_SIZE);
  // A user read of a supervisor page: P | U.
  f.mapGuest(VA, DATA_GPA, PAGE_SIZE, PTE_PRESENT | PTE_WRITABLE);
  const user = new PagingControl({ cr3: 0x1000, cpl: 3 });
  assert.equal(f.walk(VA, ACCESS_READ, user), -1);
  assert.equal(f.walker.errorCode, PFEC_PRESENT | PFEC_USER);
  assert.equal(f.stats.get("walk.fault"), 3);
  assert.equal(f.stats.get("walk.eptViolation"), 0);
});

Deno.test("walk() sets EPT A in every EPT entry used and D in the leaves of table frames and writes", () => {
  const f = new Fixture({ ad: true });
  f.mapGuest(VA, DATA_GPA);
  assert.equal(f.walk(VA), 0x280567);
  // PML4E, PDPTE, PDE once (4 writes with GFN 1's PTE), GFN 2, 3, 4 PTEs, the data's PTE.
  assert.equal(f.stats.get("walk.eptAdWrite"), 8);
  for (const gfn of [1, 2, 3, 4]) {
    const lo = f.machine.read32(f.eptEntry(gfn * PAGE_SIZE, 1));
    assert.equal(lo & (EPT_ACCESSED | EPT_DIRTY), EPT_ACCESSED | EPT_DIRTY, `table gfn ${gfn}`);
  }
  const data = f.eptEntry(DATA_GPA, 1);
  assert.equal(f.machine.read32(data) & (EPT_ACCESSED | EPT_DIRTY), EPT_ACCESSED); // a read
  assert.equal(f.walker.isDirty, false);
  assert.equal(f.walk(VA, ACCESS_WRITE), 0x280567);
  assert.equal(f.machine.read32(data) & EPT_DIRTY, EPT_DIRTY);
  assert.equal(f.stats.get("walk.eptAdWrite"), 9);
  assert.equal(f.walker.isDirty, true);
  assert.equal(f.machine.read32(f.hpa(f.guestEntry(VA, 1))) & PTE_DIRTY, PTE_DIRTY);
});

Deno.test("walk() with walk caches: 24, then 5 references; a TLB flush drops the PSC, not the NTLB", () => {
  const f = new Fixture({ walkCaches: true });
  const tlb = new Tlb(f.stats);
  f.walker.tlb = tlb;
  f.mapGuest(VA, DATA_GPA);
  f.mapGuest(VA + PAGE_SIZE, DATA_GPA + PAGE_SIZE);
  const otherPd = VA + PAGE_SIZE_2M; // l2 index 4: another guest l1 table (GPA 0x5000)
  f.mapGuest(otherPd, DATA_GPA + 2 * PAGE_SIZE);
  const steps: { va: number; gpa: number; refs: number; flush?: boolean }[] = [
    { va: VA, gpa: DATA_GPA + 0x567, refs: 24 }, // cold: every cache misses
    { va: VA + 8, gpa: DATA_GPA + 0x56f, refs: 5 }, // PDE cache + NTLB: the gl1e (1) + 4
    { va: VA + PAGE_SIZE, gpa: DATA_GPA + 0x1567, refs: 5 }, // another gl1e, same table
    { va: otherPd, gpa: DATA_GPA + 0x2567, refs: 10 }, // PDPTE cache: gl2e 1, new gl1e 5, 4
    { va: VA, gpa: DATA_GPA + 0x567, refs: 8, flush: true }, // INVLPG: four gNe at 1 each + 4
    { va: VA, gpa: DATA_GPA + 0x567, refs: 5 }, // warm again
  ];
  for (const [i, step] of steps.entries()) {
    if (step.flush === true) tlb.invlpg(VA, 0);
    assert.equal(f.walk(step.va), f.hpa(step.gpa), `step ${i}`);
    assert.equal(f.walker.refs, step.refs, `step ${i}`);
  }
  assert.equal(f.stats.get("walk.psc.miss"), 2); // steps 0 and 4
  assert.equal(f.stats.get("walk.psc.pde"), 3); // steps 1, 2, 5
  assert.equal(f.stats.get("walk.psc.pdpte"), 1); // step 3
  assert.equal(f.stats.get("walk.psc.pml4e"), 0);
  assert.equal(f.stats.get("walk.ntlb.miss"), 5); // GFN 1, 2, 3, 4 (step 0) and 5 (step 3)
  assert.equal(f.stats.get("walk.ntlb.hit"), 8); // 1 + 1 + 1 + 4 + 1
  assert.equal(f.stats.get("walk.refs"), 24 + 5 + 5 + 10 + 8 + 5);
});

Deno.test("walk() caches are tagged by PCID, dropped by INVEPT, and off when switched off", () => {
  const f = new Fixture({ walkCaches: true });
  f.mapGuest(VA, DATA_GPA);
  const cr4 = CR4_PAE | CR4_PGE | CR4_PCIDE;
  const efer = EFER_LME | EFER_LMA | EFER_NXE;
  const cr0 = CR0_PE | CR0_WP | CR0_PG;
  const pcid1 = new PagingControl({ cr0, cr4, efer, cr3: 0x1000 | 1 });
  const pcid2 = new PagingControl({ cr0, cr4, efer, cr3: 0x1000 | 2 });
  assert.equal(f.walk(VA, ACCESS_READ, pcid1), 0x280567);
  assert.equal(f.walker.refs, 24);
  assert.equal(f.walk(VA, ACCESS_READ, pcid2), 0x280567);
  assert.equal(f.walker.refs, 8); // PCID 2 has no PSC entries; the NTLB is not PCID-tagged
  assert.equal(f.walk(VA, ACCESS_READ, pcid1), 0x280567);
  assert.equal(f.walker.refs, 5);
  f.walker.invept();
  assert.equal(f.walk(VA, ACCESS_READ, pcid1), 0x280567);
  assert.equal(f.walker.refs, 24);
  f.walker.walkCaches = false;
  for (let i = 0; i < 3; i++) {
    assert.equal(f.walk(VA, ACCESS_READ, pcid1), 0x280567);
    assert.equal(f.walker.refs, 24);
  }
});

Deno.test("translateGpa() walks the EPT alone and reports exits without a linear address", () => {
  const f = new Fixture({ eptPageSize: PAGE_SIZE_2M });
  assert.equal(f.walker.translateGpa(0x12345, EPT_WRITE), 0x212345);
  assert.equal(f.walker.refs, 3);
  assert.equal(f.walker.translateGpa(RAM_BYTES, EPT_READ), -1); // past the mapped RAM
  assert.equal(f.walker.exitVector, VECTOR_EPT_VIOLATION);
  assert.equal(f.walker.exitGpa, RAM_BYTES);
  assert.equal(f.walker.exitQualification, 0x1);
  assert.equal(f.stats.get("walk.refs"), 0); // no walk: nested references only
  assert.equal(f.stats.get("walk.nestedRefs"), 3 + 3);
});

Deno.test("a Vcpu on the 2-D walker fills its TLB with host addresses and raises EPT exits as values", () => {
  const f = new Fixture();
  f.mapGuest(VA, DATA_GPA);
  f.machine.write32(0x280564, 0xfeed);
  const cpu = new Vcpu(f.machine, f.ctl, f.stats, { walker: f.walker });
  assert.equal(cpu.walker, f.walker);
  assert.ok(cpu.read(VA - 3, 4));
  assert.equal(cpu.data, 0xfeed);
  assert.ok(cpu.read(VA - 3, 4)); // a TLB hit: no second walk
  assert.equal(f.stats.get("walk.count"), 1);
  assert.equal(f.stats.get("tlb.hit"), 1);
  // An EPT violation: a distinct vector, the GPA, the qualification, CR2 untouched.
  f.mapGuest(VA + PAGE_SIZE, RAM_BYTES + PAGE_SIZE); // past the EPT's RAM
  cpu.exception.cr2 = 0x1234;
  assert.equal(cpu.write(VA + PAGE_SIZE, 4, 1), false);
  assert.equal(cpu.exception.vector, VECTOR_EPT_VIOLATION);
  assert.equal(cpu.exception.gpa, RAM_BYTES + PAGE_SIZE + 0x567);
  assert.equal(cpu.exception.qualification, 0x182);
  assert.equal(cpu.exception.guestLinear, VA + PAGE_SIZE);
  assert.equal(cpu.exception.cr2, 0x1234);
  assert.equal(f.stats.get("cpu.pf"), 0);
  // A guest #PF is still a #PF.
  assert.equal(cpu.read(VA + 2 * PAGE_SIZE, 4), false);
  assert.equal(cpu.exception.vector, VECTOR_PF);
  assert.equal(cpu.exception.cr2, VA + 2 * PAGE_SIZE);
  assert.equal(f.stats.get("cpu.pf"), 1);
});
