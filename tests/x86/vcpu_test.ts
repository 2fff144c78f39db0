/**
 * The vCPU's access path (TLB -> walk -> fault) and its privileged instructions, against
 * Intel SDM Vol. 3A 4.10 (TLB use and invalidation), 4.7 (#PF error code), 3.3.7.1
 * (canonical addresses) and Vol. 2 (MOV CRn, INVLPG, INVPCID #GP conditions).
 *
 * Every test builds its own address space (tests/x86/_vcpu_fixture.ts); data frames sit
 * at or above 0x200000, tables below 0x100000.
 */

import assert from "node:assert/strict";
import { PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "../../lib/x86/address.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_SMEP,
  EFER_LME,
  EFER_NXE,
  PFEC_FETCH,
  PFEC_PRESENT,
  PFEC_RSVD,
  PFEC_USER,
  PFEC_WRITE,
} from "../../lib/x86/paging_control.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
} from "../../lib/x86/pte.ts";
import type { Stats } from "../../lib/x86/stats.ts";
import { VECTOR_GP, VECTOR_PF } from "../../lib/x86/vcpu.ts";
import type { Mfn } from "../../lib/memory/types.ts";
import { buildVcpuFixture, type VcpuFixture } from "./_vcpu_fixture.ts";

const P = PTE_PRESENT;
const RW = PTE_PRESENT | PTE_WRITABLE;
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const V = 0x1000_0000; // a 4 KiB page
const FRAME_A = 0x20_0000;
const FRAME_B = 0x30_0000;
const FRAME_C = 0x40_0000;

const PCIDE_CR4 = CR4_PAE | CR4_PGE | CR4_PCIDE;

/** Named counters of interest, in one object for deepEqual. */
function counters(stats: Stats, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, stats.get(n)]));
}

/** The vCPU's exception as a plain object. */
function exceptionOf(f: VcpuFixture): { vector: number; errorCode: number; cr2: number } {
  const e = f.cpu.exception;
  return { vector: e.vector, errorCode: e.errorCode, cr2: e.cr2 };
}

function pageFault(errorCode: number, cr2: number) {
  return { vector: VECTOR_PF, errorCode, cr2 };
}

/** The bytes `[pa, pa + n)`. */
function bytesAt(f: VcpuFixture, pa: number, n: number): number[] {
  return Array.from({ length: n }, (_, k) => f.memory.read8(pa + k));
}

// --- TLB hit path ------------------------------------------------------------------------

Deno.test("read() walks once, fills the TLB, then hits without walking", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  f.memory.write32(FRAME_A + 0x10, 0xcafe_f00d);
  assert.ok(f.cpu.read(V + 0x10, 4));
  assert.equal(f.cpu.data, 0xcafe_f00d);
  assert.ok(f.cpu.read(V + 0x10, 4));
  assert.ok(f.cpu.read32(V + 0x10));
  assert.equal(f.cpu.data, 0xcafe_f00d);
  assert.deepEqual(
    counters(f.stats, ["walk.count", "walk.refs", "tlb.miss", "tlb.hit", "tlb.fill", "cpu.read"]),
    {
      "walk.count": 1,
      "walk.refs": 4,
      "tlb.miss": 1,
      "tlb.hit": 2,
      "tlb.fill": 1,
      "cpu.read": 3,
    },
  );
});

Deno.test("read32() and write32() through 2 MiB and 1 GiB entries use the whole page offset", () => {
  const f = buildVcpuFixture();
  const big = 0x40_0000_0000; // 256 GiB
  f.map(V, 0x6000_0000, RW, PAGE_SIZE_2M);
  f.map(big, PAGE_SIZE_1G, RW, PAGE_SIZE_1G);
  assert.ok(f.cpu.write32(V + 0x1a_2344, 0x1234_5678));
  assert.ok(f.cpu.write32(big + 0x2abc_def0, 0x9abc_def0));
  assert.equal(f.memory.read32(0x6000_0000 + 0x1a_2344), 0x1234_5678);
  assert.equal(f.memory.read32(PAGE_SIZE_1G + 0x2abc_def0), 0x9abc_def0);
  assert.ok(f.cpu.read32(V + 0x1a_2344)); // TLB hit on the 2 MiB entry
  assert.equal(f.cpu.data, 0x1234_5678);
  assert.ok(f.cpu.read(big + 0x2abc_def0, 4)); // TLB hit on the 1 GiB entry
  assert.equal(f.cpu.data, 0x9abc_def0);
  assert.deepEqual(counters(f.stats, ["walk.count", "tlb.hit", "walk.refs"]), {
    "walk.count": 2,
    "tlb.hit": 2,
    "walk.refs": 3 + 2,
  });
});

