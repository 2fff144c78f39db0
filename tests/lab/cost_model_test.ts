import assert from "node:assert/strict";
import {
  CPU_PROFILES,
  cpuProfile,
  DEFAULT_CPU_PROFILE,
  estimateCycles,
} from "../../lib/lab/cost_model.ts";
import { findCounter } from "../../lib/x86/stats.ts";
import "../../mod.ts"; // every layer's counters

Deno.test("cost model: every priced counter is declared, every price has a source", () => {
  for (const profile of CPU_PROFILES) {
    for (const entry of profile.costs) {
      assert.ok(findCounter(entry.counter) !== undefined, `${profile.name}: ${entry.counter}`);
      assert.ok(entry.cycles >= 0 && Number.isFinite(entry.cycles), `${entry.counter}`);
      assert.ok(entry.source.length > 10, `${entry.counter} has no source`);
    }
    const names = profile.costs.map((c) => c.counter);
    assert.equal(new Set(names).size, names.length, `${profile.name} prices a counter twice`);
  }
  assert.ok(CPU_PROFILES.some((p) => p.name === DEFAULT_CPU_PROFILE));
});

Deno.test("cost model: the P4 profile reproduces Adams & Agesen's per-event totals", () => {
  const price = (counts: Record<string, number>) => estimateCycles(counts, "p4_2006").total;
  // An emulated PTE write rides on one exit: 12,733 cycles in all (ptemod under VT).
  assert.equal(price({ "exit.total": 1, "emulate.ptWrite": 1 }), 12733);
  // A true fault reflected by the VMM: native 1,093 + 10,149 = 11,242 (pgfault under VT).
  assert.equal(price({ "exit.total": 1, "fault.genuine": 1, "guest.fault": 1 }), 11242);
  // A hidden fault is assumed to cost what a reflected fault's intercept costs.
  assert.equal(price({ "exit.total": 1, "fault.hidden": 1 }), 10149);
});

Deno.test("estimateCycles(): unpriced counters cost nothing; parts add up; bad profile throws", () => {
  const estimate = estimateCycles(
    { "cpu.read": 10, "guest.fork": 3, "walk.refs": 4 },
    "nehalem2009",
  );
  assert.deepEqual(estimate.parts.map((p) => p.counter), ["cpu.read", "walk.refs"]);
  assert.equal(estimate.total, estimate.parts.reduce((sum, p) => sum + p.cycles, 0));
  assert.equal(estimate.total, 10 + 4 * 20);
  assert.throws(
    () => cpuProfile("pentium"),
    /valid profiles are p4_2006, nehalem2009, sandybridge2011/,
  );
});

Deno.test("cost model: the CPU-virtualization events (issue 9) on the P4 profile", () => {
  const price = (counts: Record<string, number>) => estimateCycles(counts, "p4_2006").total;
  // An I/O exit emulated inside the hypervisor costs `in` port 0x80 under VT: 15,826.
  assert.equal(price({ "exit.total": 1, "exit.io": 1 }), 15826);
  // One forwarded to the device model adds the round trip through dom0:
  // 2 PV transitions (1,570) + 2 process switches (1,850).
  assert.equal(price({ "hvm.ioreq": 1 }), 2 * 1570 + 2 * 1850);
  // HLT, external-interrupt and interrupt-window exits cost what any simple exit costs.
  for (const reason of ["exit.hlt", "exit.externalInterrupt", "exit.interruptWindow"]) {
    assert.equal(price({ "exit.total": 1, [reason]: 1 }), 4340 + 2904.5, reason);
  }
  // A classic monitor's trap: a native fault round trip (divzero, 889) + a simple handler.
  assert.equal(price({ "classic.trap": 1 }), 889 + 2904.5);
  // Every classic trap is also in exit.total: it is priced as a trap instead of a VMX
  // round trip, and the exits of a VT-x platform in the same counts keep their price.
  assert.equal(price({ "exit.total": 3, "classic.trap": 3 }), 3 * (889 + 2904.5));
  assert.equal(
    price({ "exit.total": 5, "classic.trap": 3 }),
    3 * (889 + 2904.5) + 2 * (4340 + 2904.5),
  );
  // Xen PV: a bounced system call or event upcall is one transition; an emulated IN/OUT
  // is a transition plus the decode and emulation.
  assert.equal(price({ "pv.bounce.syscall": 1 }), 1570);
  assert.equal(price({ "pv.eventUpcall": 1 }), 1570);
  assert.equal(price({ "pv.emulatedPrivOp": 1 }), 1570 + 2904.5);
  // The report names every priced counter that occurred, zero-priced ones included.
  const estimate = estimateCycles({ "exit.total": 2, "exit.hlt": 1, "exit.io": 1 }, "p4_2006");
  assert.deepEqual(estimate.parts.map((p) => [p.counter, p.each]), [
    ["exit.total", 4340 + 2904.5],
    ["exit.io", 15826 - 4340 - 2904.5],
    ["exit.hlt", 0],
  ]);
  for (const profile of CPU_PROFILES) {
    const names = profile.costs.map((c) => c.counter);
    for (const counter of ["exit.io", "hvm.ioreq", "classic.trap", "pv.emulatedPrivOp"]) {
      assert.ok(names.includes(counter), `${profile.name} prices ${counter}`);
    }
  }
});
