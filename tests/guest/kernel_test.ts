/**
 * Tests of the guest kernel on the native platform: each mechanism (demand zero, the zero
 * page, copy-on-write, SIGSEGV, mprotect, munmap's flush rule, brk, swap, shared
 * mappings, PCIDs), a fork + COW + exec + exit scenario whose counts are worked out by
 * hand, and leak checks.
 */

import assert from "node:assert/strict";
import { createLab, type Lab } from "../../lib/lab/lab.ts";
import { PROT_NONE, PROT_READ, PROT_WRITE, SIGSEGV } from "../../lib/guest/layout.ts";
import { Stats } from "../../lib/x86/stats.ts";
import { FRAME_USE_TABLE, FRAME_USE_USER } from "../../lib/guest/frame_allocator.ts";
import { PTE_DIRTY, PTE_PRESENT, PTE_USER, PTE_WRITABLE, pteAddress } from "../../lib/x86/pte.ts";

const RW = PROT_READ | PROT_WRITE;
const DATA = 0x600000;
const TEXT = 0x400000;

function delta(lab: Lab, work: () => void): (name: string) => number {
  const before = lab.stats.snapshot();
  work();
  const diff = Stats.diff(before, lab.stats.snapshot());
  return (name) => diff[name] ?? 0;
}

function leafOf(lab: Lab, pid: number, va: number): { lo: number; hi: number } {
  const gpa = lab.kernel.leafEntryAddress(pid, va);
  assert.ok(gpa >= 0, `no leaf table for ${va}`);
  return {
    lo: lab.platform.peekGuestPhysical32(gpa),
    hi: lab.platform.peekGuestPhysical32(gpa + 4),
  };
}

Deno.test("fork + COW + exec + exit: PTE writes, CR3 writes, INVLPGs and faults as worked out by hand", () => {
  const lab = createLab({ memoryMiB: 64, recordFaults: true });
  const parent = lab.spawn();
  lab.writeU32(parent, DATA, 0xaaaa); // demand-zero: tables L3, L2, L1 and the page
  const count = delta(lab, () => {
    // fork: child tables L3, L2, L1 (3 sets) + the copied entry (1 set); the parent's entry
    // is write-protected (1 flag update); flush_tlb_mm reloads CR3 (1 CR3 write).
    const child = lab.fork(parent);
    // The child writes: switch (1 CR3), COW copy: clear + INVLPG + set.
    lab.writeU32(child, DATA, 0xbbbb);
    // The parent writes: switch (1 CR3), the page's only reference: reuse (1 flag update).
    lab.writeU32(parent, DATA, 0xcccc);
    // exec: switch to the child (1 CR3), load the new space (1 CR3); the old space is not
    // loaded: its entry is cleared (1 clear) and L1, L2, L3 unlinked (3 sets), no flush.
    lab.exec(child);
    // exit of the child: nothing mapped; flush (1 CR3) and switch to the kernel (1 CR3).
    lab.exit(child);
    // exit of the parent: switch (1 CR3), clear its page (1 clear), unlink 3 tables
    // (3 sets), flush (1 CR3), switch to the kernel (1 CR3).
    lab.exit(parent);
  });
  assert.equal(count("guest.pte.set"), 4 + 1 + 3 + 3);
  assert.equal(count("guest.pte.clear"), 1 + 1 + 1);
  assert.equal(count("guest.pte.flags"), 1 + 1);
  assert.equal(count("cpu.cr3Write"), 1 + 1 + 1 + 2 + 2 + 3);
  assert.equal(count("tlb.flush.invlpg"), 1);
  assert.equal(count("guest.fault"), 2);
  assert.equal(count("guest.fault.cow"), 2);
  assert.equal(count("guest.cow.copy"), 1);
  assert.equal(count("guest.cow.reuse"), 1);
  assert.equal(count("guest.fork"), 1);
  assert.equal(count("guest.exec"), 1);
  assert.equal(count("guest.exit"), 2);
  // Page tables by instruction: each set is `mov [rdi], rsi; ret`, each clear `xchg`, ...
  assert.equal(count("cpu.instructions") >= 2 * 11, true);
  assert.deepEqual(lab.faults.map((f) => [f.pid, f.cr2, f.errorCode, f.kind]), [
    [1, DATA, 6, "demandZero"],
    [2, DATA, 7, "cow"],
    [1, DATA, 7, "cow"],
  ]);
  assert.deepEqual(lab.waitAll().map((r) => r.pid).sort(), [1, 2]);
  assert.deepEqual(lab.usage(), { ...lab.usage(), tables: 0, user: 0, tasks: 0, swapSlots: 0 });
});