Deno.test("Vcpu with tlbEnabled false walks on every access and never fills", () => {
  const f = buildVcpuFixture({ tlbEnabled: false });
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.read32(V + 4));
  assert.ok(f.cpu.write(V, 8, 1, 2));
  assert.ok(f.cpu.write32(V + 8, 3));
  assert.ok(f.cpu.fetch(V, 1));
  assert.deepEqual(counters(f.stats, ["walk.count", "tlb.hit", "tlb.miss", "tlb.fill"]), {
    "walk.count": 5,
    "tlb.hit": 0,
    "tlb.miss": 0,
    "tlb.fill": 0,
  });
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.deepEqual([f.memory.read32(FRAME_A), f.memory.read32(FRAME_A + 8)], [1, 3]);
});

// --- Stale entries (SDM 4.10.4.2: software must invalidate) ------------------------------

Deno.test("read() keeps using a stale entry after P is cleared in memory, until invlpg()", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  f.memory.write32(FRAME_A + 0x20, 0x1111_2222);
  assert.ok(f.cpu.read(V + 0x20, 4));
  const leaf = f.leafAddress(V);
  f.memory.write32(leaf, f.memory.read32(leaf) & ~PTE_PRESENT);
  assert.ok(f.cpu.read(V + 0x20, 4), "the TLB still translates the page");
  assert.equal(f.cpu.data, 0x1111_2222);
  assert.equal(f.stats.get("walk.count"), 1);
  f.cpu.invlpg(V + 0xfff);
  assert.equal(f.cpu.read(V + 0x20, 4), false);
  assert.deepEqual(exceptionOf(f), pageFault(0, V + 0x20));
  assert.deepEqual(counters(f.stats, ["cpu.pf", "walk.count", "walk.fault"]), {
    "cpu.pf": 1,
    "walk.count": 2,
    "walk.fault": 1,
  });
});

Deno.test("read() returns the old frame's data through a stale entry after a remap", () => {
  const f = buildVcpuFixture({ ctl: { cpl: 3 } });
  f.map(V, FRAME_A, URW);
  f.memory.write32(FRAME_A, 0xaaaa_aaaa);
  f.memory.write32(FRAME_B, 0xbbbb_bbbb);
  assert.ok(f.cpu.read(V, 4));
  f.map(V, FRAME_B, URW);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.cpu.data, 0xaaaa_aaaa);
  f.cpu.invlpg(V);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.cpu.data, 0xbbbb_bbbb);
  f.unmap(V);
  f.cpu.invlpg(V);
  assert.equal(f.cpu.read(V + 8, 2), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_USER, V + 8));
});

Deno.test("write() through a stale read-only entry faults, and the fault drops the entry", () => {
  // SDM 4.10.4.1: delivering the #PF invalidates the entries for the address, so the
  // retry walks and sees the now-writable PTE (Linux's spurious write fault).
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, P);
  assert.ok(f.cpu.read(V, 4));
  const leaf = f.leafAddress(V);
  f.memory.write32(leaf, f.memory.read32(leaf) | PTE_WRITABLE);
  assert.equal(f.cpu.write(V + 4, 4, 0x5555_5555), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE, V + 4));
  assert.equal(f.memory.read32(FRAME_A + 4), 0);
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.deepEqual(counters(f.stats, ["tlb.flush.fault", "tlb.invalidated", "walk.count"]), {
    "tlb.flush.fault": 1,
    "tlb.invalidated": 1,
    "walk.count": 1,
  });
  assert.ok(f.cpu.write(V + 4, 4, 0x5555_5555));
  assert.equal(f.memory.read32(FRAME_A + 4), 0x5555_5555);
  assert.equal(f.stats.get("walk.count"), 2);
  assert.equal(f.memory.read32(leaf) & PTE_DIRTY, PTE_DIRTY);
  assert.equal(f.stats.get("cpu.pf"), 1);
});

Deno.test("write32() through a stale read-only entry faults the same way", () => {
  const f = buildVcpuFixture({ ctl: { cpl: 3 } });
  f.map(V, FRAME_A, PTE_PRESENT | PTE_USER);
  assert.ok(f.cpu.read32(V));
  const leaf = f.leafAddress(V);
  f.memory.write32(leaf, f.memory.read32(leaf) | PTE_WRITABLE);
  assert.equal(f.cpu.write32(V + 0x40, 7), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE | PFEC_USER, V + 0x40));
  assert.equal(f.stats.get("tlb.flush.fault"), 1);
  assert.ok(f.cpu.write32(V + 0x40, 7));
  assert.equal(f.memory.read32(FRAME_A + 0x40), 7);
});

