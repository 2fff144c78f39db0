/**
 * scenarios/explain.ts: exact walks, faults and counters on the example address space,
 * and the command line (exit codes, messages, --json, --help, colour) as a user runs it.
 */

import assert from "node:assert/strict";
import {
  describeExampleAddressSpace,
  type ExplainOptions,
  type ExplainReport,
  formatExplainReport,
  type GeneralProtectionResult,
  type PageFaultResult,
  parseExplainArgs,
  run,
  type TranslatedResult,
} from "../../scenarios/explain.ts";

const root = new URL("../../", import.meta.url).pathname;

/** Runs `deno run scenarios/explain.ts ...args` with stdout and stderr piped. */
async function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "scenarios/explain.ts", ...args],
    cwd: root,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

function translated(report: ExplainReport, ordinal = 1): TranslatedResult {
  const result = report.accesses[ordinal - 1]!.result;
  assert.equal(result.outcome, "translated", JSON.stringify(result));
  return result as TranslatedResult;
}

function pageFault(report: ExplainReport, ordinal = 1): PageFaultResult {
  const result = report.accesses[ordinal - 1]!.result;
  assert.equal(result.outcome, "page-fault", JSON.stringify(result));
  return result as PageFaultResult;
}

/** The levels the first access's walk read, as `l4`, `l3`, ... */
function levelsRead(report: ExplainReport, ordinal = 1): number[] {
  return (report.accesses[ordinal - 1]!.walk ?? []).map((l) => l.level);
}

const ESC = "\x1b[";

Deno.test("run() translates a user-mode write to user-data and sets A on every level, D on the leaf", () => {
  const report = run({ address: "user-data+0x10", access: "write" });
  assert.equal(report.request.address, "0x0000000000600010");
  assert.equal(report.request.page, "user-data");
  assert.deepEqual(report.request.split, { l4: 0, l3: 0, l2: 3, l1: 0, offset: 0x10 });
  const result = translated(report);
  assert.equal(result.physicalAddress, "0x201010");
  assert.equal(result.pageBase, "0x201000");
  assert.equal(result.pageSize, 4096);
  const walk = report.accesses[0]!.walk!;
  assert.deepEqual(
    walk.map((l) => [l.entryName, l.entryAddress, l.entry, l.entryAfter, l.flags, l.next]),
    [
      ["l4e", "0x100000", "0x0000000000101007", "0x0000000000101027", "P RW US", "0x101000"],
      ["l3e", "0x101000", "0x0000000000102007", "0x0000000000102027", "P RW US", "0x102000"],
      ["l2e", "0x102018", "0x0000000000104007", "0x0000000000104027", "P RW US", "0x104000"],
      ["l1e", "0x104000", "0x8000000000201007", "0x8000000000201067", "P RW US XD", "0x201000"],
    ],
  );
  assert.deepEqual(walk.map((l) => l.adChanges.map((c) => `${c.flag} ${c.before}->${c.after}`)), [
    ["A 0->1"],
    ["A 0->1"],
    ["A 0->1"],
    ["A 0->1", "D 0->1"],
  ]);
  assert.deepEqual(walk.at(-1)!.rightsAfter, { writable: true, user: true, executeDisable: true });
  assert.deepEqual(walk[0]!.rightsAfter, { writable: true, user: true, executeDisable: false });
  assert.equal(walk.at(-1)!.isLeaf, true);
  const access = report.accesses[0]!;
  assert.equal(access.tlb.outcome, "miss");
  assert.deepEqual(access.tlb.filledEntry, {
    page: "0x0000000000600000",
    pageBase: "0x201000",
    pageSize: 4096,
    pcid: 0,
    isGlobal: false,
    rights: { writable: true, user: true, executeDisable: true },
    pkey: 0,
    isDirty: true,
  });
  const c = access.counters;
  assert.deepEqual(
    [c["walk.refs"], c["tlb.miss"], c["tlb.hit"], c["walk.adWrite"], c["tlb.fill"]],
    [4, 1, 0, 4, 1],
  );
});

