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