Deno.test("write() through a clean entry walks again and sets D in memory", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  const leaf = f.leafAddress(V);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.memory.read32(leaf) & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED);
  assert.equal(f.stats.get("walk.count"), 1);
  assert.ok(f.cpu.write(V, 4, 0xfeed));
  assert.equal(f.memory.read32(leaf) & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED | PTE_DIRTY);
  assert.equal(f.stats.get("walk.count"), 2);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.ok(f.cpu.write(V + 4, 4, 0xbeef)); // the refilled entry is dirty: no walk
  assert.ok(f.cpu.write32(V + 8, 0xbead));
  assert.equal(f.stats.get("walk.count"), 2);
  assert.deepEqual(bytesAt(f, FRAME_A, 4), [0xed, 0xfe, 0, 0]);
  assert.equal(f.memory.read32(FRAME_A + 8), 0xbead);
});

Deno.test("write32() through a clean entry walks again and sets D in memory", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  const leaf = f.leafAddress(V);
  assert.ok(f.cpu.read32(V));
  assert.ok(f.cpu.write32(V, 0x0102_0304));
  assert.equal(f.memory.read32(leaf) & PTE_DIRTY, PTE_DIRTY);
  assert.equal(f.stats.get("walk.count"), 2);
  assert.equal(f.memory.read32(FRAME_A), 0x0102_0304);
});

Deno.test("write() through a cached dirty entry does not set A or D again after they were cleared", () => {
  // A and D are written only by walks (SDM 4.8): clearing A without INVLPG is invisible
  // until the entry leaves the TLB, which is why Linux flushes after clearing A.
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  const leaf = f.leafAddress(V);
  assert.ok(f.cpu.write(V, 4, 1));
  f.memory.write32(leaf, f.memory.read32(leaf) & ~(PTE_ACCESSED | PTE_DIRTY));
  assert.ok(f.cpu.write(V, 4, 2));
  assert.equal(f.memory.read32(leaf) & (PTE_ACCESSED | PTE_DIRTY), 0);
  f.cpu.invlpg(V);
  assert.ok(f.cpu.write(V, 4, 3));
  assert.equal(f.memory.read32(leaf) & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED | PTE_DIRTY);
});

// --- CR0.WP --------------------------------------------------------------------------------

Deno.test("write() by CPL 0 to a read-only page succeeds with CR0.WP=0 and faults with WP=1", () => {
  const f = buildVcpuFixture({ ctl: { cr0: CR0_PE | CR0_PG } });
  f.map(V, FRAME_A, P);
  f.map(V + PAGE_SIZE, FRAME_B, PTE_PRESENT | PTE_USER);
  assert.ok(f.cpu.write(V, 4, 0x1234));
  assert.ok(f.cpu.write(V + PAGE_SIZE, 2, 0x5678)); // a read-only user page too
  assert.equal(f.memory.read32(FRAME_A), 0x1234);
  assert.equal(f.memory.read16(FRAME_B), 0x5678);
  assert.ok(f.cpu.writeCr0(CR0_PE | CR0_PG | CR0_WP));
  assert.equal(f.cpu.write(V, 4, 0x9999), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE, V));
  assert.equal(f.memory.read32(FRAME_A), 0x1234);
});

Deno.test("write() by CPL 3 to a read-only user page faults even with CR0.WP=0", () => {
  const f = buildVcpuFixture({ ctl: { cr0: CR0_PE | CR0_PG, cpl: 3 } });
  f.map(V, FRAME_A, PTE_PRESENT | PTE_USER);
  assert.equal(f.cpu.write(V, 1, 0xff), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE | PFEC_USER, V));
});

// --- MOV to CR3 ------------------------------------------------------------------------------

Deno.test("writeCr3() keeps global entries and flushes the rest when PCIDE=0", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  f.map(V + PAGE_SIZE, FRAME_B, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.ok(f.cpu.writeCr3(0x1000));
  assert.deepEqual(counters(f.stats, ["tlb.flush.cr3", "tlb.invalidated", "cpu.cr3Write"]), {
    "tlb.flush.cr3": 1,
    "tlb.invalidated": 1,
    "cpu.cr3Write": 1,
  });
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 2, "the global page hits");
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.equal(f.stats.get("walk.count"), 3, "the non-global page walks again");
});

Deno.test("writeCr3() with CR4.PGE=0 flushes pages marked G", () => {
  const f = buildVcpuFixture({ ctl: { cr4: CR4_PAE } });
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr3(0x1000));
  assert.equal(f.cpu.tlb.validEntries(), 0);
});

