/**
 * The page walker against SDM Vol. 3A 4.5 (translation, reserved bits), 4.6 (rights
 * combined over levels, protection keys), 4.7 (error code) and 4.8 (Accessed and Dirty),
 * with exact error codes, memory contents and counters.
 */

import assert from "node:assert/strict";
import { MachineMemory } from "../../lib/memory/machine_memory.ts";
import {
  ACCESS_FETCH,
  ACCESS_IMPLICIT_READ,
  ACCESS_IMPLICIT_WRITE,
  ACCESS_READ,
  ACCESS_WRITE,
  type AccessKind,
  accessKindName,
} from "../../lib/x86/access.ts";
import { PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import { PageWalker, WalkTrace } from "../../lib/x86/page_walk.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PGE,
  CR4_PKE,
  CR4_SMAP,
  CR4_SMEP,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  PagingControl,
  type PagingControlInit,
  PFEC_FETCH,
  PFEC_PK,
  PFEC_PRESENT,
  PFEC_RSVD,
  PFEC_USER,
  PFEC_WRITE,
  RIGHTS_USER,
  RIGHTS_WRITABLE,
  RIGHTS_XD,
} from "../../lib/x86/paging_control.ts";
import {
  PTE_ACCESSED,
  PTE_AVAILABLE,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_PKEY_SHIFT,
  PTE_HI_XD,
  PTE_LARGE_PAT,
  PTE_PAGE_SIZE,
  PTE_PAT,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
} from "../../lib/x86/pte.ts";
import { Stats } from "../../lib/x86/stats.ts";
import { ALL_RIGHTS, linearOf, type Mapping, PageTables } from "./_page_tables.ts";

const ROOT = 0x1000;

/** A 4 KiB page in the lower half, every index different. */
const VA_4K = linearOf(0x0a3, 0x15c, 0x0e7, 0x1f1);
const PA_4K = 0x2_3456_7000;
/** A 2 MiB page in the upper half. */
const VA_2M = linearOf(0x1ff, 0x003, 0x100, 0);
const PA_2M = 0x3_5560_0000;
/** A 1 GiB page at the first upper-half PML4 slot. */
const VA_1G = linearOf(0x100, 0x1fe, 0, 0);
const PA_1G = 0x7_c000_0000;

const NXE_ON = EFER_LME | EFER_LMA | EFER_NXE;
const NXE_OFF = EFER_LME | EFER_LMA;

/** A fresh machine: 4 GiB of lazily backed memory, empty tables at ROOT, one walker. */
function setup(init: PagingControlInit = {}, frames = 1 << 20) {
  const stats = new Stats();
  const memory = new MachineMemory({ frames, stats });
  const tables = new PageTables(memory, ROOT);
  const ctl = new PagingControl({ cr3: ROOT, ...init });
  const walker = new PageWalker(memory, stats);
  return { stats, memory, tables, ctl, walker };
}

/** The walk.* counters, with the histogram as hist1..hist4. */
function walkCounters(stats: Stats) {
  return {
    count: stats.get("walk.count"),
    refs: stats.get("walk.refs"),
    fault: stats.get("walk.fault"),
    adWrite: stats.get("walk.adWrite"),
    hist1: stats.get("walk.refsHist.1"),
    hist2: stats.get("walk.refsHist.2"),
    hist3: stats.get("walk.refsHist.3"),
    hist4: stats.get("walk.refsHist.4"),
  };
}

/** The counters one walk should leave behind. */
function oneWalk(refs: number, fault: boolean, adWrite: number) {
  return {
    count: 1,
    refs,
    fault: fault ? 1 : 0,
    adWrite,
    hist1: refs === 1 ? 1 : 0,
    hist2: refs === 2 ? 1 : 0,
    hist3: refs === 3 ? 1 : 0,
    hist4: refs === 4 ? 1 : 0,
  };
}

/** Runs `walk` expecting a fault and checks that no table word and no counter of A/D moved. */
function expectFault(
  env: ReturnType<typeof setup>,
  va: number,
  kind: AccessKind,
  want: { errorCode: number; level: number; cause: string },
): WalkTrace {
  const before = env.tables.snapshot();
  const writes = env.stats.get("mem.write");
  const adWrites = env.stats.get("walk.adWrite");
  const trace = new WalkTrace();
  const label = `${accessKindName(kind)} at 0x${va.toString(16)}`;
  assert.equal(env.walker.walk(env.ctl, va, kind, trace), -1, label);
  assert.equal(
    env.walker.errorCode,
    want.errorCode,
    `${label}: error code 0x${env.walker.errorCode.toString(16)}, want 0x${
      want.errorCode.toString(16)
    }`,
  );
  assert.equal(env.walker.faultLevel, want.level, `${label}: fault level`);
  assert.equal(env.walker.refs, 5 - want.level, `${label}: refs`);
  assert.equal(trace.cause, want.cause, `${label}: cause`);
  assert.equal(trace.lastLevel, want.level, `${label}: last level`);
  assert.deepEqual(env.tables.snapshot(), before, `${label}: tables changed`);
  assert.equal(env.stats.get("mem.write"), writes, `${label}: memory written`);
  assert.equal(env.stats.get("walk.adWrite"), adWrites, `${label}: A/D written`);
  return trace;
}

// --- Translation (4.5) -------------------------------------------------------------------