Deno.test("run() explains every named page with its exact outcome", () => {
  interface Case {
    options: ExplainOptions;
    pa?: string;
    pageSize?: number;
    errorCode?: number;
    levels: number[];
    cause?: PageFaultResult["cause"];
    rules?: string[];
  }
  const cases: Case[] = [
    { options: { address: "user-code" }, pa: "0x200000", pageSize: 4096, levels: [4, 3, 2, 1] },
    { options: { address: "user-code", access: "fetch" }, pa: "0x200000", levels: [4, 3, 2, 1] },
    {
      options: { address: "user-code", access: "write" },
      errorCode: 0x7,
      levels: [4, 3, 2, 1],
      cause: "protection",
      rules: ["R/W"],
    },
    {
      options: { address: "user-data", access: "fetch" },
      errorCode: 0x15,
      levels: [4, 3, 2, 1],
      cause: "protection",
      rules: ["XD"],
    },
    {
      options: { address: "user-swapped" },
      errorCode: 0x4,
      levels: [4, 3, 2, 1],
      cause: "not-present",
    },
    {
      options: { address: "user-swapped", access: "write", cpl: 0 },
      errorCode: 0x2,
      levels: [4, 3, 2, 1],
      cause: "not-present",
    },
    {
      options: { address: "user-rsvd", cpl: 0 },
      errorCode: 0x9,
      levels: [4, 3, 2, 1],
      cause: "reserved-bit",
    },
    { options: { address: "user-rsvd" }, errorCode: 0xd, levels: [4, 3, 2, 1] },
    {
      options: { address: "user-rsvd", maxPhyAddr: 52 },
      pa: "0x8000000203000",
      pageSize: 4096,
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "user-2m+0x12345", access: "write" },
      pa: "0x2012345",
      pageSize: 0x200000,
      levels: [4, 3, 2],
    },
    { options: { address: "unmapped+0x1000" }, errorCode: 0x4, levels: [4], cause: "not-present" },
    {
      options: { address: "user-stack+0xff8", access: "write" },
      pa: "0x204ff8",
      pageSize: 4096,
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "direct-map+0x100000", cpl: 0 },
      pa: "0x100000",
      pageSize: 0x40000000,
      levels: [4, 3],
    },
    {
      options: { address: "direct-map", cpl: 0, access: "fetch" },
      errorCode: 0x11,
      levels: [4, 3],
      rules: ["XD"],
    },
    {
      options: { address: "direct-map", cpl: 0, nxe: false },
      errorCode: 0x9,
      levels: [4, 3],
      cause: "reserved-bit",
    },
    {
      options: { address: "kernel-text" },
      errorCode: 0x5,
      levels: [4, 3, 2, 1],
      cause: "protection",
      rules: ["U/S"],
    },
    {
      options: { address: "kernel-text", access: "write" },
      errorCode: 0x7,
      levels: [4, 3, 2, 1],
      rules: ["U/S", "R/W"],
    },
    {
      options: { address: "kernel-text", access: "write", cpl: 0 },
      errorCode: 0x3,
      levels: [4, 3, 2, 1],
      rules: ["WP"],
    },
    {
      options: { address: "kernel-text", access: "write", cpl: 0, wp: false },
      pa: "0x1000000",
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "kernel-text", access: "implicit-read" },
      pa: "0x1000000",
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "user-code", cpl: 0, access: "fetch", smep: true },
      errorCode: 0x11,
      levels: [4, 3, 2, 1],
      rules: ["SMEP"],
    },
    {
      options: { address: "user-data", cpl: 0, smap: true },
      errorCode: 0x1,
      levels: [4, 3, 2, 1],
      rules: ["SMAP"],
    },
    {
      options: { address: "user-data", cpl: 0, smap: true, ac: true },
      pa: "0x201000",
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "user-data", access: "implicit-write", smap: true, ac: true },
      errorCode: 0x3,
      levels: [4, 3, 2, 1],
      rules: ["SMAP"],
    },
    {
      options: { address: "user-pkey", pke: true, pkru: 0x4 },
      errorCode: 0x25,
      levels: [4, 3, 2, 1],
      rules: ["PK"],
    },
    {
      options: { address: "user-pkey", pke: true, pkru: 0x8 },
      pa: "0x202000",
      levels: [4, 3, 2, 1],
    },
    {
      options: { address: "user-pkey", pke: true, pkru: 0x8, access: "write" },
      errorCode: 0x27,
      levels: [4, 3, 2, 1],
      rules: ["PK"],
    },
    { options: { address: "user-pkey", pkru: 0x4 }, pa: "0x202000", levels: [4, 3, 2, 1] },
  ];
  for (const c of cases) {
    const label = JSON.stringify(c.options);
    const report = run(c.options);
    assert.deepEqual(levelsRead(report), c.levels, label);
    if (c.pa !== undefined) {
      const result = translated(report);
      assert.equal(result.physicalAddress, c.pa, label);
      if (c.pageSize !== undefined) assert.equal(result.pageSize, c.pageSize, label);
    } else {
      const result = pageFault(report);
      assert.equal(result.errorCode, c.errorCode, label);
      assert.equal(result.level, c.levels.at(-1), label);
      if (c.cause !== undefined) assert.equal(result.cause, c.cause, label);
      if (c.rules !== undefined) assert.deepEqual(result.rules.map((r) => r.rule), c.rules, label);
      // A failed walk sets no A/D flag and fills no TLB entry.
      for (const level of report.accesses[0]!.walk!) assert.deepEqual(level.adChanges, [], label);
      assert.equal(report.accesses[0]!.tlb.filledEntry, null, label);
      assert.equal(report.accesses[0]!.counters["walk.adWrite"], 0, label);
    }
  }
});