Deno.test("GuestKernel: a read of untouched private memory maps the zero page read-only", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  assert.equal(lab.readU32(pid, DATA + 0x10), 0);
  const leaf = leafOf(lab, pid, DATA);
  assert.equal(pteAddress(leaf.lo, leaf.hi), lab.kernel.zeroPageGfn * 4096);
  assert.equal(leaf.lo & (PTE_PRESENT | PTE_USER | PTE_WRITABLE), PTE_PRESENT | PTE_USER);
  // The write that follows breaks COW from the zero page: a cleared page, not a copy.
  const count = delta(lab, () => lab.writeU32(pid, DATA + 0x10, 5));
  assert.equal(count("guest.cow.copy"), 1);
  assert.equal(count("guest.clearPage"), 1);
  assert.equal(count("guest.copyPage"), 0);
  assert.equal(lab.readU32(pid, DATA + 0x10), 5);
  assert.equal(lab.readU32(pid, DATA + 0x14), 0);
  const after = leafOf(lab, pid, DATA);
  assert.notEqual(pteAddress(after.lo, after.hi), lab.kernel.zeroPageGfn * 4096);
  assert.equal(after.lo & (PTE_WRITABLE | PTE_DIRTY), PTE_WRITABLE | PTE_DIRTY);
});

Deno.test("GuestKernel: a write fault on untouched memory maps a zeroed writable dirty page", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  const count = delta(lab, () => lab.writeU32(pid, DATA + 8, 0x1234));
  assert.equal(count("guest.fault.demandZero"), 1);
  assert.equal(count("guest.table.alloc"), 3); // L3, L2, L1 of the user half
  assert.equal(count("guest.clearPage"), 4);
  assert.equal(lab.readU32(pid, DATA), 0);
  assert.equal(lab.readU32(pid, DATA + 8), 0x1234);
});

Deno.test("GuestKernel: an access outside every area kills the process with SIGSEGV", () => {
  const lab = createLab({ memoryMiB: 16, recordFaults: true });
  const pid = lab.spawn();
  const result = lab.touch(pid, { start: 0x1000_0000, length: 4096 });
  assert.deepEqual(result, { accesses: 0, outcome: "killed", checksum: 0 });
  assert.equal(lab.stats.get("guest.fault.segv"), 1);
  assert.equal(lab.stats.get("guest.kill"), 1);
  assert.equal(lab.kernel.process(pid)?.state, "zombie");
  assert.deepEqual(lab.wait(pid), { pid, exitCode: 0, signal: SIGSEGV });
  assert.deepEqual(lab.faults, [{ pid, cr2: 0x1000_0000, errorCode: 4, kind: "segv" }]);
  assert.throws(() => lab.readU32(pid, DATA), /Cannot run process 1: no such process/);
});

Deno.test("GuestKernel: a write to the read-only text kills with SIGSEGV (protection)", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  assert.equal(lab.readU32(pid, TEXT), 0); // readable
  assert.equal(lab.touch(pid, { start: TEXT, length: 4, kind: "fetch" }).outcome, "done");
  const result = lab.touch(pid, { start: TEXT, length: 4, kind: "write" });
  assert.equal(result.outcome, "killed");
  assert.equal(lab.stats.get("guest.fault.protection"), 1);
  assert.equal(lab.wait(pid)?.signal, SIGSEGV);
});

Deno.test("GuestKernel: a fetch from data (no PROT_EXEC, XD set) kills with SIGSEGV", () => {
  const lab = createLab({ memoryMiB: 16, recordFaults: true });
  const pid = lab.spawn();
  lab.writeU32(pid, DATA, 1);
  const result = lab.touch(pid, { start: DATA, length: 4, kind: "fetch" });
  assert.equal(result.outcome, "killed");
  // P | U | I/D: the page is present, the fetch is denied by XD.
  assert.equal(lab.faults.at(-1)?.errorCode, 0x15);
  assert.equal(lab.faults.at(-1)?.kind, "protection");
});