Deno.test("walk() translates a 4 KiB page with 4 references", () => {
  const env = setup();
  const m = env.tables.map(VA_4K, PA_4K);
  assert.deepEqual(m.entryAddress, [
    -1,
    0x4000 + 0x1f1 * 8,
    0x3000 + 0x0e7 * 8,
    0x2000 + 0x15c * 8,
    ROOT + 0x0a3 * 8,
  ]);
  env.stats.reset();
  assert.equal(env.walker.walk(env.ctl, VA_4K + 0x123, ACCESS_READ, null), PA_4K + 0x123);
  assert.equal(env.walker.pageSize, PAGE_SIZE);
  assert.equal(env.walker.pageBase, PA_4K);
  assert.equal(env.walker.refs, 4);
  assert.equal(env.walker.rights, RIGHTS_WRITABLE | RIGHTS_USER);
  assert.deepEqual(walkCounters(env.stats), oneWalk(4, false, 4));
  assert.equal(env.stats.get("mem.read"), 8, "two words per entry");
});

Deno.test("walk() translates the first and last byte of a 4 KiB page", () => {
  const env = setup();
  env.tables.map(VA_4K, PA_4K);
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null), PA_4K);
  assert.equal(env.walker.walk(env.ctl, VA_4K + 0xfff, ACCESS_READ, null), PA_4K + 0xfff);
  // One byte further is the next l1e, which is not present.
  assert.equal(env.walker.walk(env.ctl, VA_4K + 0x1000, ACCESS_READ, null), -1);
  assert.equal(env.walker.faultLevel, 1);
  assert.equal(env.walker.errorCode, 0);
});

Deno.test("walk() translates a 2 MiB page with 3 references", () => {
  const env = setup();
  env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M });
  for (const offset of [0, 0x1000, 0xfff, 0x1f_f000, 0x1f_ffff]) {
    assert.equal(env.walker.walk(env.ctl, VA_2M + offset, ACCESS_READ, null), PA_2M + offset);
    assert.equal(env.walker.pageSize, PAGE_SIZE_2M);
    assert.equal(env.walker.pageBase, PA_2M);
    assert.equal(env.walker.refs, 3);
  }
  assert.equal(env.walker.walk(env.ctl, VA_2M + PAGE_SIZE_2M, ACCESS_READ, null), -1);
  assert.equal(env.walker.faultLevel, 2);
});

Deno.test("walk() translates a 1 GiB page with 2 references", () => {
  const env = setup();
  env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G });
  for (const offset of [0, 0xfff, 0x1f_ffff, 0x20_0000, 0x3fff_ffff]) {
    assert.equal(env.walker.walk(env.ctl, VA_1G + offset, ACCESS_READ, null), PA_1G + offset);
    assert.equal(env.walker.pageSize, PAGE_SIZE_1G);
    assert.equal(env.walker.pageBase, PA_1G);
    assert.equal(env.walker.refs, 2);
  }
  assert.equal(env.walker.walk(env.ctl, VA_1G + PAGE_SIZE_1G, ACCESS_READ, null), -1);
  assert.equal(env.walker.faultLevel, 3);
});

Deno.test("walk() reaches the top of a 52-bit physical space with each page size", () => {
  const env = setup({ maxPhyAddr: 52 });
  env.tables.map(VA_4K, 2 ** 52 - PAGE_SIZE);
  env.tables.map(VA_2M, 2 ** 52 - PAGE_SIZE_2M, { pageSize: PAGE_SIZE_2M });
  env.tables.map(VA_1G, 2 ** 52 - PAGE_SIZE_1G, { pageSize: PAGE_SIZE_1G });
  assert.equal(env.walker.walk(env.ctl, VA_4K + 0xfff, ACCESS_READ, null), 2 ** 52 - 1);
  assert.equal(env.walker.walk(env.ctl, VA_2M + 0x1f_ffff, ACCESS_READ, null), 2 ** 52 - 1);
  assert.equal(env.walker.walk(env.ctl, VA_1G + 0x3fff_ffff, ACCESS_READ, null), 2 ** 52 - 1);
});

Deno.test("walk() treats bit 7 of an l1e as PAT, not PS", () => {
  const env = setup();
  env.tables.map(VA_4K, PA_4K, { flags: ALL_RIGHTS | PTE_PAT });
  assert.equal(env.walker.walk(env.ctl, VA_4K + 8, ACCESS_READ, null), PA_4K + 8);
  assert.equal(env.walker.pageSize, PAGE_SIZE);
});

Deno.test("walk() treats bit 12 of a large-page entry as PAT, not an address bit", () => {
  const env = setup();
  const m2 = env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M });
  const m1 = env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G });
  env.tables.setBits(m2.entryAddress[2]!, PTE_LARGE_PAT);
  env.tables.setBits(m1.entryAddress[3]!, PTE_LARGE_PAT);
  assert.equal(env.walker.walk(env.ctl, VA_2M + 0x10, ACCESS_READ, null), PA_2M + 0x10);
  assert.equal(env.walker.pageBase, PA_2M);
  assert.equal(env.walker.walk(env.ctl, VA_1G + 0x10, ACCESS_READ, null), PA_1G + 0x10);
  assert.equal(env.walker.pageBase, PA_1G);
});