Deno.test("run() decodes #PF error codes into words", () => {
  assert.equal(
    pageFault(run({ address: "user-code", access: "write" })).errorCodeText,
    "0x7 = P (protection violation) | W (write) | U (user mode)",
  );
  assert.equal(
    pageFault(run({ address: "user-rsvd", cpl: 0 })).errorCodeText,
    "0x9 = P (entry present) | RSVD (reserved bit set)",
  );
  assert.equal(
    pageFault(run({ address: "user-swapped" })).errorCodeText,
    "0x4 = U (user mode); P=0: the page is not present",
  );
  assert.equal(
    pageFault(run({ address: "unmapped", cpl: 0 })).errorCodeText,
    "0x0 = no bits set; P=0: the page is not present",
  );
  const pk = pageFault(run({ address: "user-pkey", pke: true, pkru: 0x4 }));
  assert.deepEqual(pk.errorBits, ["P", "U", "PK"]);
  assert.equal(pk.cr2, "0x0000000000601000");
});

Deno.test("run() names the reserved bit and the level where the walk stopped", () => {
  const rsvd = run({ address: "user-rsvd", cpl: 0 });
  const walk = rsvd.accesses[0]!.walk!;
  assert.deepEqual(walk.at(-1)!.reservedBits, [51]);
  assert.equal(walk.at(-1)!.rightsAfter, null);
  assert.equal(walk.at(-1)!.next, null);
  assert.match(pageFault(rsvd).reason, /bit 51 is reserved .*MAXPHYADDR 46/);
  const nx = run({ address: "direct-map", cpl: 0, nxe: false });
  assert.deepEqual(nx.accesses[0]!.walk!.at(-1)!.reservedBits, [63]);
  assert.equal(pageFault(nx).level, 3);
  const swapped = pageFault(run({ address: "user-swapped" }));
  assert.match(swapped.reason, /0x8000000001234006/);
});

Deno.test("run() gives #GP(0) for a non-canonical address, with no TLB lookup and no walk", () => {
  for (const address of ["0x0000800000000000", "0xffff7fffffffffff", "0x8000000000000000"]) {
    const report = run({ address, twice: true });
    assert.equal(report.request.isCanonical, false);
    assert.equal(report.request.address, "0x" + address.slice(2).padStart(16, "0"));
    assert.equal(report.request.split, null);
    for (const access of report.accesses) {
      const result = access.result as GeneralProtectionResult;
      assert.equal(result.outcome, "general-protection");
      assert.equal(result.vector, 13);
      assert.equal(result.errorCode, 0);
      assert.equal(access.walk, null);
      assert.equal(access.tlb.outcome, "not-consulted");
      assert.equal(access.counters["cpu.gp"], 1);
      assert.equal(access.counters["walk.refs"], 0);
      assert.equal(access.counters["tlb.miss"], 0);
    }
  }
});

Deno.test("run() accepts canonical upper-half hex and finds the named page", () => {
  const report = run({ address: "0xffffffff81000123", cpl: 0 });
  assert.equal(report.request.page, "kernel-text");
  assert.equal(report.request.pageOffset, "0x123");
  assert.equal(translated(report).physicalAddress, "0x1000123");
  assert.equal(report.accesses[0]!.tlb.filledEntry!.isGlobal, true);
  assert.equal(report.accesses[0]!.tlb.filledEntry!.pcid, null);
});

