/**
 * Paper checks (../shared/research/calibration.md §8): the lab must reproduce the
 * ordering of published results. Counts are exact and cycles are estimated from them, so
 * the checks assert orderings and the structural counts the papers state, not absolute
 * ratios: the lab's guest does only the memory-management part of each call natively
 * (no file system, libc or scheduler work), which makes every virtualization overhead
 * relative to native larger than the papers' (see the README's cost model).
 *
 * Checks for platforms this build does not have are skipped by name. C1's bands (PV fork
 * 1.4-2.3x native ...) are not asserted: with the lab's cheaper native calls the PV ratios
 * come out higher (4-5x on fork); their orderings against HVM-shadow (C4) and the structural
 * counts (C2, C3) are.
 */

import assert from "node:assert/strict";
import { AVAILABLE_PLATFORMS, createLab, runComparison } from "../../lib/lab/mod.ts";
import { SCENARIOS } from "../../scenarios/compare.ts";

const has = (platform: string) => (AVAILABLE_PLATFORMS as readonly string[]).includes(platform);
const pick = (...names: string[]) => SCENARIOS.filter((s) => names.includes(s.name));

function overheads(names: string[], modes: string[], profile: string) {
  const result = runComparison({ scenarios: pick(...names), modes, profile, seed: 1 });
  const table: Record<string, Record<string, number>> = {};
  for (const s of result.scenarios) {
    table[s.name] = Object.fromEntries(
      Object.entries(s.results).map(([mode, run]) => [mode, run.estimatedCycles]),
    );
  }
  return { table, result };
}

Deno.test("C4 (Barham 2003, Adams & Agesen 2006): native < PV < HVM-shadow on fork, exec and page faults", () => {
  const modes = ["native", ...(has("pv") ? ["pv"] : []), "hvm-shadow"];
  const { table } = overheads(["fork-exit", "fork-exec", "pagefault"], modes, "p4_2006");
  for (const [name, cycles] of Object.entries(table)) {
    for (let i = 1; i < modes.length; i++) {
      assert.ok(
        cycles[modes[i - 1]!]! < cycles[modes[i]!]!,
        `${name}: ${modes[i - 1]} ${cycles[modes[i - 1]!]} should be below ${modes[i]} ${
          cycles[modes[i]!]
        }`,
      );
    }
  }
});

Deno.test("Adams & Agesen 2006: under VT shadow paging a PTE write costs ~10^4 cycles, a native one ~1", () => {
  const { result } = overheads(["ptemod"], ["native", "hvm-shadow"], "p4_2006");
  const runs = result.scenarios[0]!.results;
  const ops = result.scenarios[0]!.operations;
  const native = runs["native"]!.estimatedCycles / ops;
  const shadow = runs["hvm-shadow"]!.estimatedCycles / ops;
  // Each toggle: the PTE change is emulated (12,733 cycles with its exit) and the guest's
  // INVLPG exits too; natively it is a few hundred cycles of kernel work.
  assert.ok(shadow > 10_000 && shadow < 60_000, `${shadow} cycles per toggle under VT`);
  assert.ok(native < 1_000, `${native} cycles per toggle natively`);
});

Deno.test({
  name:
    "Xen OOS (Guida 2008): out-of-sync L1s cut exits on fork-heavy work; Shadow-1's loss on spread writes",
  fn() {
    const { result } = overheads(
      ["fork-exit", "kbuild", "pte-spread"],
      ["hvm-shadow", "hvm-shadow+oos"],
      "nehalem2009",
    );
    const byName = Object.fromEntries(result.scenarios.map((s) => [s.name, s.results]));
    for (const name of ["fork-exit", "kbuild"]) {
      const off = byName[name]!["hvm-shadow"]!;
      const on = byName[name]!["hvm-shadow+oos"]!;
      assert.ok(on.counters["exit.total"]! < off.counters["exit.total"]!, name);
      const speedup = off.estimatedCycles / on.estimatedCycles;
      assert.ok(speedup > 1.05, `${name}: OOS speedup ${speedup}`); // Guida: 1.08x-1.34x
    }
    // One PTE per table before a CR3 switch: unsync + resync cost more than emulation.
    const spread = byName["pte-spread"]!;
    assert.ok(spread["hvm-shadow+oos"]!.estimatedCycles > spread["hvm-shadow"]!.estimatedCycles);
  },
});

Deno.test({
  name:
    "Bhargava 2008 / VMware EPT: nested paging wins on fork-heavy work, loses on TLB-miss-heavy work",
  ignore: !has("hvm-hap"),
  fn() {
    const { table } = overheads(
      ["fork-exit", "gups"],
      ["native", "hvm-shadow", "hvm-hap"],
      "nehalem2009",
    );
    assert.ok(table["fork-exit"]!["hvm-hap"]! < table["fork-exit"]!["hvm-shadow"]!);
    assert.ok(table["gups"]!["hvm-hap"]! > table["gups"]!["hvm-shadow"]!);
    // Shadow tables are walked like native ones: a TLB miss costs the same 4 references.
    const ratio = table["gups"]!["hvm-shadow"]! / table["gups"]!["native"]!;
    assert.ok(ratio < 1.01, `shadow/native on gups: ${ratio}`);
  },
});

Deno.test({
  name: "C2 (Barham 2003): a PV demand fault takes exactly two transitions into Xen",
  ignore: !has("pv"),
  fn() {
    // Pages 1..63 of an area whose leaf table page 0 created: each fault is one bounce
    // (the fault) and one hypercall (the PTE install), nothing else.
    const lab = createLab({ platform: "pv", memoryMiB: 16 });
    const pid = lab.spawn();
    const area = lab.mmap(pid, 64 * 4096, 3);
    lab.writeU32(pid, area, 1);
    const cost = lab.measure(() =>
      lab.touch(pid, { start: area + 4096, length: 63 * 4096, kind: "write" })
    );
    assert.equal(cost["guest.fault"], 63);
    assert.equal(cost["pv.bounce.pf"], 63);
    assert.equal(cost["hypercall.traps"], 63);
  },
});

Deno.test({
  name: "C3 (Barham 2003): a PV context switch makes exactly one page-table-base hypercall",
  ignore: !has("pv"),
  fn() {
    const lab = createLab({ platform: "pv", memoryMiB: 16 });
    const a = lab.spawn();
    const b = lab.spawn();
    lab.touch(a, { start: 0x600000, length: 4 });
    lab.touch(b, { start: 0x600000, length: 4 });
    const cost = lab.measure(() => {
      for (let i = 0; i < 10; i++) {
        lab.kernel.switchTo(a);
        lab.kernel.switchTo(b);
      }
    });
    assert.equal(cost["guest.contextSwitch"], 20);
    assert.equal(cost["hypercall.traps"], 20);
    assert.equal(cost["hypercall.mmuext_op"], 20);
  },
});