Deno.test("walk() ignores bits 58..52, the AVL bits, and G and D in non-leaf entries", () => {
  const env = setup({ maxPhyAddr: 36 });
  const m = env.tables.map(VA_4K, PA_4K);
  for (let level = 1; level <= 4; level++) {
    env.tables.setBits(m.entryAddress[level]!, PTE_AVAILABLE, 0x07f0_0000);
  }
  for (let level = 2; level <= 4; level++) {
    env.tables.setBits(m.entryAddress[level]!, PTE_GLOBAL | PTE_DIRTY);
  }
  assert.equal(env.walker.walk(env.ctl, VA_4K + 1, ACCESS_WRITE, null), PA_4K + 1);
  assert.equal(env.walker.isGlobal, false, "G in a non-leaf entry does not make the page global");
});

Deno.test("walk() with CR0.PG=0 returns the address unchanged and reads no memory", () => {
  const env = setup({ cr0: CR0_PE, cr3: 0xdead_b000 });
  env.tables.map(VA_4K, PA_4K);
  env.stats.reset();
  for (const kind of [ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH]) {
    assert.equal(env.walker.walk(env.ctl, VA_4K + 0x123, kind, null), VA_4K + 0x123);
    assert.equal(env.walker.refs, 0);
  }
  assert.equal(env.walker.walk(env.ctl, 0xffff_ffff, ACCESS_READ, null), 0xffff_ffff);
  assert.deepEqual(env.stats.nonZero(), {});
});

// --- Not present (4.7: P=0) --------------------------------------------------------------

for (let level = 4; level >= 1; level--) {
  Deno.test(`walk() faults with P=0 when the l${level}e is not present`, () => {
    const env = setup({ cpl: 3 });
    const m = env.tables.map(VA_4K, PA_4K);
    env.tables.clearBits(m.entryAddress[level]!, PTE_PRESENT);
    env.stats.reset();
    // CR2 is the caller's business: the walk returns -1 and reports the code only.
    expectFault(env, VA_4K, ACCESS_WRITE, {
      errorCode: PFEC_WRITE | PFEC_USER,
      level,
      cause: "not-present",
    });
    assert.deepEqual(walkCounters(env.stats), oneWalk(5 - level, true, 0));
    assert.equal(env.stats.get("mem.read"), 2 * (5 - level));
  });
}

Deno.test("walk() reports the access bits of a not-present fault exactly", () => {
  const cases: [PagingControlInit, AccessKind, number][] = [
    [{ cpl: 0 }, ACCESS_READ, 0],
    [{ cpl: 0 }, ACCESS_WRITE, PFEC_WRITE],
    [{ cpl: 3 }, ACCESS_READ, PFEC_USER],
    [{ cpl: 3, efer: NXE_ON }, ACCESS_FETCH, PFEC_USER | PFEC_FETCH],
    [{ cpl: 3, efer: NXE_OFF }, ACCESS_FETCH, PFEC_USER],
    [{ cpl: 0, efer: NXE_OFF, cr4: CR4_PAE | CR4_SMEP }, ACCESS_FETCH, PFEC_FETCH],
    [{ cpl: 3 }, ACCESS_IMPLICIT_READ, 0],
    [{ cpl: 3 }, ACCESS_IMPLICIT_WRITE, PFEC_WRITE],
  ];
  for (const [init, kind, errorCode] of cases) {
    const env = setup(init);
    expectFault(env, VA_4K, kind, { errorCode, level: 4, cause: "not-present" });
  }
});

Deno.test("walk() reports a not-present entry with reserved bits set as not-present", () => {
  for (const level of [4, 3, 2, 1]) {
    const env = setup({ efer: NXE_OFF, maxPhyAddr: 36 });
    const m = env.tables.map(VA_4K, PA_4K);
    // P=0 with PS, all of bits 29:13 and every high bit set: none of it is looked at.
    env.tables.write(
      m.entryAddress[level]!,
      PTE_PAGE_SIZE | 0x3fff_e000 | PTE_WRITABLE,
      0xffffffff,
    );
    expectFault(env, VA_4K, ACCESS_READ, { errorCode: 0, level, cause: "not-present" });
  }
});

// --- Reserved bits (4.5.4; 4.7: P=1, RSVD=1) ---------------------------------------------

for (const maxPhyAddr of [36, 46]) {
  for (let level = 4; level >= 1; level--) {
    Deno.test(
      `walk() sets RSVD for bits 51..${maxPhyAddr} of an l${level}e at MAXPHYADDR ${maxPhyAddr}`,
      () => {
        for (const bit of [maxPhyAddr, maxPhyAddr + 1, 51]) {
          const env = setup({ cpl: 3, maxPhyAddr });
          const m = env.tables.map(VA_4K, PA_4K);
          env.tables.setBits(m.entryAddress[level]!, 0, 2 ** (bit - 32));
          const trace = expectFault(env, VA_4K, ACCESS_WRITE, {
            errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_WRITE | PFEC_USER,
            level,
            cause: "reserved-bit",
          });
          assert.notEqual(trace.entryHigh[level]! & 2 ** (bit - 32), 0, `bit ${bit}`);
          assert.deepEqual(walkCounters(env.stats), oneWalk(5 - level, true, 0), `bit ${bit}`);
        }
      },
    );
  }
}

Deno.test("walk() follows bit MAXPHYADDR-1 of a leaf as an address bit", () => {
  for (const maxPhyAddr of [36, 46, 52]) {
    const env = setup({ maxPhyAddr });
    const m = env.tables.map(VA_4K, PA_4K);
    const bit = maxPhyAddr - 1;
    env.tables.setBits(m.entryAddress[1]!, 0, 2 ** (bit - 32));
    assert.equal(
      env.walker.walk(env.ctl, VA_4K + 0x10, ACCESS_READ, null),
      PA_4K + 2 ** bit + 0x10,
      `MAXPHYADDR ${maxPhyAddr}`,
    );
  }
});