Deno.test("run() with twice hits the TLB on the second access and does not walk again", () => {
  const report = run({ address: "user-data", access: "write", twice: true, pcid: 5 });
  assert.equal(report.control.cr3, "0x0000000000100005");
  assert.equal(report.control.pcide, true);
  const [first, second] = report.accesses;
  assert.equal(first!.tlb.outcome, "miss");
  assert.equal(first!.tlb.filledEntry!.pcid, 5);
  assert.equal(second!.tlb.outcome, "hit");
  assert.equal(second!.walk, null);
  assert.deepEqual(second!.tlb.hitEntry, first!.tlb.filledEntry);
  assert.equal(translated(report, 2).physicalAddress, "0x201000");
  assert.deepEqual(
    [second!.counters["tlb.hit"], second!.counters["tlb.miss"], second!.counters["walk.refs"]],
    [1, 0, 0],
  );
  assert.deepEqual(
    [report.counters["walk.refs"], report.counters["tlb.hit"], report.counters["tlb.miss"]],
    [4, 1, 1],
  );
  // The totals are the sums of the per-access deltas.
  for (const [name, total] of Object.entries(report.counters)) {
    assert.equal(first!.counters[name]! + second!.counters[name]!, total, name);
  }
});

Deno.test("run() with twice walks again when the first access faulted", () => {
  const report = run({ address: "user-code", access: "write", twice: true });
  assert.deepEqual(levelsRead(report, 2), [4, 3, 2, 1]);
  assert.equal(report.accesses[1]!.tlb.outcome, "miss");
  assert.equal(pageFault(report, 2).errorCode, 0x7);
});

Deno.test("run() reports are JSON-serialisable with no bigint and no undefined", () => {
  for (const address of ["user-data", "user-swapped", "0x0000800000000000", "direct-map"]) {
    const report = run({ address, twice: true, cpl: 0 });
    assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
  }
});

Deno.test("run() notes a PKRU without CR4.PKE and a decimal address", () => {
  const report = run({ address: "4096", pkru: 4 });
  assert.equal(report.request.address, "0x0000000000001000");
  assert.equal(report.notes.length, 2);
  assert.match(report.notes[0]!, /decimal/);
  assert.match(report.notes[1]!, /--pke/);
});

Deno.test("run() throws a RangeError for options out of range", () => {
  assert.throws(() => run({ address: "user-data", cpl: 4 }), RangeError);
  assert.throws(() => run({ address: "nope" }), /named pages: user-code/);
  assert.throws(() => run({ address: "user-data+0x1000" }), /below 0x1000/);
  assert.throws(() => run({ address: "0x1" + "0".repeat(16) }), /wider than 64 bits/);
  assert.throws(() => run({ address: "0", maxPhyAddr: 35 }), /36\.\.52/);
  assert.throws(() => run({ address: "0", pcid: 4096 }), RangeError);
});

Deno.test("parseExplainArgs() maps flags to options", () => {
  assert.deepEqual(
    parseExplainArgs([
      "--address=0x600000",
      "--access",
      "implicit-write",
      "--cpl",
      "0",
      "--no-wp",
      "--smep",
      "--smap",
      "--ac",
      "--no-nxe",
      "--pke",
      "--pkru",
      "0x55555554",
      "--pcid",
      "0x10",
      "--maxphyaddr",
      "40",
      "--twice",
      "--json",
    ]),
    {
      command: "explain",
      json: true,
      options: {
        address: "0x600000",
        access: "implicit-write",
        cpl: 0,
        pkru: 0x55555554,
        pcid: 16,
        maxPhyAddr: 40,
        wp: false,
        smep: true,
        smap: true,
        ac: true,
        nxe: false,
        pke: true,
        twice: true,
      },
    },
  );
  assert.deepEqual(parseExplainArgs(["--list"]), { command: "list", json: false });
  assert.deepEqual(parseExplainArgs(["--address", "nope", "--help"]), { command: "help" });
});

Deno.test("formatExplainReport() colours only when asked", () => {
  const report = run({ address: "user-code", access: "write", twice: true });
  const plain = formatExplainReport(report, { color: false });
  assert.ok(!plain.includes(ESC));
  assert.ok(formatExplainReport(report, { color: true }).includes(ESC));
  for (const line of plain.split("\n")) assert.ok(line.length <= 100, line);
});

Deno.test("explain --json prints the report run() returns", async () => {
  const args = ["--address", "user-2m+0x10", "--access", "write", "--cpl", "0", "--twice"];
  const out = await cli([...args, "--json"]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stderr, "");
  const expected = run({ address: "user-2m+0x10", access: "write", cpl: 0, twice: true });
  assert.deepEqual(JSON.parse(out.stdout), expected);
});

