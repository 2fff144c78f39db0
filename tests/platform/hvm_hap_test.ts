/**
 * The `hvm-hap` platform (lib/platform/hvm_hap.ts): exits only for EPT violations and
 * misconfigurations, never for the guest's page-table writes, CR3 loads or INVLPGs; the
 * EPT built lazily from the P2M; MMIO and absent guest-physical memory emulated so the
 * guest sees what it sees natively; the TLB flushed at world switches only without VPID;
 * and the guest kernel giving the same guest-visible outcome as on native, with the walk
 * caches on or off.
 *
 * The hand-built machines have 64 guest frames, one l4 -> l3 -> l2 -> l1 chain at GPA
 * 0x1000..0x4000 covering linear [0, 2 MiB), and these pages (l1e index = va / 4096):
 *
 * | va     | GPA                  | what                                     |
 * | ------ | -------------------- | ---------------------------------------- |
 * | 0x1000 | 0x8000               | kernel text (supervisor, executable)     |
 * | 0x2000 | 0x9000               | user data                                |
 * | 0x4000 | 0x4000               | the l1 table itself (kernel read-write)  |
 * | 0x5000 | 64 * 4096 = 0x40000  | the device (the GFN right above RAM)     |
 * | 0x6000 | 0x200000             | nothing: no RAM at that GFN              |
 * | 0x7000 | -                    | mapped by the kernel text (to 0x9000)    |
 */

import assert from "node:assert/strict";
import { ACCESS_READ, ACCESS_WRITE } from "../../lib/x86/access.ts";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import { PFEC_PRESENT, PFEC_RSVD, PFEC_USER } from "../../lib/x86/paging_control.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import type { Stats } from "../../lib/x86/stats.ts";
import { VECTOR_PF } from "../../lib/x86/vcpu.ts";
import { EPT_MISCONFIG_WX, EPT_RWX } from "../../lib/x86/ept.ts";
import { type HvmHapOptions, HvmHapPlatform } from "../../lib/platform/hvm_hap.ts";
import { NativePlatform } from "../../lib/platform/native.ts";
import {
  type Platform,
  RUN_ABANDONED,
  RUN_DONE,
  TRAP_ABANDON,
} from "../../lib/platform/platform.ts";
import { createLab, type Lab, type LabOptions } from "../../lib/lab/lab.ts";
import { PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";

const FRAMES = 64;
const L4 = 0x1000;
const L3 = 0x2000;
const L2 = 0x3000;
const L1 = 0x4000;
const K_RX = PTE_PRESENT;
const K_RW = PTE_PRESENT | PTE_WRITABLE;
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const TEXT_VA = 0x1000;
const TEXT_GPA = 0x8000;
const DATA_VA = 0x2000;
const DATA_GPA = 0x9000;
const PT_VA = 0x4000;
const DEV_VA = 0x5000;
const DEV_GPA = FRAMES * PAGE_SIZE;
const HOLE_VA = 0x6000;
const HOLE_GPA = 0x200000;
const NEW_VA = 0x7000;

const RAX = 0;
const RDX = 2;
const RSI = 6;
const RDI = 7;

/** At TEXT_VA: map NEW_VA, reload CR3, INVLPG NEW_VA, return. */
const PT_CODE = [
  0x48,
  0x89,
  0x37, // mov [rdi], rsi   (rdi = the l1e of NEW_VA, through PT_VA)
  0x0f,
  0x22,
  0xd8, // mov cr3, rax     (rax = L4: a flushing reload)
  0x0f,
  0x01,
  0x3a, // invlpg [rdx]     (rdx = NEW_VA)
  0xc3, //             ret
];
/** At TEXT_VA + 0x10: read the device's counter into eax. */
const MMIO_CODE_OFFSET = 0x10;
const MMIO_CODE = [0x8b, 0x07, 0xc3]; // mov eax, [rdi]; ret

function l1eOf(va: number): number {
  return L1 + 8 * (va / PAGE_SIZE);
}

function loadBytes(platform: Platform, gpa: number, bytes: readonly number[]): void {
  for (let k = 0; k < bytes.length; k += 4) {
    const word = (bytes[k] ?? 0) | (bytes[k + 1] ?? 0) << 8 | (bytes[k + 2] ?? 0) << 16 |
      (bytes[k + 3] ?? 0) << 24;
    platform.loadGuestPhysical32(gpa + k, word >>> 0);
  }
}

/** One handler call, as recorded. */
interface Delivery {
  vector: number;
  errorCode: number;
  cr2: number;
}

/**
 * Loads the tables and code of the table above, lets `patch` change them, starts with
 * CR3 = `cr3`, and records every trap (the handler abandons the work).
 */
function build(
  platform: Platform,
  cr3 = L4,
  patch: (platform: Platform) => void = () => {},
): Delivery[] {
  platform.loadGuestPhysical32(L4, L3 | URW);
  platform.loadGuestPhysical32(L3, L2 | URW);
  platform.loadGuestPhysical32(L2, L1 | URW);
  platform.loadGuestPhysical32(l1eOf(TEXT_VA), TEXT_GPA | K_RX);
  platform.loadGuestPhysical32(l1eOf(DATA_VA), DATA_GPA | URW);
  platform.loadGuestPhysical32(l1eOf(PT_VA), L1 | K_RW);
  platform.loadGuestPhysical32(l1eOf(DEV_VA), DEV_GPA | URW);
  platform.loadGuestPhysical32(l1eOf(HOLE_VA), HOLE_GPA | URW);
  platform.loadGuestPhysical32(DATA_GPA + 0x10, 0xd00d);
  loadBytes(platform, TEXT_GPA, PT_CODE);
  loadBytes(platform, TEXT_GPA + MMIO_CODE_OFFSET, MMIO_CODE);
  patch(platform);
  platform.start(cr3, 0);
  const deliveries: Delivery[] = [];
  for (const vector of [6, 13, 14]) {
    platform.setTrapHandler(vector, (v, errorCode, cr2) => {
      deliveries.push({ vector: v, errorCode, cr2 });
      return TRAP_ABANDON;
    });
  }
  return deliveries;
}

function hap(options: Partial<HvmHapOptions> = {}): HvmHapPlatform {
  return new HvmHapPlatform({ frames: FRAMES, ...options });
}

function read(platform: Platform, va: number): number {
  assert.equal(platform.access(va, 4, ACCESS_READ, 0, 0, true), RUN_DONE);
  return platform.cpu.data;
}

function counters(stats: Stats, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, stats.get(n)]));
}