Deno.test("walk() follows bit 51 of an l4e at MAXPHYADDR 52 into unbacked memory", () => {
  // The l3 "table" is past installed memory: its all-ones entry is a 1 GiB leaf with
  // bits 29:13 set, a reserved-bit fault at level 3.
  const env = setup({ maxPhyAddr: 52 });
  const m = env.tables.map(VA_4K, PA_4K);
  env.tables.setBits(m.entryAddress[4]!, 0, 2 ** (51 - 32));
  const trace = expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_RSVD,
    level: 3,
    cause: "reserved-bit",
  });
  assert.equal(trace.entryAddress[3], 2 ** 51 + 0x2000 + 0x15c * 8);
  assert.equal(trace.entryLow[3], 0xffffffff);
});

for (let level = 4; level >= 1; level--) {
  Deno.test(`walk() sets RSVD for XD in an l${level}e when EFER.NXE=0`, () => {
    for (const smep of [false, true]) {
      const env = setup({ efer: NXE_OFF, cr4: CR4_PAE | (smep ? CR4_SMEP : 0) });
      env.tables.map(VA_4K, PA_4K, { xdLevels: [level] });
      // I/D is reported only when SMEP=1 (NXE is 0 here).
      expectFault(env, VA_4K, ACCESS_FETCH, {
        errorCode: PFEC_PRESENT | PFEC_RSVD | (smep ? PFEC_FETCH : 0),
        level,
        cause: "reserved-bit",
      });
    }
  });
}

Deno.test("walk() accepts XD in every entry when EFER.NXE=1", () => {
  const env = setup({ efer: NXE_ON });
  env.tables.map(VA_4K, PA_4K, { xdLevels: [1, 2, 3, 4] });
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null), PA_4K);
  assert.equal(env.walker.rights, RIGHTS_WRITABLE | RIGHTS_USER | RIGHTS_XD);
});

Deno.test("walk() sets RSVD when PS is set in an l4e", () => {
  const env = setup({ cpl: 3, maxPhyAddr: 52 });
  const m = env.tables.map(VA_4K, PA_4K);
  env.tables.setBits(m.entryAddress[4]!, PTE_PAGE_SIZE);
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_USER,
    level: 4,
    cause: "reserved-bit",
  });
  assert.deepEqual(walkCounters(env.stats), oneWalk(1, true, 0));
});

Deno.test("walk() sets RSVD when PS is set in an l3e without 1 GiB page support", () => {
  const env = setup({ has1GbPages: false });
  env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G });
  expectFault(env, VA_1G, ACCESS_WRITE, {
    errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_WRITE,
    level: 3,
    cause: "reserved-bit",
  });
  assert.deepEqual(walkCounters(env.stats), oneWalk(2, true, 0));
});

Deno.test("walk() sets RSVD for each of bits 20:13 of a 2 MiB leaf", () => {
  for (let bit = 13; bit <= 20; bit++) {
    const env = setup({ cpl: 3, efer: NXE_ON });
    const m = env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M });
    env.tables.setBits(m.entryAddress[2]!, 1 << bit);
    expectFault(env, VA_2M, ACCESS_FETCH, {
      errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_USER | PFEC_FETCH,
      level: 2,
      cause: "reserved-bit",
    });
  }
});

Deno.test("walk() sets RSVD for each of bits 29:13 of a 1 GiB leaf", () => {
  for (let bit = 13; bit <= 29; bit++) {
    const env = setup({ cpl: 3 });
    const m = env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G });
    env.tables.setBits(m.entryAddress[3]!, 1 << bit);
    expectFault(env, VA_1G, ACCESS_IMPLICIT_WRITE, {
      errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_WRITE,
      level: 3,
      cause: "reserved-bit",
    });
  }
});

Deno.test("walk() reports RSVD rather than a protection fault when both apply", () => {
  const env = setup({ cpl: 3, maxPhyAddr: 46 });
  // The l4e denies user access, and the l1e has a reserved bit: the walk stops at l1.
  const m = env.tables.map(VA_4K, PA_4K, { levelFlags: { 4: PTE_PRESENT } });
  env.tables.setBits(m.entryAddress[1]!, 0, 2 ** (46 - 32));
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_USER,
    level: 1,
    cause: "reserved-bit",
  });
});

Deno.test("walk() faults with RSVD at level 4 when CR3 points outside installed memory", () => {
  for (const maxPhyAddr of [46, 52]) {
    for (const efer of [NXE_ON, NXE_OFF]) {
      // 16 frames installed; CR3 names frame 256, which reads as all ones. At MAXPHYADDR
      // 46 bits 51:46 are reserved; at 52 the all-ones l4e still has PS set.
      const env = setup({ cr3: 0x10_0000, maxPhyAddr, efer }, 16);
      const trace = expectFault(env, VA_4K, ACCESS_READ, {
        errorCode: PFEC_PRESENT | PFEC_RSVD,
        level: 4,
        cause: "reserved-bit",
      });
      assert.equal(trace.entryAddress[4], 0x10_0000 + 0x0a3 * 8);
      assert.equal(trace.entryLow[4], 0xffffffff);
      assert.equal(trace.entryHigh[4], 0xffffffff);
      assert.equal(env.stats.get("mem.unbacked"), 2);
      assert.equal(env.stats.get("mem.write"), 0);
      assert.deepEqual(walkCounters(env.stats), oneWalk(1, true, 0));
    }
  }
});