Deno.test("writeCr3() with PCIDE=1 flushes only the new PCID, and keeps it with noFlush", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 1 } });
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4)); // PCID 1 entry
  assert.ok(f.cpu.writeCr3(0x1000 | 2));
  assert.equal(f.ctl.pcid, 2);
  assert.ok(f.cpu.read(V, 4)); // PCID 2 entry
  assert.equal(f.stats.get("walk.count"), 2);
  assert.equal(f.cpu.tlb.validEntries(), 2);
  assert.ok(f.cpu.writeCr3(0x1000 | 1, true));
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 2, "noFlush kept PCID 1's entry");
  assert.ok(f.cpu.writeCr3(0x1000 | 1));
  assert.equal(f.cpu.tlb.validEntries(), 1, "PCID 1 flushed, PCID 2 kept");
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 3);
  assert.ok(f.cpu.writeCr3(0x1000 | 2, true));
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 3, "PCID 2's entry survived PCID 1's flushes");
  assert.deepEqual(counters(f.stats, ["tlb.flush.cr3", "tlb.invalidated", "cpu.cr3Write"]), {
    "tlb.flush.cr3": 2,
    "tlb.invalidated": 1,
    "cpu.cr3Write": 4,
  });
});

Deno.test("writeCr3() with PCIDE=1 keeps a global entry when it flushes the PCID", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 3 } });
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr3(0x1000 | 3));
  assert.ok(f.cpu.writeCr3(0x1000 | 9));
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 1);
});

Deno.test("writeCr3() raises #GP for bits at or above MAXPHYADDR and leaves CR3 and the TLB alone", () => {
  const f = buildVcpuFixture({ ctl: { maxPhyAddr: 36 } });
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  for (const value of [2 ** 36, 2 ** 36 + 0x1000, 2 ** 51, -0x1000, 4096.5]) {
    assert.equal(f.cpu.writeCr3(value), false, `0x${value.toString(16)}`);
    assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.errorCode], [VECTOR_GP, 0]);
  }
  assert.equal(f.ctl.cr3, 0x1000);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.deepEqual(counters(f.stats, ["cpu.gp", "cpu.cr3Write", "tlb.flush.cr3"]), {
    "cpu.gp": 5,
    "cpu.cr3Write": 0,
    "tlb.flush.cr3": 0,
  });
  assert.ok(f.cpu.writeCr3(2 ** 36 - 0x1000)); // the highest legal table address
  assert.equal(f.ctl.cr3, 2 ** 36 - 0x1000);
});

Deno.test("writeCr3() with noFlush and PCIDE=0 raises #GP and changes nothing", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.cpu.writeCr3(0x2000, true), false);
  assert.equal(f.cpu.exception.vector, VECTOR_GP);
  assert.equal(f.ctl.cr3, 0x1000);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.equal(f.stats.get("cpu.gp"), 1);
});

Deno.test("writeCr3() does not change CR2 or count a page fault on #GP", () => {
  const f = buildVcpuFixture();
  f.cpu.exception.cr2 = 0x1234_5000;
  assert.equal(f.cpu.writeCr3(2 ** 46), false);
  assert.equal(f.cpu.exception.cr2, 0x1234_5000);
  assert.equal(f.stats.get("cpu.pf"), 0);
});

// --- MOV to CR4 / CR0 ------------------------------------------------------------------------

Deno.test("writeCr4() clearing or setting PGE flushes every entry, global ones included", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  f.map(V + PAGE_SIZE, FRAME_B, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.ok(f.cpu.writeCr4(CR4_PAE));
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr4(CR4_PAE | CR4_PGE));
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.deepEqual(counters(f.stats, ["tlb.flush.all", "tlb.invalidated", "walk.count"]), {
    "tlb.flush.all": 2,
    "tlb.invalidated": 3,
    "walk.count": 3,
  });
});

Deno.test("writeCr4() that leaves PGE and PCIDE alone keeps the TLB", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr4(CR4_PAE | CR4_PGE));
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.equal(f.stats.get("tlb.flush.all"), 0);
});

Deno.test("writeCr4() clearing PCIDE flushes every PCID's entries and global ones", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 5 } });
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  f.map(V + PAGE_SIZE, FRAME_B, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.ok(f.cpu.writeCr3(0x1000 | 6, true));
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.equal(f.cpu.tlb.validEntries(), 3);
  assert.ok(f.cpu.writeCr4(CR4_PAE | CR4_PGE));
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.equal(f.ctl.pcid, 0);
  assert.equal(f.stats.get("tlb.flush.all"), 1);
});

Deno.test("writeCr4() setting PCIDE with CR3[11:0] != 0 raises #GP", () => {
  const f = buildVcpuFixture({ ctl: { cr3: 0x1008 } }); // PWT set
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.cpu.writeCr4(PCIDE_CR4), false);
  assert.equal(f.cpu.exception.vector, VECTOR_GP);
  assert.equal(f.ctl.cr4, CR4_PAE | CR4_PGE);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.ok(f.cpu.writeCr3(0x1000));
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr4(PCIDE_CR4)); // CR3[11:0] = 0: allowed, and nothing to flush
  assert.equal(f.ctl.cr4, PCIDE_CR4);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.ok(f.cpu.read(V, 4), "the PCID 0 entry is the current PCID's");
  assert.equal(f.stats.get("walk.count"), 2);
});