const EXITS = ["exit.total", "exit.ept_violation", "exit.ept_misconfig"] as const;

/**
 * The hand-worked run: returns every value the guest read. Exit counts are checked by
 * the callers for hvm-hap; natively the same steps give the same values.
 */
function runScenario(platform: Platform, step: (label: string) => void = () => {}): number[] {
  const values: number[] = [];
  values.push(read(platform, DATA_VA + 0x10));
  step("first data read");
  values.push(read(platform, DATA_VA + 0x10));
  step("second data read");
  const interpreter = platform.interpreter;
  interpreter.setReg(RDI, l1eOf(NEW_VA) - L1 + PT_VA);
  interpreter.setReg(RSI, DATA_GPA | URW);
  interpreter.setReg(RAX, L4);
  interpreter.setReg(RDX, NEW_VA);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  step("page-table write, CR3 load, INVLPG");
  values.push(read(platform, NEW_VA + 0x10));
  step("read through the new mapping");
  values.push(read(platform, DEV_VA), read(platform, DEV_VA));
  step("two device reads");
  values.push(read(platform, HOLE_VA));
  assert.equal(platform.access(HOLE_VA, 4, ACCESS_WRITE, 5, 0, true), RUN_DONE);
  values.push(read(platform, HOLE_VA));
  step("read, write, read where there is no memory");
  interpreter.setReg(RDI, DEV_VA);
  assert.equal(platform.execute(TEXT_VA + MMIO_CODE_OFFSET), RUN_DONE);
  values.push(interpreter.regLo(RAX));
  step("a kernel instruction reads the device");
  values.push(platform.device.counter);
  return values;
}

