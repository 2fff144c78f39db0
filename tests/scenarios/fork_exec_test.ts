import assert from "node:assert/strict";
import {
  forkExecUsage,
  formatForkExecReport,
  parseForkExecArgs,
  run,
} from "../../scenarios/fork_exec.ts";

Deno.test("fork-exec run(): one fork, exec and exit per iteration; no leak, no crash", () => {
  const report = run({ iterations: 3, pages: 16, memoryMiB: 16 });
  assert.equal(report.totals["guest.fork"], 3);
  assert.equal(report.totals["guest.exec"], 3);
  assert.equal(report.totals["guest.exit"], 3);
  // Each child writes 2 random heap pages (16 / 8): at most 2 copies per iteration.
  assert.ok((report.totals["guest.cow.copy"] ?? 0) <= 6);
  assert.equal(report.totals["guest.frame.alloc"], report.totals["guest.frame.free"]);
  assert.equal(report.crash, "");
  assert.ok(report.counters.every((c) => c.total !== 0 && c.description !== ""));
});

Deno.test("fork-exec run(): the same seed gives the same counters; another seed may not", () => {
  const a = run({ iterations: 4, pages: 64, memoryMiB: 16, seed: 5 });
  const b = run({ iterations: 4, pages: 64, memoryMiB: 16, seed: 5 });
  assert.deepEqual(a.totals, b.totals);
});

Deno.test("fork-exec run(): with PCIDs, switching back to the parent needs no flush", () => {
  const plain = run({ iterations: 4, pages: 64, memoryMiB: 16 });
  const pcid = run({ iterations: 4, pages: 64, memoryMiB: 16, pcid: true });
  assert.equal(pcid.totals["cpu.cr3Write"], plain.totals["cpu.cr3Write"]);
  assert.equal(plain.totals["tlb.flush.cr3"], plain.totals["cpu.cr3Write"]);
  // Per iteration: to the kernel's space (PCID 0, no flush) and back to the parent (its
  // PCID still current, no flush), except where the 6 PCIDs wrapped around.
  assert.ok((pcid.totals["tlb.flush.cr3"] ?? 0) < (plain.totals["tlb.flush.cr3"] ?? 0));
  assert.equal(pcid.totals["guest.fork"], plain.totals["guest.fork"]);
});

Deno.test("parseForkExecArgs(): options, help, and errors that name the valid choices", () => {
  assert.equal(parseForkExecArgs(["--help"]), "help");
  assert.deepEqual(parseForkExecArgs(["--seed", "0x10", "--pcid", "--memory", "32"]), {
    json: false,
    options: { seed: 16, pcid: true, memoryMiB: 32 },
  });
  assert.throws(() => parseForkExecArgs(["--iterations", "0"]), /must be an integer 1\.\.1000000/);
  assert.throws(() => parseForkExecArgs(["--platform", "pv"]), /available are native/);
  assert.throws(() => parseForkExecArgs(["--bogus"]), /Valid options: --platform/);
});

Deno.test("formatForkExecReport(): a header, one aligned row per counter, no colour codes", () => {
  const report = run({ iterations: 1, pages: 8, memoryMiB: 16 });
  const text = formatForkExecReport(report);
  const lines = text.split("\n");
  assert.match(lines[0]!, /^fork-exec on native: 1 iterations, parent heap 8 pages, seed 1$/);
  assert.equal(lines.length, 3 + report.counters.length);
  assert.match(text, /guest\.fork +1 +1 +processes forked/);
  assert.equal(text.includes("\x1b["), false);
  assert.match(forkExecUsage(), /--iterations <n>/);
});

Deno.test("fork_exec.ts CLI: exit 2 and a message for bad arguments, JSON for --json", async () => {
  const script = new URL("../../scenarios/fork_exec.ts", import.meta.url).pathname;
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", script, "--pages", "0"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(bad.code, 2);
  assert.match(
    new TextDecoder().decode(bad.stderr),
    /Invalid --pages "0": must be an integer 1\.\.1048576/,
  );
  const good = await new Deno.Command(Deno.execPath(), {
    args: ["run", script, "--iterations", "1", "--pages", "4", "--memory", "8", "--json"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(good.code, 0);
  const report = JSON.parse(new TextDecoder().decode(good.stdout));
  assert.equal(report.totals["guest.fork"], 1);
});