// --- Rights combined over levels (4.6) ---------------------------------------------------

Deno.test("walk() ANDs R/W over levels: an l3e with R/W=0 makes a user write fault", () => {
  const env = setup({ cpl: 3 });
  env.tables.map(VA_4K, PA_4K, { levelFlags: { 3: PTE_PRESENT | PTE_USER } });
  const trace = expectFault(env, VA_4K, ACCESS_WRITE, {
    errorCode: PFEC_PRESENT | PFEC_WRITE | PFEC_USER,
    level: 1,
    cause: "protection",
  });
  assert.deepEqual(trace.rightsAfter.slice(1), [
    RIGHTS_USER,
    RIGHTS_USER,
    RIGHTS_USER,
    RIGHTS_USER | RIGHTS_WRITABLE,
  ]);
  assert.deepEqual(walkCounters(env.stats), oneWalk(4, true, 0));
  // A read through the same tables is allowed and reports the combined rights.
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null), PA_4K);
  assert.equal(env.walker.rights, RIGHTS_USER);
});

Deno.test("walk() ANDs U/S over levels: an l4e with U/S=0 makes a user read fault", () => {
  const env = setup({ cpl: 3 });
  env.tables.map(VA_4K, PA_4K, { levelFlags: { 4: PTE_PRESENT | PTE_WRITABLE } });
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_USER,
    level: 1,
    cause: "protection",
  });
});

Deno.test("walk() ORs XD over levels: XD in an l2e makes a user fetch fault", () => {
  const env = setup({ cpl: 3, efer: NXE_ON });
  env.tables.map(VA_4K, PA_4K, { xdLevels: [2] });
  const trace = expectFault(env, VA_4K, ACCESS_FETCH, {
    errorCode: PFEC_PRESENT | PFEC_USER | PFEC_FETCH,
    level: 1,
    cause: "protection",
  });
  assert.deepEqual(trace.rightsAfter.slice(1), [7, 7, 3, 3]);
});

Deno.test("walk() reports a protection fault on a large page at the leaf's level", () => {
  const env = setup({ cpl: 3 });
  env.tables.map(VA_2M, PA_2M, {
    pageSize: PAGE_SIZE_2M,
    levelFlags: { 4: PTE_PRESENT | PTE_USER },
  });
  env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G, levelFlags: { 4: PTE_PRESENT } });
  const code = PFEC_PRESENT | PFEC_WRITE | PFEC_USER;
  expectFault(env, VA_2M, ACCESS_WRITE, { errorCode: code, level: 2, cause: "protection" });
  expectFault(env, VA_1G, ACCESS_WRITE, { errorCode: code, level: 3, cause: "protection" });
});

Deno.test("walk() lets a supervisor write a read-only page only when CR0.WP=0", () => {
  const ro = { flags: PTE_PRESENT, tableFlags: PTE_PRESENT };
  const off = setup({ cr0: CR0_PE | CR0_PG });
  off.tables.map(VA_4K, PA_4K, ro);
  assert.equal(off.walker.walk(off.ctl, VA_4K, ACCESS_WRITE, null), PA_4K);
  const on = setup({ cr0: CR0_PE | CR0_PG | CR0_WP });
  on.tables.map(VA_4K, PA_4K, ro);
  expectFault(on, VA_4K, ACCESS_WRITE, {
    errorCode: PFEC_PRESENT | PFEC_WRITE,
    level: 1,
    cause: "protection",
  });
});

Deno.test("walk() combines rights of every level exactly as protectionFault() sees them", () => {
  // Every (R/W, U/S, XD) choice at each of the four levels, each access kind, CPL 0 and 3.
  for (const cpl of [0, 3]) {
    const env = setup({
      cpl,
      cr0: CR0_PE | CR0_PG | CR0_WP,
      cr4: CR4_PAE | CR4_SMEP | CR4_SMAP,
      efer: NXE_ON,
    });
    const m = env.tables.map(VA_4K, PA_4K);
    const original = [0, 1, 2, 3, 4].map((l) =>
      l === 0 ? [0, 0] : env.tables.read(m.entryAddress[l]!)
    );
    const failures: string[] = [];
    const lo = [0, 0, 0, 0, 0];
    for (let choice = 0; choice < 8 ** 4; choice++) {
      let rw = 1;
      let us = 1;
      let xd = 0;
      for (let level = 1; level <= 4; level++) {
        const c = (choice >> (3 * (level - 1))) & 7;
        rw &= c & 1;
        us &= (c >> 1) & 1;
        xd |= (c >> 2) & 1;
        const [lo0, hi0] = original[level]!;
        lo[level] = ((lo0! & ~(PTE_WRITABLE | PTE_USER)) | (c & 1 ? PTE_WRITABLE : 0) |
          (c & 2 ? PTE_USER : 0)) >>> 0;
        env.tables.write(m.entryAddress[level]!, lo[level]!, hi0! | (c & 4 ? PTE_HI_XD : 0));
      }
      const rights = (rw ? RIGHTS_WRITABLE : 0) | (us ? RIGHTS_USER : 0) | (xd ? RIGHTS_XD : 0);
      for (const kind of [0, 1, 2, 3, 4] as AccessKind[]) {
        const want = env.ctl.protectionFault(kind, 0, rights);
        const pa = env.walker.walk(env.ctl, VA_4K, kind, null);
        const got = pa === -1 ? env.walker.errorCode : 0;
        let ok = got === want && (pa === -1) === (want !== 0);
        for (let level = 1; level <= 4; level++) {
          const word = env.memory.read32(m.entryAddress[level]!);
          // A fault leaves every entry as it was; a success sets A everywhere.
          if (want !== 0) ok &&= word === lo[level];
          else {ok &&= word === ((lo[level]! | PTE_ACCESSED) >>> 0) ||
              (level === 1 && word === ((lo[level]! | PTE_ACCESSED | PTE_DIRTY) >>> 0));}
          env.memory.write32(m.entryAddress[level]!, lo[level]!); // undo A/D for the next kind
        }
        if (!ok && failures.length < 10) {
          failures.push(
            `cpl=${cpl} ${accessKindName(kind)} levels=${choice.toString(8).padStart(4, "0")}: ` +
              `got 0x${got.toString(16)}, want 0x${want.toString(16)}`,
          );
        }
      }
    }
    assert.deepEqual(failures, [], failures.join("\n"));
  }
});