Deno.test("HvmHapPlatform: exits only to fill the EPT and for MMIO; none for PT writes, CR3, INVLPG", () => {
  const platform = hap();
  const deliveries = build(platform);
  const stats = platform.stats;
  const expected: Record<string, [number, number, number]> = {
    // total, violation, misconfig, cumulative. A first read walks GFN 1, 2, 3, 4 (the
    // tables) and 9 (the data): each first touch is one violation and a retry.
    "first data read": [5, 5, 0],
    "second data read": [5, 5, 0], // a TLB hit
    // The text page (GFN 8) is new; the PT write, CR3 load and INVLPG exit not at all.
    "page-table write, CR3 load, INVLPG": [6, 6, 0],
    "read through the new mapping": [6, 6, 0],
    // The device: a violation that marks it (KVM's MMIO entry), then a misconfiguration.
    "two device reads": [8, 7, 1],
    // No RAM at GFN 0x200: three violations, each emulated (reads all ones, write dropped).
    "read, write, read where there is no memory": [11, 10, 1],
    "a kernel instruction reads the device": [12, 10, 2],
  };
  const values = runScenario(platform, (label) => {
    assert.deepEqual(Object.values(counters(stats, EXITS)), expected[label], label);
  });
  assert.deepEqual(values, [0xd00d, 0xd00d, 0xd00d, 0, 1, 0xffff_ffff, 0xffff_ffff, 2, 3]);
  assert.deepEqual(deliveries, []);
  assert.deepEqual(
    counters(stats, [
      "exit.pf",
      "exit.cr3",
      "exit.invlpg",
      "emulate.ptWrite",
      "cpu.cr3Write",
      "tlb.flush.invlpg",
      "ept.map",
      "ept.mmioMark",
      "emulate.mmio",
      "emulate.unbacked",
      "tlb.flush.worldSwitch",
    ]),
    {
      "exit.pf": 0,
      "exit.cr3": 0,
      "exit.invlpg": 0,
      "emulate.ptWrite": 0,
      "cpu.cr3Write": 2, // start() and the kernel's reload
      "tlb.flush.invlpg": 1,
      "ept.map": 6, // GFN 1, 2, 3, 4, 9, 8
      "ept.mmioMark": 1,
      "emulate.mmio": 3,
      "emulate.unbacked": 3,
      "tlb.flush.worldSwitch": 0,
    },
  );
  assert.equal(platform.ept.leafLow(DEV_GPA / PAGE_SIZE), EPT_MISCONFIG_WX);
  assert.equal(platform.ept.leafLow(1) & EPT_RWX, EPT_RWX);
  assert.equal(platform.ept.leafLow(HOLE_GPA / PAGE_SIZE), 0); // nothing installed for it
  assert.equal(platform.crashReason, "");
});

Deno.test("HvmHapPlatform: the guest sees the same values and device state as natively", () => {
  const native = new NativePlatform({ frames: FRAMES });
  const nativeTraps = build(native);
  const nativeValues = runScenario(native);
  for (const options of [{}, { walkCaches: false }, { flushOnWorldSwitch: true }]) {
    const platform = hap(options);
    const traps = build(platform);
    assert.deepEqual(runScenario(platform), nativeValues, JSON.stringify(options));
    assert.deepEqual(traps, nativeTraps);
    assert.equal(platform.device.counter, native.device.counter);
    // The guest's own tables end up alike: A and D set by the walks, the kernel's l1e.
    for (const gpa of [L4, L3, L2, l1eOf(DATA_VA), l1eOf(NEW_VA), l1eOf(DEV_VA)]) {
      assert.equal(platform.peekGuestPhysical32(gpa), native.peekGuestPhysical32(gpa), `${gpa}`);
    }
  }
});

Deno.test("HvmHapPlatform: the first data read costs 51 references with walk caches, 91 without", () => {
  // Walks of the first read, each retried after an EPT fill (GFN 1, 2, 3, 4, 9):
  //   no caches: 1 (empty EPT), 4+1+4, 5+5+4, 5+5+5+4, 5*4+4, 24   = 91
  //   caches:    1, 4+1+4, 1+5+4, 1+1+5+4, 1+1+1+5+4, 1+1+1+1+4   = 51 (NTLB hits: 1 each)
  for (
    const [walkCaches, refs, hist] of [[false, 91, [1, 9, 14, 19, 24, 24]], [true, 51, [
      1,
      9,
      10,
      11,
      12,
      8,
    ]]] as const
  ) {
    const platform = hap({ walkCaches });
    build(platform);
    const before = platform.stats.snapshot();
    read(platform, DATA_VA + 0x10);
    assert.equal(platform.stats.get("walk.refs") - before["walk.refs"]!, refs);
    assert.equal(platform.stats.get("walk.count") - before["walk.count"]!, 6);
    const counts = new Map<number, number>();
    for (const n of hist) counts.set(n, (counts.get(n) ?? 0) + 1);
    for (const [n, times] of counts) {
      assert.equal(platform.stats.get(`walk.refsHist2d.${n}`), times, `${walkCaches} ${n}`);
    }
  }
});

