/**
 * Out-of-sync L1 shadows (issue 5): hand-worked counts of unsync/resync against
 * emulation, the resync points, eviction from the bounded list, and random runs with the
 * consistency checker after every resync.
 */

import assert from "node:assert/strict";
import { createLab, type Lab } from "../../lib/lab/lab.ts";
import { PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import { checkShadows } from "../../lib/shadow/check_shadows.ts";
import { OOS_RESYNC_CR3 } from "../../lib/shadow/shadow_mmu.ts";
import { HvmShadowPlatform } from "../../lib/platform/hvm_shadow.ts";
import { PTE_ACCESSED, PTE_PRESENT, PTE_USER, pteHigh, pteLow } from "../../lib/x86/pte.ts";
import { Stats } from "../../lib/x86/stats.ts";

const RW = PROT_READ | PROT_WRITE;
const AREA = 0x4000_0000; // 2 MiB aligned: one L1 table maps the whole area

function shadowOf(lab: Lab): HvmShadowPlatform {
  assert.ok(lab.platform instanceof HvmShadowPlatform);
  return lab.platform;
}

function delta(lab: Lab, work: () => void): (name: string) => number {
  const before = lab.stats.snapshot();
  work();
  const diff = Stats.diff(before, lab.stats.snapshot());
  return (name) => diff[name] ?? 0;
}

/** A process whose area's L1 is shadowed; returns the L1's guest-physical address. */
function setUp(oos: boolean, oosPages = 3): { lab: Lab; pid: number; l1: number } {
  const lab = createLab({ platform: "hvm-shadow", memoryMiB: 16, oos, oosPages });
  const pid = lab.spawn();
  lab.mmap(pid, 2 * 1024 * 1024, RW, { fixed: AREA });
  lab.writeU32(pid, AREA, 1); // fills the shadow path: the area's L1 is now a shadowed table
  return { lab, pid, l1: lab.kernel.leafEntryAddress(pid, AREA) };
}

/** Entries that map the zero page read-only: valid for the kernel, readable as zeros. */
function zeroEntry(lab: Lab): [number, number] {
  const zero = lab.kernel.zeroPageGfn * 4096;
  return [pteLow(zero, PTE_PRESENT | PTE_USER | PTE_ACCESSED), pteHigh(zero, true)];
}

Deno.test("OOS: 511 writes to one L1 cost one unsync and one resync instead of 511 emulations", () => {
  for (const oos of [false, true]) {
    const { lab, pid, l1 } = setUp(oos);
    const [lo, hi] = zeroEntry(lab);
    const writes = delta(lab, () => {
      for (let i = 1; i < 512; i++) lab.kernel.ops.setEntry(1, l1 + 8 * i, lo, hi);
    });
    if (!oos) {
      // Every `mov [rdi], rsi` to the write-protected table exits and is emulated.
      assert.equal(writes("exit.pf"), 511);
      assert.equal(writes("emulate.ptWrite"), 511);
      assert.equal(writes("oos.unsync"), 0);
    } else {
      // The first write exits once and unsyncs the table; the other 510 run natively.
      assert.equal(writes("exit.pf"), 1);
      assert.equal(writes("emulate.ptWrite"), 0);
      assert.equal(writes("oos.unsync"), 1);
      assert.equal(writes("oos.resync"), 0);
      assert.equal(writes("oos.snapshotBytes"), 4096);
    }
    // The guest's flush (mov rax, cr3; mov cr3, rax) is a resync point.
    const flush = delta(lab, () => lab.kernel.ops.flushAll());
    assert.equal(flush("exit.cr3"), 1);
    assert.equal(flush("oos.resync"), oos ? 1 : 0);
    assert.equal(flush("oos.resync.cr3"), oos ? 1 : 0);
    assert.equal(flush("oos.resyncEntriesChanged"), oos ? 511 : 0);
    assert.equal(flush("oos.snapshotBytes"), 0);
    assert.deepEqual(checkShadows(shadowOf(lab).mmu), []);
    // Both ways the guest sees its new entries: zeros through the zero page.
    assert.equal(lab.readU32(pid, AREA + 5 * 4096), 0);
    assert.equal(lab.readU32(pid, AREA), 1);
  }
});

Deno.test("OOS: a context switch to another process resyncs", () => {
  const { lab, pid, l1 } = setUp(true);
  const other = lab.spawn();
  const [lo, hi] = zeroEntry(lab);
  lab.kernel.ops.setEntry(1, l1 + 8, lo, hi);
  assert.deepEqual(shadowOf(lab).mmu.outOfSyncFrames(), [Math.floor(l1 / 4096)]);
  const sw = delta(lab, () => lab.touch(other, { start: 0x600000, length: 4 }));
  assert.equal(sw("oos.resync.cr3"), 1);
  assert.deepEqual(shadowOf(lab).mmu.outOfSyncFrames(), []);
  assert.equal(lab.readU32(pid, AREA + 4096), 0);
});

Deno.test("OOS: the list holds 3 tables; a 4th unsync evicts and resyncs the oldest", () => {
  const { lab, pid } = setUp(true);
  const mmu = shadowOf(lab).mmu;
  const [lo, hi] = zeroEntry(lab);
  const tables: number[] = [];
  for (let k = 0; k < 4; k++) {
    const va = AREA + (k + 1) * 2 * 1024 * 1024; // a new L1 for each area
    lab.mmap(pid, 4096, RW, { fixed: va });
    lab.writeU32(pid, va, k);
    const l1 = lab.kernel.leafEntryAddress(pid, va);
    tables.push(Math.floor(l1 / 4096));
    const step = delta(lab, () => lab.kernel.ops.setEntry(1, l1 + 8, lo, hi));
    assert.equal(step("oos.unsync"), 1);
    assert.equal(step("oos.evict"), k === 3 ? 1 : 0);
    assert.equal(step("oos.resync.evict"), k === 3 ? 1 : 0);
  }
  assert.deepEqual(mmu.outOfSyncFrames(), tables.slice(1));
  assert.equal(lab.stats.get("oos.snapshotBytesPeak"), 3 * 4096);
});

Deno.test("OOS: INVLPG refreshes the one entry and keeps the table out of sync", () => {
  const { lab, pid, l1 } = setUp(true);
  lab.writeU32(pid, AREA + 4096, 2);
  const [lo, hi] = zeroEntry(lab);
  lab.kernel.ops.setEntry(1, l1 + 8, lo, hi); // unsync; the page at AREA + 4096 changes
  const step = delta(lab, () => lab.kernel.ops.flushOne(AREA + 4096));
  assert.equal(step("exit.invlpg"), 1);
  assert.equal(step("oos.invlpgFix"), 1);
  assert.equal(step("oos.resync"), 0);
  assert.deepEqual(shadowOf(lab).mmu.outOfSyncFrames(), [Math.floor(l1 / 4096)]);
  assert.equal(lab.readU32(pid, AREA + 4096), 0); // the new mapping, at once
});

Deno.test("OOS: fork-heavy work takes fewer VM exits with OOS on, same guest outcome", () => {
  const run = (oos: boolean) => {
    const lab = createLab({ platform: "hvm-shadow", memoryMiB: 32, oos, recordFaults: true });
    const parent = lab.spawn();
    const heap = lab.mmap(parent, 256 * 4096, RW);
    lab.touch(parent, { start: heap, length: 256 * 4096, kind: "write" });
    const cost = delta(lab, () => {
      for (let i = 0; i < 6; i++) {
        const child = lab.fork(parent);
        lab.touch(child, { start: heap, length: 256 * 4096, kind: "write", count: 32 });
        lab.exec(child);
        lab.exit(child);
        lab.wait(child, parent);
      }
    });
    return { exits: cost("exit.total"), emulated: cost("emulate.ptWrite"), faults: lab.faults };
  };
  const off = run(false);
  const on = run(true);
  assert.ok(on.exits < off.exits, `${on.exits} exits with OOS, ${off.exits} without`);
  assert.ok(on.emulated < off.emulated / 4);
  assert.deepEqual(on.faults, off.faults);
});

Deno.test("OOS: random work keeps the shadows sound at every step and after every resync", () => {
  const lab = createLab({ platform: "hvm-shadow", memoryMiB: 6, seed: 21, oos: true });
  const mmu = shadowOf(lab).mmu;
  const prng = lab.prng;
  const live = [lab.spawn()];
  for (let step = 0; step < 150; step++) {
    const pid = live[prng.below(live.length)]!;
    const choice = prng.below(6);
    if (choice === 0 && live.length < 4) live.push(lab.fork(pid));
    else if (choice === 1 && live.length > 1) {
      lab.exit(pid);
      live.splice(live.indexOf(pid), 1);
    } else if (choice === 2) {
      const area = lab.mmap(pid, (1 + prng.below(48)) * 4096, RW);
      lab.touch(pid, { start: area, length: 4096, kind: "write" });
      if (prng.chance(0.5)) lab.munmap(pid, area, 4096);
    } else {
      lab.touch(pid, {
        start: 0x600000,
        length: 16 * 4096,
        kind: prng.chance(0.5) ? "write" : "read",
        pattern: "random",
        count: 32,
      });
    }
    assert.deepEqual(checkShadows(mmu), [], `step ${step}`);
    if (step % 10 === 9) {
      mmu.resyncAll(OOS_RESYNC_CR3);
      assert.deepEqual(checkShadows(mmu), [], `after resync at step ${step}`);
    }
  }
  assert.ok(lab.stats.get("oos.unsync") > 0);
  assert.equal(lab.crashReason, "");
});