Deno.test("GuestKernel: mprotect removes write access at once and grants it back lazily", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  const area = lab.mmap(pid, 4 * 4096, RW);
  lab.touch(pid, { start: area, length: 4 * 4096, kind: "write" });
  const count = delta(lab, () => lab.mprotect(pid, area, 4 * 4096, PROT_READ));
  assert.equal(count("guest.pte.protChange"), 4);
  assert.equal(count("tlb.flush.invlpg"), 4); // 4 pages <= 33: INVLPG each
  for (let i = 0; i < 4; i++) assert.equal(leafOf(lab, pid, area + i * 4096).lo & PTE_WRITABLE, 0);
  assert.equal(lab.readU32(pid, area + 4096), (area + 4096) >>> 0);
  lab.mprotect(pid, area, 4 * 4096, RW);
  assert.equal(leafOf(lab, pid, area).lo & PTE_WRITABLE, 0); // still read-only in the table
  const write = delta(lab, () => lab.writeU32(pid, area, 7));
  assert.equal(write("guest.cow.reuse"), 1);
  assert.equal(lab.readU32(pid, area), 7);
  lab.mprotect(pid, area, 4096, PROT_READ);
  assert.equal(lab.touch(pid, { start: area, length: 4, kind: "write" }).outcome, "killed");
});

Deno.test("GuestKernel: PROT_NONE keeps the pages; access kills, mprotect back restores them", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  const area = lab.mmap(pid, 2 * 4096, RW);
  lab.touch(pid, { start: area, length: 2 * 4096, kind: "write" });
  const used = lab.usage().user;
  lab.mprotect(pid, area, 2 * 4096, PROT_NONE);
  assert.equal(leafOf(lab, pid, area).lo & PTE_PRESENT, 0);
  assert.equal(lab.usage().user, used);
  lab.mprotect(pid, area, 2 * 4096, PROT_READ);
  assert.equal(lab.readU32(pid, area + 4096), (area + 4096) >>> 0);
  lab.mprotect(pid, area, 2 * 4096, PROT_NONE);
  const child = lab.fork(pid);
  assert.equal(lab.touch(child, { start: area, length: 4 }).outcome, "killed");
  lab.mprotect(pid, area, 2 * 4096, RW);
  lab.writeU32(pid, area, 9);
  assert.equal(lab.readU32(pid, area), 9);
  lab.exit(pid);
  lab.waitAll();
  assert.deepEqual(lab.usage(), { ...lab.usage(), tables: 0, user: 0, tasks: 0 });
});

Deno.test("GuestKernel: munmap flushes page by page up to 33 pages, all at once above", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  const area = lab.mmap(pid, 128 * 4096, RW);
  lab.touch(pid, { start: area, length: 128 * 4096, kind: "write" });
  // 8 pages from the middle: the leaf table stays (the area's rest still uses it).
  const small = delta(lab, () => lab.munmap(pid, area + 16 * 4096, 8 * 4096));
  assert.equal(small("guest.pte.clear"), 8);
  assert.equal(small("tlb.flush.invlpg"), 8);
  assert.equal(small("guest.tlbFlush.all"), 0);
  const large = delta(lab, () => lab.munmap(pid, area + 32 * 4096, 40 * 4096));
  assert.equal(large("guest.pte.clear"), 40);
  assert.equal(large("tlb.flush.invlpg"), 0);
  assert.equal(large("guest.tlbFlush.all"), 1);
  assert.equal(lab.touch(pid, { start: area + 20 * 4096, length: 4 }).outcome, "killed");
});

Deno.test("GuestKernel: munmap of a whole area frees its page tables; a table frame becomes data", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  lab.writeU32(pid, DATA, 1); // the low tables exist
  const before = lab.usage().tables;
  const area = lab.mmap(pid, 4096, RW);
  lab.writeU32(pid, area, 1);
  assert.equal(lab.usage().tables - before, 3); // mmap areas live under a fresh L3, L2, L1
  const use = lab.kernel.frames.use;
  const tableFrames = new Set([...use.keys()].filter((gfn) => use[gfn] === FRAME_USE_TABLE));
  lab.munmap(pid, area, 4096);
  assert.equal(lab.usage().tables, before);
  assert.equal(lab.usage().user, 1);
  // LIFO reuse: the next page handed out is the last frame freed, a former page table.
  lab.writeU32(pid, DATA + 4096, 2);
  const leaf = leafOf(lab, pid, DATA + 4096);
  const gfn = pteAddress(leaf.lo, leaf.hi) / 4096;
  assert.ok(tableFrames.has(gfn), `frame ${gfn} was not a table`);
  assert.equal(use[gfn], FRAME_USE_USER);
  assert.equal(lab.readU32(pid, DATA + 4096), 2);
  assert.equal(lab.readU32(pid, DATA + 4100), 0); // cleared before use: no stale entries
});