Deno.test("HvmHapPlatform: without VPID every exit and entry flushes the TLB", () => {
  for (const options of [{ flushOnWorldSwitch: true }, { vpid: false }, {}]) {
    const platform = hap(options);
    build(platform);
    const stats = platform.stats;
    const flushes = platform.flushesOnWorldSwitch;
    assert.equal(flushes, Object.keys(options).length > 0);
    read(platform, DATA_VA); // 5 exits
    assert.equal(stats.get("tlb.flush.worldSwitch"), flushes ? 10 : 0);
    const walks = stats.get("walk.count");
    read(platform, DATA_VA); // no exit in between: a TLB hit either way
    assert.equal(stats.get("walk.count"), walks);
    read(platform, DEV_VA); // one exit (a violation, then emulation)
    assert.equal(stats.get("tlb.flush.worldSwitch"), flushes ? 12 : 0);
    const before = stats.get("walk.count");
    read(platform, DATA_VA); // the world switch took the entry with it
    assert.equal(stats.get("walk.count") - before, flushes ? 1 : 0);
    assert.equal(
      stats.get("tlb.flush.worldSwitch"),
      2 * stats.get("exit.total") * (flushes ? 1 : 0),
    );
  }
});

Deno.test("HvmHapPlatform: a CR3 or table entry at a GFN with no memory gives the native #PF (RSVD)", () => {
  const bad = 0x300000; // GFN 0x300: no RAM on either machine
  const cases: {
    label: string;
    setup: (p: Platform) => Delivery[];
    run: (p: Platform) => number;
  }[] = [
    {
      label: "CR3 at an absent GFN, a user read",
      setup: (p) => build(p, bad),
      run: (p) => p.access(DATA_VA, 4, ACCESS_READ, 0, 0, true),
    },
    {
      label: "the kernel loads CR3 with an absent GFN, then fetches",
      setup: (p) => build(p),
      run: (p) => {
        p.interpreter.setReg(RDI, l1eOf(NEW_VA) - L1 + PT_VA);
        p.interpreter.setReg(RSI, DATA_GPA | URW);
        p.interpreter.setReg(RAX, bad);
        return p.execute(TEXT_VA);
      },
    },
    {
      label: "an l3e whose l2 table is at an absent GFN",
      setup: (p) => build(p, L4, () => p.loadGuestPhysical32(L3, bad | URW)),
      run: (p) => p.access(DATA_VA, 4, ACCESS_WRITE, 1, 0, true),
    },
  ];
  for (const c of cases) {
    const outcomes = [new NativePlatform({ frames: FRAMES }), hap()].map((p) => {
      const traps = c.setup(p);
      const outcome = c.run(p);
      return { outcome, traps, crash: p.crashReason };
    });
    assert.deepEqual(outcomes[1], outcomes[0], c.label);
    assert.equal(outcomes[0]!.outcome, RUN_ABANDONED, c.label);
    assert.equal(outcomes[0]!.traps.length, 1, c.label);
    assert.equal(outcomes[0]!.traps[0]!.vector, VECTOR_PF, c.label);
    assert.equal(outcomes[0]!.traps[0]!.errorCode & (PFEC_PRESENT | PFEC_RSVD), 9, c.label);
  }
});

Deno.test("HvmHapPlatform: CR3 at the device's GFN reads its registers as the table, as natively", () => {
  const outcomes = [new NativePlatform({ frames: FRAMES }), hap()].map((p) => {
    const traps = build(p, DEV_GPA);
    const outcome = p.access(DATA_VA, 4, ACCESS_READ, 0, 0, true);
    return { outcome, traps, counter: p.device.counter };
  });
  assert.deepEqual(outcomes[1], outcomes[0]);
  // The l4e read the counter register (0: not present), then the scratch register.
  assert.deepEqual(outcomes[0], {
    outcome: RUN_ABANDONED,
    traps: [{ vector: VECTOR_PF, errorCode: PFEC_USER, cr2: DATA_VA }],
    counter: 1,
  });
});