Deno.test("writeCr4() raises #GP for PCIDE outside long mode and for clearing PAE in long mode", () => {
  const legacy = buildVcpuFixture({ ctl: { efer: EFER_LME | EFER_NXE } });
  assert.equal(legacy.cpu.writeCr4(PCIDE_CR4), false);
  assert.equal(legacy.cpu.exception.vector, VECTOR_GP);
  const f = buildVcpuFixture();
  assert.equal(f.cpu.writeCr4(CR4_PGE), false);
  assert.equal(f.ctl.cr4, CR4_PAE | CR4_PGE);
  assert.equal(f.stats.get("cpu.gp"), 1);
});

Deno.test("writeCr4() setting SMEP drops the current PCID's non-global entries", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  f.map(V + PAGE_SIZE, FRAME_B, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
  assert.ok(f.cpu.writeCr4(CR4_PAE | CR4_PGE | CR4_SMEP));
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.equal(f.stats.get("tlb.flush.all"), 0);
});

Deno.test("writeCr0() raises #GP for clearing PG in long mode and for PG without PE", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.cpu.writeCr0(CR0_PE | CR0_WP), false);
  assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.errorCode], [VECTOR_GP, 0]);
  assert.equal(f.cpu.writeCr0(CR0_PG | CR0_WP), false);
  assert.equal(f.ctl.cr0, (CR0_PE | CR0_WP | CR0_PG) >>> 0);
  assert.equal(f.ctl.isPaging, true);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.equal(f.stats.get("cpu.gp"), 2);
});

// --- INVLPG / INVPCID ------------------------------------------------------------------------

Deno.test("invlpg() drops a global entry filled under another PCID", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 1 } });
  f.map(V, FRAME_A, RW | PTE_GLOBAL);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr3(0x1000 | 2, true));
  f.cpu.invlpg(V);
  assert.equal(f.cpu.tlb.validEntries(), 0);
});

Deno.test("invlpg() keeps another PCID's non-global entry for the same page", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 1 } });
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  assert.ok(f.cpu.writeCr3(0x1000 | 2, true));
  assert.ok(f.cpu.read(V, 4));
  f.cpu.invlpg(V);
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.ok(f.cpu.writeCr3(0x1000 | 1, true));
  assert.ok(f.cpu.read(V, 4));
  assert.equal(f.stats.get("walk.count"), 2);
});

Deno.test("invpcid() raises #GP for type 4, PCID 0x1000 and a non-canonical type-0 address", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 1 } });
  f.map(V, FRAME_A, RW);
  assert.ok(f.cpu.read(V, 4));
  const bad: [number, number, number][] = [
    [4, 1, V],
    [0, 0x1000, V],
    [1, 0x1000, 0],
    [0, 1, -1],
    [
      0,
      1,
      2 ** 48,
    ],
    [-1, 0, 0],
    [2.5, 0, 0],
    [1, -1, 0],
  ];
  for (const [type, pcid, va] of bad) {
    assert.equal(f.cpu.invpcid(type, pcid, va), false, `${type} ${pcid} ${va}`);
    assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.errorCode], [VECTOR_GP, 0]);
  }
  assert.equal(f.cpu.tlb.validEntries(), 1);
  assert.deepEqual(counters(f.stats, ["cpu.gp", "tlb.flush.invpcid"]), {
    "cpu.gp": bad.length,
    "tlb.flush.invpcid": 0,
  });
  assert.ok(f.cpu.invpcid(0, 0xfff, 2 ** 48 - 1)); // the limits themselves are legal
  assert.ok(f.cpu.invpcid(0, 1, V));
  assert.equal(f.cpu.tlb.validEntries(), 0);
});

Deno.test("invpcid() with PCIDE=0 raises #GP for types 0 and 1 with a PCID other than 0", () => {
  const f = buildVcpuFixture();
  assert.equal(f.cpu.invpcid(0, 1, V), false);
  assert.equal(f.cpu.invpcid(1, 1, 0), false);
  assert.equal(f.stats.get("cpu.gp"), 2);
  assert.ok(f.cpu.invpcid(0, 0, V));
  assert.ok(f.cpu.invpcid(1, 0, 0));
  assert.ok(f.cpu.invpcid(2, 7, 0)); // types 2 and 3 ignore the descriptor's PCID
  assert.ok(f.cpu.invpcid(3, 7, 0));
  assert.equal(f.stats.get("tlb.flush.invpcid"), 4);
});