// --- Accessed and Dirty (4.8) ------------------------------------------------------------

/** The low words of a mapping's entries by level (index 1..4; 0 where unused). */
function lowWords(env: ReturnType<typeof setup>, m: Mapping): number[] {
  return m.entryAddress.map((entry) => entry < 0 ? 0 : env.memory.read32(entry));
}

Deno.test("walk() sets A on every level of a read and D on none", () => {
  const env = setup();
  const m = env.tables.map(VA_4K, PA_4K);
  const before = lowWords(env, m);
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null), PA_4K);
  assert.deepEqual(lowWords(env, m), before.map((w, l) => l === 0 ? 0 : (w | PTE_ACCESSED) >>> 0));
  assert.equal(env.walker.isDirty, false);
  assert.deepEqual(walkCounters(env.stats), oneWalk(4, false, 4));
});

for (const kind of [ACCESS_WRITE, ACCESS_IMPLICIT_WRITE]) {
  for (
    const [pageSize, va, pa, leaf] of [
      [PAGE_SIZE, VA_4K, PA_4K, 1],
      [PAGE_SIZE_2M, VA_2M, PA_2M, 2],
      [PAGE_SIZE_1G, VA_1G, PA_1G, 3],
    ] as const
  ) {
    Deno.test(
      `walk() sets D on the l${leaf}e leaf only, and A on every level, for a ${
        accessKindName(kind)
      }`,
      () => {
        const env = setup();
        const m = env.tables.map(va, pa, { pageSize });
        const before = lowWords(env, m);
        const highBefore = m.entryAddress.map((e) => e < 0 ? 0 : env.memory.read32(e + 4));
        assert.equal(env.walker.walk(env.ctl, va + 0x44, kind, null), pa + 0x44);
        const want = before.map((w, l) =>
          l < leaf ? 0 : (w | PTE_ACCESSED | (l === leaf ? PTE_DIRTY : 0)) >>> 0
        );
        assert.deepEqual(lowWords(env, m), want);
        assert.deepEqual(
          m.entryAddress.map((e) => e < 0 ? 0 : env.memory.read32(e + 4)),
          highBefore,
        );
        assert.equal(env.walker.isDirty, true);
        // One write per entry: A and D of the leaf go in the same write.
        assert.deepEqual(walkCounters(env.stats), oneWalk(5 - leaf, false, 5 - leaf));
      },
    );
  }
}

Deno.test("walk() never sets D for a fetch or an implicit read", () => {
  for (const kind of [ACCESS_FETCH, ACCESS_IMPLICIT_READ]) {
    const env = setup();
    const m = env.tables.map(VA_4K, PA_4K);
    env.walker.walk(env.ctl, VA_4K, kind, null);
    for (let level = 1; level <= 4; level++) {
      const word = env.memory.read32(m.entryAddress[level]!);
      assert.equal(word & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED, `l${level}e`);
    }
  }
});

Deno.test("walk() never sets D on a non-leaf entry, even after many writes", () => {
  const env = setup();
  const m = env.tables.map(VA_4K, PA_4K);
  for (let i = 0; i < 3; i++) env.walker.walk(env.ctl, VA_4K + i, ACCESS_WRITE, null);
  for (let level = 2; level <= 4; level++) {
    assert.equal(env.memory.read32(m.entryAddress[level]!) & PTE_DIRTY, 0, `l${level}e`);
  }
});

Deno.test("walk() writes nothing when A and D are already set", () => {
  const env = setup();
  env.tables.map(VA_4K, PA_4K, {
    flags: ALL_RIGHTS | PTE_ACCESSED | PTE_DIRTY,
    tableFlags: ALL_RIGHTS | PTE_ACCESSED,
  });
  const before = env.tables.snapshot();
  env.stats.reset();
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, null), PA_4K);
  assert.deepEqual(env.tables.snapshot(), before);
  assert.deepEqual(walkCounters(env.stats), oneWalk(4, false, 0));
  assert.equal(env.stats.get("mem.write"), 0);
  assert.equal(env.walker.isDirty, true);
});

Deno.test("walk() writes only the leaf when a write follows a read", () => {
  const env = setup();
  const m = env.tables.map(VA_4K, PA_4K);
  env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null);
  assert.equal(env.stats.get("walk.adWrite"), 4);
  env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null);
  assert.equal(env.stats.get("walk.adWrite"), 4, "a second read writes nothing");
  env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, null);
  assert.equal(env.stats.get("walk.adWrite"), 5, "the write sets D in the l1e only");
  assert.equal(env.memory.read32(m.entryAddress[1]!) & PTE_DIRTY, PTE_DIRTY);
  env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, null);
  assert.equal(env.stats.get("walk.adWrite"), 5, "a second write writes nothing");
});