Deno.test("HvmHapPlatform: kernel text executed out of absent memory faults as natively", () => {
  const outcomes = [new NativePlatform({ frames: FRAMES }), hap()].map((p) => {
    const traps = build(p);
    p.cpu.ctl.cpl = 0;
    // Make the text page point at GPA 0x200000 (no memory): its bytes read as 0xff.
    p.interpreter.setReg(RDI, l1eOf(TEXT_VA + PAGE_SIZE * 8) - L1 + PT_VA);
    p.interpreter.setReg(RSI, HOLE_GPA | K_RX);
    p.interpreter.setReg(RAX, L4);
    p.interpreter.setReg(RDX, TEXT_VA);
    assert.equal(p.execute(TEXT_VA), RUN_DONE); // maps va 0x9000 -> the hole
    const outcome = p.execute(TEXT_VA + PAGE_SIZE * 8);
    return { outcome, traps, crash: p.crashReason };
  });
  assert.deepEqual(outcomes[1], outcomes[0]);
  // 0xff 0xff ... decodes as nothing the decoder knows: #UD, natively and emulated alike.
  assert.equal(outcomes[0]!.outcome, RUN_ABANDONED);
  assert.equal(outcomes[0]!.traps[0]!.vector, 6);
});

// --- The guest kernel --------------------------------------------------------------------

const RW = PROT_READ | PROT_WRITE;

function kernelWork(lab: Lab): number[] {
  const values: number[] = [];
  const parent = lab.spawn();
  const heap = lab.mmap(parent, 32 * PAGE_SIZE, RW);
  lab.touch(parent, { start: heap, length: 32 * PAGE_SIZE, kind: "write" });
  for (let round = 0; round < 2; round++) {
    const child = lab.fork(parent);
    lab.touch(child, { start: heap, length: 32 * PAGE_SIZE, kind: "write", value: round });
    values.push(lab.touch(parent, { start: heap, length: 32 * PAGE_SIZE, stride: 256 }).checksum);
    values.push(lab.touch(child, { start: heap, length: 32 * PAGE_SIZE, stride: 256 }).checksum);
    lab.exec(child);
    lab.exit(child);
    values.push(lab.wait(child, parent)?.exitCode ?? -1);
  }
  const device = lab.mmapDevice(parent);
  values.push(lab.readU32(parent, device), lab.readU32(parent, device));
  lab.exit(parent);
  lab.waitAll();
  return values;
}

function outcome(options: LabOptions) {
  const lab = createLab({ memoryMiB: 8, seed: 5, recordFaults: true, ...options });
  const values = kernelWork(lab);
  const guest = Object.fromEntries(
    Object.entries(lab.stats.nonZero()).filter(([name]) => name.startsWith("guest.")),
  );
  return { values, faults: lab.faults, guest, usage: lab.usage(), crash: lab.crashReason };
}

Deno.test("the guest kernel on hvm-hap, caches on or off, flushing or not, sees what it sees natively", () => {
  const native = outcome({ platform: "native" });
  assert.equal(native.crash, "");
  assert.ok(native.faults.length > 0);
  for (
    const options of [{}, { walkCaches: false }, { flushOnWorldSwitch: true }] as LabOptions[]
  ) {
    assert.deepEqual(outcome({ platform: "hvm-hap", ...options }), native, JSON.stringify(options));
  }
});

Deno.test("the guest kernel on hvm-hap: forks, execs and exits over warm memory take no exit", () => {
  const lab = createLab({ platform: "hvm-hap", memoryMiB: 8, seed: 3 });
  const parent = lab.spawn();
  const heap = lab.mmap(parent, 16 * PAGE_SIZE, RW);
  lab.touch(parent, { start: heap, length: 16 * PAGE_SIZE, kind: "write" });
  const cycle = () => {
    const child = lab.fork(parent);
    lab.touch(child, { start: heap, length: 16 * PAGE_SIZE, kind: "write" });
    lab.exec(child);
    lab.exit(child);
    lab.wait(child, parent);
  };
  cycle(); // the frames this work uses get their EPT entries
  const second = lab.measure(cycle); // the allocator hands the same frames out again
  assert.equal(second["exit.total"] ?? 0, 0);
  assert.ok(second["guest.cr3Load"]! > 0);
  assert.ok(second["guest.tlbFlush.one"]! + second["guest.tlbFlush.all"]! > 0);
  assert.ok(second["guest.fault"]! > 0); // #PFs go straight to the guest
  assert.equal(second["trap.delivered"], second["guest.fault"]);
});