Deno.test("invpcid() types 0 to 3 through the vCPU remove exactly the SDM's entries", () => {
  const f = buildVcpuFixture({ ctl: { cr4: PCIDE_CR4, cr3: 0x1000 | 1 } });
  f.map(V, FRAME_A, RW);
  f.map(V + PAGE_SIZE, FRAME_B, RW | PTE_GLOBAL);
  const load = () => {
    assert.ok(f.cpu.writeCr3(0x1000 | 1, true));
    assert.ok(f.cpu.read(V, 4));
    assert.ok(f.cpu.read(V + PAGE_SIZE, 4));
    assert.ok(f.cpu.writeCr3(0x1000 | 2, true));
    assert.ok(f.cpu.read(V, 4));
  };
  load();
  assert.equal(f.cpu.tlb.validEntries(), 3);
  assert.ok(f.cpu.invpcid(0, 1, V + PAGE_SIZE)); // global entry kept
  assert.equal(f.cpu.tlb.validEntries(), 3);
  assert.ok(f.cpu.invpcid(0, 1, V));
  assert.equal(f.cpu.tlb.validEntries(), 2);
  load();
  assert.ok(f.cpu.invpcid(1, 2, 0));
  assert.equal(f.cpu.tlb.validEntries(), 2);
  load();
  assert.ok(f.cpu.invpcid(3, 0, 0));
  assert.equal(f.cpu.tlb.validEntries(), 1);
  load();
  assert.ok(f.cpu.invpcid(2, 0, 0));
  assert.equal(f.cpu.tlb.validEntries(), 0);
  assert.equal(f.stats.get("tlb.flush.invpcid"), 5);
});

// --- Page-crossing accesses ------------------------------------------------------------------

const LO = 0x4433_2211;
const HI = 0x8877_6655;
const PATTERN = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

/** Two virtually adjacent pages on physically distant frames (the second one lower). */
function splitFixture(): VcpuFixture {
  const f = buildVcpuFixture();
  f.map(V, FRAME_B, RW);
  f.map(V + PAGE_SIZE, FRAME_A, RW);
  return f;
}

Deno.test("write() and read() of 2, 4 and 8 bytes across a page boundary use both frames", () => {
  for (const size of [2, 4, 8] as const) {
    for (let first = 1; first < size; first++) {
      const f = splitFixture();
      const va = V + PAGE_SIZE - first;
      const name = `size ${size}, ${first} byte(s) in the first page`;
      assert.ok(f.cpu.write(va, size, LO, HI), name);
      assert.deepEqual(bytesAt(f, FRAME_B + PAGE_SIZE - first, first), PATTERN.slice(0, first));
      assert.deepEqual(bytesAt(f, FRAME_A, size - first), PATTERN.slice(first, size), name);
      assert.equal(f.memory.read8(FRAME_B + PAGE_SIZE - first - 1), 0, name);
      assert.equal(f.memory.read8(FRAME_A + size - first), 0, name);
      f.cpu.data = 0;
      f.cpu.dataHi = 0;
      assert.ok(f.cpu.read(va, size), name);
      const mask = size === 2 ? 0xffff : 0xffff_ffff;
      assert.equal(f.cpu.data, LO & mask, name);
      assert.equal(f.cpu.dataHi, size === 8 ? HI : 0, name);
      assert.deepEqual(counters(f.stats, ["cpu.read", "cpu.write", "cpu.splitAccess"]), {
        "cpu.read": 1,
        "cpu.write": 1,
        "cpu.splitAccess": 2,
      });
    }
  }
});

Deno.test("read32() and write32() across a page boundary take the split path", () => {
  const f = splitFixture();
  assert.ok(f.cpu.write32(V + PAGE_SIZE - 1, 0xddcc_bbaa));
  assert.equal(f.memory.read8(FRAME_B + PAGE_SIZE - 1), 0xaa);
  assert.deepEqual(bytesAt(f, FRAME_A, 3), [0xbb, 0xcc, 0xdd]);
  assert.ok(f.cpu.read32(V + PAGE_SIZE - 1));
  assert.equal(f.cpu.data, 0xddcc_bbaa);
  assert.equal(f.stats.get("cpu.splitAccess"), 2);
});

Deno.test("fetch() across a page boundary counts one fetch and one split access", () => {
  const f = splitFixture();
  f.memory.write8(FRAME_B + PAGE_SIZE - 1, 0x0f);
  f.memory.write8(FRAME_A, 0x05);
  assert.ok(f.cpu.fetch(V + PAGE_SIZE - 1, 2));
  assert.equal(f.cpu.data, 0x050f);
  assert.deepEqual(counters(f.stats, ["cpu.fetch", "cpu.read", "cpu.splitAccess"]), {
    "cpu.fetch": 1,
    "cpu.read": 0,
    "cpu.splitAccess": 1,
  });
});