Deno.test("GuestKernel: brk grows the heap and shrinking unmaps", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  const start = lab.brk(pid, 0);
  assert.equal(lab.brk(pid, start + 3 * 4096 + 5), start + 3 * 4096 + 5);
  lab.touch(pid, { start, length: 4 * 4096, kind: "write" });
  assert.equal(lab.readU32(pid, start + 3 * 4096), (start + 3 * 4096) >>> 0);
  assert.equal(lab.brk(pid, start + 4096), start + 4096);
  assert.equal(lab.touch(pid, { start: start + 2 * 4096, length: 4 }).outcome, "killed");
});

Deno.test("Lab.touch(): a range beyond the 48-bit linear space is a RangeError", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  assert.throws(
    () => lab.touch(pid, { start: 2 ** 48 - 4, length: 8 }),
    /within the 48-bit linear space/,
  );
  // The top of the canonical upper half is the kernel's: a user touch there is SIGSEGV.
  assert.equal(lab.touch(pid, { start: 2 ** 48 - 4, length: 4 }).outcome, "killed");
});

Deno.test("GuestKernel: a shared mapping is shared across fork; a private one is not", () => {
  const lab = createLab({ memoryMiB: 16 });
  const parent = lab.spawn();
  const shared = lab.mmap(parent, 2 * 4096, RW, { shared: true });
  const priv = lab.mmap(parent, 4096, RW);
  lab.writeU32(parent, shared, 1);
  lab.writeU32(parent, priv, 1);
  const child = lab.fork(parent);
  lab.writeU32(child, shared, 2);
  lab.writeU32(child, shared + 4096, 3); // not faulted in by the parent before the fork
  lab.writeU32(child, priv, 2);
  assert.equal(lab.readU32(parent, shared), 2);
  assert.equal(lab.readU32(parent, shared + 4096), 3);
  assert.equal(lab.readU32(parent, priv), 1);
  lab.exit(parent);
  assert.equal(lab.readU32(child, shared + 4096), 3);
  lab.exit(child);
  lab.waitAll();
  assert.deepEqual(lab.usage(), { ...lab.usage(), tables: 0, user: 0, tasks: 0 });
});

Deno.test("GuestKernel: under memory pressure pages go to swap and come back with their values", () => {
  const lab = createLab({ memoryMiB: 4, seed: 3 });
  const parent = lab.spawn();
  const size = 6 * 1024 * 1024; // 1536 pages in 1024 frames
  const area = lab.mmap(parent, size, RW);
  assert.equal(lab.touch(parent, { start: area, length: size, kind: "write" }).outcome, "done");
  assert.ok(lab.stats.get("guest.swapOut") > 0);
  const child = lab.fork(parent);
  lab.writeU32(child, area, 0xc0ffee);
  for (let va = area; va < area + size; va += 64 * 1024) {
    assert.equal(lab.readU32(parent, va), va >>> 0);
    assert.equal(lab.readU32(child, va), va === area ? 0xc0ffee : va >>> 0);
  }
  assert.ok(lab.stats.get("guest.fault.swapIn") > 0);
  lab.exit(child);
  lab.exit(parent);
  lab.waitAll();
  assert.deepEqual(lab.usage(), { ...lab.usage(), tables: 0, user: 0, tasks: 0, swapSlots: 0 });
  assert.equal(lab.crashReason, "");
});

Deno.test("GuestKernel: with PCIDs a switch back keeps the TLB (CR3 bit 63), without it flushes", () => {
  for (const pcid of [false, true]) {
    const lab = createLab({ memoryMiB: 16, pcid });
    const a = lab.spawn();
    const b = lab.spawn();
    lab.touch(a, { start: DATA, length: 8 * 4096, kind: "write" });
    lab.touch(b, { start: DATA, length: 8 * 4096, kind: "write" });
    const count = delta(lab, () => {
      lab.touch(a, { start: DATA, length: 8 * 4096 });
      lab.touch(b, { start: DATA, length: 8 * 4096 });
    });
    assert.equal(count("cpu.cr3Write"), 2);
    // Without PCIDs each switch flushes: 8 data walks per process (+ the task pages are
    // global kernel mappings and stay). With PCIDs nothing needs a walk.
    assert.equal(count("tlb.flush.cr3"), pcid ? 0 : 2);
    assert.equal(count("walk.count"), pcid ? 0 : 16);
  }
});