Deno.test("walk() writes nothing when A and D are set in entries with address bit 31", () => {
  // Tables and page at or above 2 GiB: the low word of each entry has bit 31 set, so it
  // is not a small integer. Setting A/D that are already set must still be no write.
  const env = setup();
  const tables = new PageTables(env.memory, 0x8000_0000);
  const m = tables.map(VA_4K, 0x1_8000_0000, {
    flags: ALL_RIGHTS | PTE_ACCESSED | PTE_DIRTY,
    tableFlags: ALL_RIGHTS | PTE_ACCESSED,
  });
  const ctl = new PagingControl({ cr3: 0x8000_0000 });
  const before = tables.snapshot();
  env.stats.reset();
  assert.equal(env.walker.walk(ctl, VA_4K + 4, ACCESS_WRITE, null), 0x1_8000_0004);
  assert.deepEqual(tables.snapshot(), before);
  assert.equal(env.stats.get("walk.adWrite"), 0);
  assert.equal(env.stats.get("mem.write"), 0);
  // And setting only D on such a leaf is one write that leaves the word unsigned.
  tables.clearBits(m.entryAddress[1]!, PTE_DIRTY);
  env.walker.walk(ctl, VA_4K, ACCESS_WRITE, null);
  assert.equal(env.memory.read32(m.entryAddress[1]!), (0x8000_0000 | ALL_RIGHTS | 0x60) >>> 0);
});

Deno.test("walk() leaves memory and A/D counters alone when it faults", () => {
  const env = setup({ cpl: 3 });
  const m = env.tables.map(VA_4K, PA_4K, { flags: PTE_PRESENT | PTE_USER });
  // Protection (read-only leaf, user write).
  expectFault(env, VA_4K, ACCESS_WRITE, {
    errorCode: PFEC_PRESENT | PFEC_WRITE | PFEC_USER,
    level: 1,
    cause: "protection",
  });
  // Reserved bit in the l2e.
  env.tables.setBits(m.entryAddress[2]!, 0, 2 ** (50 - 32));
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_RSVD | PFEC_USER,
    level: 2,
    cause: "reserved-bit",
  });
  // Not present l3e.
  env.tables.clearBits(m.entryAddress[3]!, PTE_PRESENT);
  expectFault(env, VA_4K, ACCESS_READ, { errorCode: PFEC_USER, level: 3, cause: "not-present" });
  assert.deepEqual(walkCounters(env.stats), {
    count: 3,
    refs: 4 + 3 + 2,
    fault: 3,
    adWrite: 0,
    hist1: 0,
    hist2: 1,
    hist3: 1,
    hist4: 1,
  });
});

// --- Counters ----------------------------------------------------------------------------

Deno.test("walk() moves walk.count, walk.refs, walk.fault and walk.refsHist exactly", () => {
  const env = setup();
  env.tables.map(VA_4K, PA_4K);
  env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M });
  env.tables.map(VA_1G, PA_1G, { pageSize: PAGE_SIZE_1G });
  env.stats.reset();
  env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null); // 4 refs, 4 A writes
  env.walker.walk(env.ctl, VA_2M, ACCESS_WRITE, null); // 3 refs, 3 writes (D with A in l2e)
  env.walker.walk(env.ctl, VA_1G, ACCESS_READ, null); // 2 refs, 2 A writes
  env.walker.walk(env.ctl, 0x0000_1000, ACCESS_READ, null); // l4e[0] not present: 1 ref
  env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, null); // 4 refs, D only: 1 write
  assert.deepEqual(walkCounters(env.stats), {
    count: 5,
    refs: 4 + 3 + 2 + 1 + 4,
    fault: 1,
    adWrite: 4 + 3 + 2 + 0 + 1,
    hist1: 1,
    hist2: 1,
    hist3: 1,
    hist4: 2,
  });
  // The histogram adds up to the walks, and its weighted sum to the references.
  const c = walkCounters(env.stats);
  assert.equal(c.hist1 + c.hist2 + c.hist3 + c.hist4, c.count);
  assert.equal(c.hist1 + 2 * c.hist2 + 3 * c.hist3 + 4 * c.hist4, c.refs);
  assert.equal(env.stats.get("mem.read"), 2 * c.refs);
  assert.equal(env.stats.get("mem.write"), c.adWrite);
});

// --- WalkTrace ---------------------------------------------------------------------------

Deno.test("walk() records each level's entry, value before and after, and rights in a trace", () => {
  const env = setup({ cpl: 3, efer: NXE_ON });
  const m = env.tables.map(VA_4K, PA_4K, {
    levelFlags: { 3: PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED },
    xdLevels: [3],
  });
  const lows = lowWords(env, m);
  const highs = m.entryAddress.map((e) => e < 0 ? 0 : env.memory.read32(e + 4));
  const trace = new WalkTrace();
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, trace), PA_4K);
  assert.equal(trace.cause, "none");
  assert.equal(trace.lastLevel, 1);
  assert.deepEqual(trace.entryAddress, [0, ...m.entryAddress.slice(1)]);
  assert.deepEqual(trace.entryLow, lows);
  assert.deepEqual(trace.entryHigh, highs);
  assert.deepEqual(trace.entryLowAfter, [
    0,
    (lows[1]! | PTE_ACCESSED | PTE_DIRTY) >>> 0,
    (lows[2]! | PTE_ACCESSED) >>> 0,
    lows[3], // A was already set: no write
    (lows[4]! | PTE_ACCESSED) >>> 0,
  ]);
  assert.deepEqual(trace.entryLowAfter, lowWords(env, m));
  assert.deepEqual(trace.rightsAfter, [0, 7, 7, 7, 3]);
  assert.notEqual(highs[3]! & PTE_HI_XD, 0);
});