Deno.test("explain --list prints every named page; with --json the address space", async () => {
  const text = await cli(["--list"]);
  assert.equal(text.code, 0, text.stderr);
  const space = describeExampleAddressSpace();
  for (const p of space.pages) assert.ok(text.stdout.includes(p.name), p.name);
  for (const t of space.tables) assert.ok(text.stdout.includes(t.address), t.address);
  const json = await cli(["--list", "--json"]);
  assert.deepEqual(JSON.parse(json.stdout), space);
});

Deno.test("explain exits 0 for a faulting access and for a non-canonical address", async () => {
  const fault = await cli(["--address", "user-code", "--access", "write"]);
  assert.equal(fault.code, 0, fault.stderr);
  assert.match(fault.stdout, /#PF/);
  assert.match(fault.stdout, /0x7 = P \(protection violation\) \| W \(write\) \| U \(user mode\)/);
  assert.match(fault.stdout, /rule R\/W/);
  const gp = await cli(["--address", "0x0000800000000000"]);
  assert.equal(gp.code, 0, gp.stderr);
  assert.match(gp.stdout, /#GP\(0\)/);
  assert.match(gp.stdout, /not canonical/);
});

Deno.test("explain --twice shows a TLB hit and one walk", async () => {
  const out = await cli(["--address", "user-data", "--twice"]);
  assert.equal(out.code, 0, out.stderr);
  const second = out.stdout.slice(out.stdout.indexOf("Access 2 of 2"));
  assert.match(second, /TLB: hit/);
  assert.match(second, /no page walk/);
  assert.equal(out.stdout.match(/PML4\[0\]/g)?.length, 1);
});

Deno.test("explain exits 2 with a helpful message for bad arguments", async () => {
  const cases: [string[], RegExp][] = [
    [[], /Missing --address.*user-data/],
    [["--address"], /--address.*argument missing/],
    [["--address", "nope"], /Invalid --address "nope".*named pages: user-code/],
    [["--address", "user-data+0x5000"], /below 0x1000/],
    [["--address", "0x10000000000000000"], /wider than 64 bits/],
    [["--address", "0", "--access", "exec"], /Invalid --access "exec".*read, write, fetch/],
    [["--address", "0", "--cpl", "4"], /Invalid --cpl "4".*0\.\.3/],
    [["--address", "0", "--pkru", "zz"], /Invalid --pkru "zz".*0x0\.\.0xffffffff/],
    [["--address", "0", "--pcid", "4096"], /Invalid --pcid "4096".*0xfff/],
    [["--address", "0", "--maxphyaddr", "60"], /Invalid --maxphyaddr "60".*36\.\.52/],
    [["--address", "0", "--frob"], /Unknown option '--frob'.*Valid options: --address/],
    [["--address", "0", "extra"], /Unexpected argument 'extra'/],
    [["--address", "0", "--twice=yes"], /--twice/],
  ];
  for (const [args, message] of cases) {
    const out = await cli(args);
    assert.equal(out.code, 2, `${args.join(" ")}: ${out.stderr}`);
    assert.equal(out.stdout, "", args.join(" "));
    assert.match(out.stderr, message, args.join(" "));
    assert.match(out.stderr, /--help/, args.join(" "));
  }
});

Deno.test("explain --help exits 0 and mentions every option", async () => {
  const out = await cli(["--help"]);
  assert.equal(out.code, 0, out.stderr);
  const options = [
    "--address",
    "--access",
    "--cpl",
    "--wp",
    "--no-wp",
    "--smep",
    "--smap",
    "--ac",
    "--nxe",
    "--no-nxe",
    "--pke",
    "--pkru",
    "--pcid",
    "--maxphyaddr",
    "--twice",
    "--list",
    "--json",
    "--help",
  ];
  for (const option of options) assert.ok(out.stdout.includes(option), option);
  for (const p of describeExampleAddressSpace().pages) assert.ok(out.stdout.includes(p.name));
  assert.match(out.stdout, /Exit status/);
});

Deno.test("explain prints no ANSI escapes when piped or with NO_COLOR", async () => {
  const args = ["--address", "user-code", "--access", "write", "--twice"];
  for (const env of [{}, { NO_COLOR: "1" }]) {
    const out = await cli(args, env);
    assert.equal(out.code, 0, out.stderr);
    assert.ok(!out.stdout.includes(ESC), JSON.stringify(env));
  }
  const list = await cli(["--list"], { NO_COLOR: "1" });
  assert.ok(!list.stdout.includes(ESC));
});