Deno.test("GuestKernel: exec drops the old user half; its pages read as zero afterwards", () => {
  const lab = createLab({ memoryMiB: 16 });
  const pid = lab.spawn();
  lab.writeU32(pid, DATA, 42);
  const used = lab.usage();
  lab.exec(pid);
  assert.equal(lab.readU32(pid, DATA), 0);
  assert.equal(lab.usage().user, used.user - 1);
});

Deno.test("GuestKernel: the 2 MiB direct map runs the same work with 3-entry kernel walks", () => {
  const results = [4096, 2097152].map((size) => {
    const lab = createLab({ memoryMiB: 16, directMapPageSize: size as 4096 | 2097152 });
    const pid = lab.spawn();
    const child = lab.fork(pid);
    lab.touch(child, { start: DATA, length: 16 * 4096, kind: "write" });
    return { refs3: lab.stats.get("walk.refsHist.3"), value: lab.readU32(child, DATA + 4096) };
  });
  assert.equal(results[0]!.refs3, 0);
  assert.ok(results[1]!.refs3 > 0);
  assert.equal(results[0]!.value, results[1]!.value);
});

Deno.test("GuestKernel: same seed, same counters (a random workload run twice)", () => {
  const run = () => {
    const lab = createLab({ memoryMiB: 8, seed: 42 });
    const pid = lab.spawn();
    const area = lab.mmap(pid, 1024 * 1024, RW);
    lab.touch(pid, {
      start: area,
      length: 1024 * 1024,
      pattern: "random",
      kind: "write",
      count: 500,
    });
    const child = lab.fork(pid);
    lab.touch(child, { start: area, length: 1024 * 1024, pattern: "working-set", count: 500 });
    return lab.stats.snapshot();
  };
  assert.deepEqual(run(), run());
});

Deno.test("GuestKernel: random process work leaks nothing: every frame and slot is free at the end", () => {
  const lab = createLab({ memoryMiB: 4, seed: 9 });
  const free = lab.usage().free;
  const prng = lab.prng;
  const live: number[] = [lab.spawn()];
  const areas = new Map<number, number[]>();
  for (let step = 0; step < 300; step++) {
    const pid = live[prng.below(live.length)]!;
    const choice = prng.below(8);
    if (choice === 0 && live.length < 6) live.push(lab.fork(pid));
    else if (choice === 1 && live.length > 1) {
      lab.exit(pid);
      live.splice(live.indexOf(pid), 1);
    } else if (choice === 2) {
      lab.exec(pid);
      areas.delete(pid);
    } else if (choice === 3) {
      const length = (1 + prng.below(64)) * 4096;
      const at = lab.mmap(pid, length, RW, { shared: prng.chance(0.3) });
      areas.set(pid, [...(areas.get(pid) ?? []), at]);
    } else if (choice === 4) {
      const mine = areas.get(pid) ?? [];
      if (mine.length > 0) lab.munmap(pid, mine[prng.below(mine.length)]!, 8 * 4096);
    } else if (choice === 5) {
      lab.brk(pid, lab.brk(pid, 0) + prng.below(32) * 4096);
    } else {
      const mine = areas.get(pid) ?? [];
      const start = mine.length > 0 ? mine[prng.below(mine.length)]! : DATA;
      const result = lab.touch(pid, {
        start,
        length: 16 * 4096,
        kind: prng.chance(0.5) ? "write" : "read",
        pattern: "random",
        count: 64,
      });
      if (result.outcome === "killed") live.splice(live.indexOf(pid), 1);
      if (live.length === 0) live.push(lab.spawn());
    }
  }
  for (const pid of live) lab.exit(pid);
  lab.waitAll();
  assert.equal(lab.crashReason, "");
  assert.deepEqual(lab.usage(), { tables: 0, user: 0, tasks: 0, swapSlots: 0, free });
});
