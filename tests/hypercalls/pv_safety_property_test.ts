/**
 * Invariant 4 of DESIGN.md under random input: whatever sequence of hypercalls a guest
 * makes (random entries, frames, flags, commands, pins, base pointers, flushes, batches),
 * no frame typed L1..L4 is mapped writable (by an entry or a TLB entry), every mapped
 * frame is the domain's, and every type and reference count equals the references that
 * exist. Checked from scratch after every call; the domain's death then frees every
 * frame. A second property runs random kernel workloads on `pv` with the checker after
 * every lab call.
 */

import assert from "node:assert/strict";
import { Prng } from "../../lib/x86/prng.ts";
import { DIRECT_MAP_BASE, PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import { createLab } from "../../lib/lab/lab.ts";
import {
  DOMID_IO,
  DOMID_SELF,
  MMUEXT_INVLPG_LOCAL,
  MMUEXT_NEW_BASEPTR,
  MMUEXT_PIN_L1_TABLE,
  MMUEXT_TLB_FLUSH_LOCAL,
  MMUEXT_UNPIN_TABLE,
  UVMF_INVLPG,
  UVMF_TLB_FLUSH,
} from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { bootPvGuest, HEAP, pte, type PvGuest, walkMachine } from "./_pv_fixture.ts";

const FLAG_BITS = [0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200];

/** A random machine frame, biased toward the ones that matter. */
function randomFrame(g: PvGuest, prng: Prng): number {
  const d = g.d;
  const r = prng.below(10);
  if (r < 3) {
    // A frame in use as a table (found by scanning from a random start).
    const n = d.frames.frameCount;
    const start = prng.below(n);
    for (let k = 0; k < n; k++) {
      const mfn = (start + k) % n;
      if (d.frames.owner[mfn] === d.id && d.types.isPageTable(mfn)) return mfn;
    }
  }
  if (r < 7) return g.platform.p2mList[prng.below(g.platform.guestFrames)]!;
  if (r === 7) return g.platform.neighbourFrames[prng.below(g.platform.neighbourFrames.length)]!;
  if (r === 8) return prng.below(70); // Xen's own frames, mostly
  return g.platform.deviceMfn + prng.below(3); // the device, or I/O memory beyond it
}

/** A random entry address: the process's walk of the heap, or an entry of a random frame. */
function randomEntry(g: PvGuest, prng: Prng): number {
  if (prng.chance(0.5)) {
    const walk = walkMachine(g.d, HEAP + prng.below(32) * 4096);
    const level = 1 + prng.below(4);
    const at = walk.entry[level]!;
    if (walk.table[level]! >= 0) return at + (prng.chance(0.5) ? 0 : prng.below(8) * 8);
  }
  return randomFrame(g, prng) * 4096 + prng.below(512) * 8;
}

function randomValue(g: PvGuest, prng: Prng): [number, number] {
  if (prng.chance(0.1)) return [0, 0];
  let flags = 0x1;
  for (const bit of FLAG_BITS) if (prng.chance(0.3)) flags |= bit;
  if (prng.chance(0.05)) flags &= ~0x1;
  const [lo, hi] = pte(randomFrame(g, prng), flags & 0xfff, prng.chance(0.3));
  return [lo, prng.chance(0.05) ? (hi | (prng.nextU32() & 0x7ff00000)) >>> 0 : hi];
}

/** One random hypercall. */
function randomCall(g: PvGuest, prng: Prng): void {
  const hostile = g.hostile;
  switch (prng.below(9)) {
    case 0:
    case 1:
    case 2: {
      const requests = [];
      for (let i = 1 + prng.below(3); i > 0; i--) {
        const [lo, hi] = randomValue(g, prng);
        const cmd = prng.chance(0.9) ? prng.below(3) : prng.below(8);
        requests.push({ ma: randomEntry(g, prng), cmd, lo, hi });
      }
      const domid = prng.chance(0.9) ? DOMID_SELF : prng.chance(0.5) ? DOMID_IO : prng.below(4);
      hostile.mmuUpdate(requests, domid);
      return;
    }
    case 3: {
      const level = prng.below(4);
      hostile.mmuextOp([{ cmd: MMUEXT_PIN_L1_TABLE + level, arg1: randomFrame(g, prng) }]);
      return;
    }
    case 4:
      hostile.mmuextOp([{ cmd: MMUEXT_UNPIN_TABLE, arg1: randomFrame(g, prng) }]);
      return;
    case 5: {
      // A direct-map page (or a heap page) remapped with a random value.
      const va = prng.chance(0.7)
        ? DIRECT_MAP_BASE + prng.below(g.platform.guestFrames) * 4096
        : HEAP + prng.below(32) * 4096;
      const [lo, hi] = randomValue(g, prng);
      hostile.updateVaMapping(va, lo, hi, prng.chance(0.5) ? UVMF_INVLPG : UVMF_TLB_FLUSH);
      return;
    }
    case 6:
      hostile.mmuextOp([
        prng.chance(0.5)
          ? { cmd: MMUEXT_TLB_FLUSH_LOCAL }
          : { cmd: MMUEXT_INVLPG_LOCAL, arg1: HEAP + prng.below(16) * 4096 },
      ]);
      return;
    case 7: {
      // Rarely a new base pointer: mostly one of the live top levels.
      if (!prng.chance(0.2)) return;
      const mfn = prng.chance(0.7) ? g.d.guestTable : randomFrame(g, prng);
      hostile.mmuextOp([{ cmd: MMUEXT_NEW_BASEPTR, arg1: mfn }]);
      return;
    }
    default: {
      const requests = [];
      for (let i = 1 + prng.below(3); i > 0; i--) {
        const [lo, hi] = randomValue(g, prng);
        requests.push({ ma: randomEntry(g, prng), lo, hi });
      }
      hostile.multicallMmuUpdates(requests);
    }
  }
}

for (const seed of [1, 2, 3, 4, 5, 6]) {
  Deno.test(`PV safety holds after every one of 400 random hypercalls (seed ${seed})`, () => {
    const g = bootPvGuest();
    const prng = new Prng(seed);
    let accepted = 0;
    for (let step = 0; step < 400 && g.platform.crashReason === ""; step++) {
      const rejected = g.platform.stats.get("hypercall.rejected");
      randomCall(g, prng);
      if (g.platform.stats.get("hypercall.rejected") === rejected) accepted++;
      const problems = checkPvSafety(g.d);
      assert.deepEqual(problems, [], `after step ${step}`);
    }
    assert.ok(accepted > 20, `only ${accepted} calls were accepted`);
    assert.ok(g.platform.stats.get("hypercall.rejected") > 50);
    const { leaked } = g.platform.destroyDomain();
    assert.equal(leaked, 0);
  });
}

Deno.test("PV safety holds after every lab call of random kernel workloads", () => {
  for (const seed of [1, 2, 3]) {
    const lab = createLab({ platform: "pv", memoryMiB: 4, seed, check: true });
    const prng = new Prng(seed);
    const live: number[] = [lab.spawn()];
    for (let step = 0; step < 60; step++) {
      const pid = live[prng.below(live.length)]!;
      const r = prng.below(6);
      if (r === 0 && live.length < 4) live.push(lab.fork(pid));
      else if (r === 1 && live.length > 1) {
        lab.exit(pid);
        live.splice(live.indexOf(pid), 1);
        lab.waitAll();
      } else if (r === 2) {
        const area = lab.mmap(pid, 8 * 4096, PROT_READ | PROT_WRITE);
        lab.touch(pid, { start: area, length: 8 * 4096, kind: "write", pattern: "random" });
        if (prng.chance(0.5)) lab.munmap(pid, area, 4 * 4096);
      } else if (r === 3) lab.exec(pid);
      else lab.touch(pid, { start: 0x600000, length: 16 * 4096, kind: "write", pattern: "random" });
    }
    assert.equal(lab.crashReason, "");
    assert.deepEqual(lab.platform.checkInvariants?.(), []);
  }
});