Deno.test("walk() records a 2 MiB walk in a trace down to level 2", () => {
  const env = setup();
  const m = env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M });
  const trace = new WalkTrace();
  env.walker.walk(env.ctl, VA_2M, ACCESS_READ, trace);
  assert.equal(trace.lastLevel, 2);
  assert.deepEqual(trace.entryAddress.slice(2), m.entryAddress.slice(2));
  assert.equal(trace.entryLow[2]! & PTE_PAGE_SIZE, PTE_PAGE_SIZE);
});

Deno.test("walk() resets a reused trace's cause to none on success", () => {
  const env = setup({ cpl: 3 });
  const m = env.tables.map(VA_4K, PA_4K, { flags: PTE_PRESENT | PTE_USER });
  const trace = new WalkTrace();
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, trace), -1);
  assert.equal(trace.cause, "protection");
  env.tables.setBits(m.entryAddress[1]!, PTE_WRITABLE);
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_WRITE, trace), PA_4K);
  assert.equal(trace.cause, "none");
});

// --- Protection keys (4.6.2) -------------------------------------------------------------

Deno.test("walk() takes the protection key from bits 62..59 of the leaf", () => {
  const pkru = 1 << (2 * 5); // AD for key 5
  const env = setup({ cpl: 3, cr4: CR4_PAE | CR4_PKE, pkru });
  env.tables.map(VA_4K, PA_4K, { pkey: 5 });
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_USER | PFEC_PK,
    level: 1,
    cause: "protection",
  });
  // A supervisor read of the same user page (SMAP off) is blocked by the key too.
  env.ctl.cpl = 0;
  expectFault(env, VA_4K, ACCESS_READ, {
    errorCode: PFEC_PRESENT | PFEC_PK,
    level: 1,
    cause: "protection",
  });
  // Fetches are exempt.
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_FETCH, null), PA_4K);
  assert.equal(env.walker.pkey, 5);
});

Deno.test("walk() applies a large page's protection key", () => {
  const env = setup({ cpl: 3, cr4: CR4_PAE | CR4_PKE, pkru: 2 << (2 * 9) }); // WD for key 9
  env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M, pkey: 9 });
  assert.equal(env.walker.walk(env.ctl, VA_2M, ACCESS_READ, null), PA_2M);
  assert.equal(env.walker.pkey, 9);
  expectFault(env, VA_2M, ACCESS_WRITE, {
    errorCode: PFEC_PRESENT | PFEC_WRITE | PFEC_USER | PFEC_PK,
    level: 2,
    cause: "protection",
  });
});

Deno.test("walk() ignores key bits in non-leaf entries", () => {
  const env = setup({ cpl: 3, cr4: CR4_PAE | CR4_PKE, pkru: 1 << (2 * 5) });
  const m = env.tables.map(VA_4K, PA_4K, { pkey: 0 });
  for (let level = 2; level <= 4; level++) {
    env.tables.setBits(m.entryAddress[level]!, 0, 5 << PTE_HI_PKEY_SHIFT);
  }
  assert.equal(env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null), PA_4K);
  assert.equal(env.walker.pkey, 0);
});

// --- Global (4.10.2.4 via 4.5) -----------------------------------------------------------

Deno.test("walk() reports isGlobal only when the leaf has G=1 and CR4.PGE=1", () => {
  const cases: [number, boolean, boolean][] = [
    [PTE_GLOBAL, true, true],
    [PTE_GLOBAL, false, false],
    [0, true, false],
    [0, false, false],
  ];
  for (const [g, pge, want] of cases) {
    const env = setup({ cr4: CR4_PAE | (pge ? CR4_PGE : 0) });
    env.tables.map(VA_4K, PA_4K, { flags: ALL_RIGHTS | g });
    env.tables.map(VA_2M, PA_2M, { pageSize: PAGE_SIZE_2M, flags: ALL_RIGHTS | g });
    env.walker.walk(env.ctl, VA_4K, ACCESS_READ, null);
    assert.equal(env.walker.isGlobal, want, `4 KiB G=${g ? 1 : 0} PGE=${pge ? 1 : 0}`);
    env.walker.walk(env.ctl, VA_2M, ACCESS_READ, null);
    assert.equal(env.walker.isGlobal, want, `2 MiB G=${g ? 1 : 0} PGE=${pge ? 1 : 0}`);
  }
});

Deno.test("walk() faults a supervisor read of a user page under SMAP without setting A", () => {
  // A supervisor read of a user page with SMAP=1 and AC=0 is a protection fault at the
  // leaf: P=1, no U/S, and no A flag written anywhere.
  const env = setup({ cpl: 0, cr4: CR4_PAE | CR4_SMAP });
  env.tables.map(VA_4K, PA_4K);
  expectFault(env, VA_4K, ACCESS_READ, { errorCode: PFEC_PRESENT, level: 1, cause: "protection" });
});