Deno.test("write() across into a not-present page faults at the second page and stores nothing", () => {
  for (const size of [2, 4, 8] as const) {
    const f = splitFixture();
    f.memory.write32(FRAME_B + PAGE_SIZE - 4, 0xa5a5_a5a5);
    f.memory.write32(FRAME_A, 0x5a5a_5a5a);
    f.unmap(V + PAGE_SIZE);
    assert.equal(f.cpu.write(V + PAGE_SIZE - 1, size, LO, HI), false);
    assert.deepEqual(exceptionOf(f), pageFault(PFEC_WRITE, V + PAGE_SIZE), `size ${size}`);
    assert.equal(f.memory.read32(FRAME_B + PAGE_SIZE - 4), 0xa5a5_a5a5);
    assert.equal(f.memory.read32(FRAME_A), 0x5a5a_5a5a);
    assert.deepEqual(counters(f.stats, ["cpu.write", "cpu.pf", "cpu.splitAccess"]), {
      "cpu.write": 1,
      "cpu.pf": 1,
      "cpu.splitAccess": 1,
    });
  }
});

Deno.test("write() across into a not-present page gives no frame host storage", () => {
  // MachineMemory backs a frame on its first write; a write that faults writes nothing.
  const f = buildVcpuFixture();
  f.map(V, FRAME_B, RW);
  const before = f.memory.materializedFrames;
  assert.equal(f.memory.frameWords((FRAME_B / PAGE_SIZE) as Mfn), undefined);
  assert.equal(f.cpu.write(V + PAGE_SIZE - 2, 4, LO), false);
  assert.equal(f.memory.materializedFrames, before);
  assert.equal(f.memory.frameWords((FRAME_B / PAGE_SIZE) as Mfn), undefined);
});

Deno.test("write() across into a read-only page faults with P|W and leaves both pages unchanged", () => {
  const f = buildVcpuFixture({ ctl: { cpl: 3 } });
  f.map(V, FRAME_B, URW);
  f.map(V + PAGE_SIZE, FRAME_A, PTE_PRESENT | PTE_USER);
  f.memory.write32(FRAME_B + PAGE_SIZE - 4, 0xa5a5_a5a5);
  assert.equal(f.cpu.write(V + PAGE_SIZE - 4, 8, LO, HI), false);
  assert.deepEqual(
    exceptionOf(f),
    pageFault(PFEC_PRESENT | PFEC_WRITE | PFEC_USER, V + PAGE_SIZE),
  );
  assert.equal(f.memory.read32(FRAME_B + PAGE_SIZE - 4), 0xa5a5_a5a5);
  assert.equal(f.memory.read32(FRAME_A), 0);
  assert.equal(f.memory.read32(FRAME_A + 4), 0);
});

Deno.test("write() across from a read-only page faults at the first byte, not the second page", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_B, P);
  assert.equal(f.cpu.write(V + PAGE_SIZE - 2, 4, LO), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE, V + PAGE_SIZE - 2));
});

Deno.test("read() across into a not-present page faults with CR2 at the second page", () => {
  const f = buildVcpuFixture({ ctl: { cpl: 3 } });
  f.map(V, FRAME_B, URW);
  assert.equal(f.cpu.read(V + PAGE_SIZE - 3, 8), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_USER, V + PAGE_SIZE));
  assert.equal(f.stats.get("cpu.pf"), 1);
});

Deno.test("read() of 8 bytes from just below 2^47 into the non-canonical hole is #GP, not #PF", () => {
  const f = buildVcpuFixture();
  const last = 2 ** 47 - PAGE_SIZE;
  f.map(last, FRAME_A, RW);
  f.memory.write32(FRAME_A + PAGE_SIZE - 4, 0x0bad_f00d);
  f.cpu.exception.cr2 = 0x777_7000;
  assert.equal(f.cpu.read(2 ** 47 - 4, 8), false);
  assert.deepEqual(exceptionOf(f), { vector: VECTOR_GP, errorCode: 0, cr2: 0x777_7000 });
  assert.equal(f.cpu.write(2 ** 47 - 1, 2, 0xffff), false);
  assert.equal(f.cpu.exception.vector, VECTOR_GP);
  assert.equal(f.memory.read32(FRAME_A + PAGE_SIZE - 4), 0x0bad_f00d);
  assert.deepEqual(counters(f.stats, ["cpu.gp", "cpu.pf", "cpu.read", "cpu.write"]), {
    "cpu.gp": 2,
    "cpu.pf": 0,
    "cpu.read": 1,
    "cpu.write": 1,
  });
  assert.ok(f.cpu.read(2 ** 47 - 4, 4), "the last 4 bytes of the lower half are fine");
  assert.equal(f.cpu.data, 0x0bad_f00d);
});

// --- Exception fields ------------------------------------------------------------------------

Deno.test("accesses report the SDM 4.7 error code and CR2 for each kind of fault", () => {
  const f = buildVcpuFixture({ ctl: { cr4: CR4_PAE | CR4_PGE | CR4_SMEP } });
  const user = V + 0x10 * PAGE_SIZE;
  const xd = V + 0x20 * PAGE_SIZE;
  const rsvd = V + 0x30 * PAGE_SIZE;
  f.map(V, FRAME_A, P); // supervisor read-only
  f.map(user, FRAME_B, PTE_PRESENT | PTE_USER); // user read-only
  f.map(xd, FRAME_C, RW | PTE_USER, PAGE_SIZE, { xd: true });
  f.map(rsvd, FRAME_C, RW);
  const rsvdLeaf = f.leafAddress(rsvd);
  f.memory.write32(rsvdLeaf + 4, f.memory.read32(rsvdLeaf + 4) | (1 << 14)); // bit 46 >= MAXPHYADDR
  const cases: [string, number, () => boolean, number, number][] = [
    ["CPL0 write to read-only", 0, () => f.cpu.write(V + 1, 1, 0), P | PFEC_WRITE, V + 1],
    ["CPL0 fetch from user page (SMEP)", 0, () => f.cpu.fetch(user, 1), P | PFEC_FETCH, user],
    ["CPL0 fetch from XD page", 0, () => f.cpu.fetch(xd + 9, 1), P | PFEC_FETCH, xd + 9],
    ["CPL3 read of supervisor page", 3, () => f.cpu.read(V, 4), P | PFEC_USER, V],
    ["CPL3 write to read-only", 3, () => f.cpu.write(user, 2, 0), 7, user],
    ["CPL3 fetch from XD page", 3, () => f.cpu.fetch(xd, 4), P | PFEC_USER | PFEC_FETCH, xd],
    ["CPL3 write to unmapped page", 3, () => f.cpu.write32(V + PAGE_SIZE, 0), 6, V + PAGE_SIZE],
    ["CPL3 fetch from unmapped page", 3, () => f.cpu.fetch(2 ** 47, 1), 0x14, 2 ** 47],
    ["CPL0 read with a reserved bit", 0, () => f.cpu.read32(rsvd), P | PFEC_RSVD, rsvd],
    ["CPL0 write with a reserved bit", 0, () => f.cpu.write(rsvd, 1, 0), 0xb, rsvd],
  ];
  for (const [name, cpl, access, errorCode, cr2] of cases) {
    f.ctl.cpl = cpl;
    assert.equal(access(), false, name);
    assert.deepEqual(exceptionOf(f), pageFault(errorCode, cr2), name);
  }
  assert.equal(f.stats.get("cpu.pf"), cases.length);
  assert.equal(f.stats.get("cpu.gp"), 0);
});

Deno.test("an access that hits a TLB entry with denied rights faults with the same error code", () => {
  const f = buildVcpuFixture({ ctl: { cpl: 3 } });
  f.map(V, FRAME_A, PTE_PRESENT | PTE_USER);
  assert.ok(f.cpu.read(V, 4));
  f.ctl.cpl = 0;
  assert.ok(f.cpu.read(V, 4)); // hit
  f.ctl.cpl = 3;
  assert.equal(f.cpu.write(V + 2, 2, 1), false);
  assert.deepEqual(exceptionOf(f), pageFault(PFEC_PRESENT | PFEC_WRITE | PFEC_USER, V + 2));
  assert.equal(f.stats.get("walk.count"), 1, "decided from the TLB entry");
  assert.equal(f.stats.get("tlb.flush.fault"), 1);
});

// --- Counters --------------------------------------------------------------------------------

Deno.test("cpu.read, cpu.write, cpu.fetch, cpu.pf and cpu.splitAccess count each access once", () => {
  const f = buildVcpuFixture();
  f.map(V, FRAME_A, RW);
  f.map(V + PAGE_SIZE, FRAME_B, RW);
  assert.ok(f.cpu.read(V, 1));
  assert.ok(f.cpu.read32(V));
  assert.ok(f.cpu.read(V + PAGE_SIZE - 1, 2)); // split
  assert.ok(f.cpu.write(V, 8, 1, 2));
  assert.ok(f.cpu.write32(V + PAGE_SIZE - 2, 3)); // split
  assert.ok(f.cpu.fetch(V, 8));
  assert.ok(f.cpu.fetch(V + 16, 1));
  assert.equal(f.cpu.read(V + 2 * PAGE_SIZE, 4), false);
  assert.equal(f.cpu.write32(V + 2 * PAGE_SIZE, 0), false);
  assert.equal(f.cpu.fetch(V + 3 * PAGE_SIZE, 1), false);
  assert.deepEqual(
    counters(f.stats, [
      "cpu.read",
      "cpu.write",
      "cpu.fetch",
      "cpu.pf",
      "cpu.gp",
      "cpu.splitAccess",
    ]),
    {
      "cpu.read": 4,
      "cpu.write": 3,
      "cpu.fetch": 3,
      "cpu.pf": 3,
      "cpu.gp": 0,
      "cpu.splitAccess": 2,
    },
  );
});
