/**
 * The `native` platform (lib/platform/native.ts, against the contract in
 * lib/platform/platform.ts): loading and inspecting guest-physical memory, DMA, entering
 * paging, delivering exceptions to the guest's handlers and retrying, abandoning, and
 * crashing the domain (triple fault, livelock, nesting, runaway kernel code).
 *
 * Every test builds its own machine of 64 frames with one l4 -> l3 -> l2 -> l1 chain at
 * 0x1000..0x4000 covering linear [0, 2 MiB); pages are mapped by writing the l1e, through
 * loadGuestPhysical32 before start() and through `platform.memory` (the machine memory)
 * after it.
 */

import assert from "node:assert/strict";
import { ACCESS_READ, ACCESS_WRITE } from "../../lib/x86/access.ts";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import {
  CR4_PAE,
  CR4_PGE,
  EFER_LMA,
  PFEC_PRESENT,
  PFEC_USER,
  PFEC_WRITE,
} from "../../lib/x86/paging_control.ts";
import { PTE_ACCESSED, PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import type { Stats } from "../../lib/x86/stats.ts";
import { VECTOR_PF, VECTOR_UD } from "../../lib/x86/vcpu.ts";
import {
  MAX_FAULT_RETRIES,
  MAX_ROUTINE_STEPS,
  MAX_TRAP_DEPTH,
} from "../../lib/platform/base_platform.ts";
import { NativePlatform } from "../../lib/platform/native.ts";
import {
  PLATFORM_NAMES,
  RUN_ABANDONED,
  RUN_CRASHED,
  RUN_DONE,
  TRAP_ABANDON,
  TRAP_RETRY,
} from "../../lib/platform/platform.ts";

const FRAMES = 64;
const L4 = 0x1000;
const L3 = 0x2000;
const L2 = 0x3000;
const L1 = 0x4000;

const K_RX = PTE_PRESENT; // kernel, read-only, executable (XD clear)
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const UR = PTE_PRESENT | PTE_USER;

/** Kernel text: code is loaded into TEXT_FRAME, mapped at TEXT_VA. */
const TEXT_VA = 0x1000;
const TEXT_FRAME = 0x8000;
/** A user read-write page. */
const DATA_VA = 0x2000;
const DATA_FRAME = 0x9000;
/** Not mapped until a handler maps it to HOLE_FRAME. */
const HOLE_VA = 0x3000;
const HOLE_FRAME = 0xa000;
/** A user read-only page. */
const RO_VA = 0x4000;
const RO_FRAME = 0xb000;

const RDI = 7;
const RSI = 6;
const RCX = 1;

/** Address of the l1e that maps `va` (in [0, 2 MiB)). */
function l1eOf(va: number): number {
  return L1 + 8 * (va / PAGE_SIZE);
}

/** Loads `bytes` into guest-physical memory at `gpa` (a multiple of 4) before start(). */
function loadBytes(platform: NativePlatform, gpa: number, bytes: readonly number[]): void {
  for (let k = 0; k < bytes.length; k += 4) {
    const word = (bytes[k] ?? 0) | (bytes[k + 1] ?? 0) << 8 | (bytes[k + 2] ?? 0) << 16 |
      (bytes[k + 3] ?? 0) << 24;
    platform.loadGuestPhysical32(gpa + k, word >>> 0);
  }
}

/**
 * A started machine: tables at 0x1000..0x4000, TEXT_VA, DATA_VA and RO_VA mapped,
 * HOLE_VA not, and `code` (if any) at TEXT_VA.
 */
function build(code: readonly number[] = []): NativePlatform {
  const platform = new NativePlatform({ frames: FRAMES });
  platform.loadGuestPhysical32(L4, L3 | URW);
  platform.loadGuestPhysical32(L3, L2 | URW);
  platform.loadGuestPhysical32(L2, L1 | URW);
  platform.loadGuestPhysical32(l1eOf(TEXT_VA), TEXT_FRAME | K_RX);
  platform.loadGuestPhysical32(l1eOf(DATA_VA), DATA_FRAME | URW);
  platform.loadGuestPhysical32(l1eOf(RO_VA), RO_FRAME | UR);
  loadBytes(platform, TEXT_FRAME, code);
  platform.start(L4, 0);
  return platform;
}

/** Maps `va` to `pa` after start, as the guest kernel's handler would. */
function mapLive(platform: NativePlatform, va: number, pa: number, flags: number): void {
  platform.memory.write32(l1eOf(va), pa | flags);
  platform.memory.write32(l1eOf(va) + 4, 0);
}

/** One handler call, as recorded. */
interface Delivery {
  vector: number;
  errorCode: number;
  cr2: number;
  fromUser: boolean;
}

/** Named counters of interest, in one object for deepEqual. */
function counters(stats: Stats, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, stats.get(n)]));
}

// --- Loading and inspecting guest-physical memory -----------------------------------------

Deno.test("NativePlatform is named native and starts with paging off and no crash", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  assert.equal(platform.name, "native");
  assert.ok(PLATFORM_NAMES.includes(platform.name));
  assert.equal(platform.guestFrames, FRAMES);
  assert.equal(platform.crashReason, "");
  assert.equal(platform.cpu.ctl.isPaging, false);
  assert.equal(platform.interpreter.cpu, platform.cpu);
});

Deno.test("loadGuestPhysical32() stores what peekGuestPhysical32() and the machine memory read", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  const last = FRAMES * PAGE_SIZE - 4;
  platform.loadGuestPhysical32(0, 0x1234_5678);
  platform.loadGuestPhysical32(0x5004, 0xffff_ffff);
  platform.loadGuestPhysical32(last, 0xcafe_f00d);
  assert.deepEqual(
    [0, 0x5004, last, 0x5008].map((gpa) => platform.peekGuestPhysical32(gpa)),
    [0x1234_5678, 0xffff_ffff, 0xcafe_f00d, 0],
  );
  assert.equal(platform.memory.read32(0x5004), 0xffff_ffff);
});

Deno.test("loadGuestPhysical32() and peekGuestPhysical32() throw a RangeError outside memory", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  for (const gpa of [-4, -1, FRAMES * PAGE_SIZE - 3, FRAMES * PAGE_SIZE, 2 ** 40, 1.5, NaN]) {
    const message = `Cannot access guest-physical ${gpa}: memory is ${FRAMES} frames`;
    assert.throws(() => platform.loadGuestPhysical32(gpa, 1), new RangeError(message));
    assert.throws(() => platform.peekGuestPhysical32(gpa), new RangeError(message));
  }
});

Deno.test("loadGuestPhysical32() throws a RangeError after start(); peek still reads", () => {
  const platform = build();
  assert.throws(
    () => platform.loadGuestPhysical32(DATA_FRAME, 1),
    new RangeError("Cannot load guest memory: the guest has started"),
  );
  assert.equal(platform.peekGuestPhysical32(l1eOf(DATA_VA)), DATA_FRAME | URW);
  assert.equal(platform.peekGuestPhysical32(DATA_FRAME), 0, "the refused store left no trace");
});

// --- DMA ---------------------------------------------------------------------------------

Deno.test("dmaRead() of a frame never written fills the buffer with zeros", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  const into = new Uint32Array(1024).fill(0xaaaa_aaaa);
  platform.dmaRead(7, into);
  assert.ok(into.every((w) => w === 0));
});

Deno.test("dmaWrite() then dmaRead() round-trips a frame, and the guest sees the words", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  const from = Uint32Array.from({ length: 1024 }, (_, k) => (k * 0x0101_0101 + 7) >>> 0);
  platform.dmaWrite(9, from);
  const into = new Uint32Array(1024);
  platform.dmaRead(9, into);
  assert.deepEqual(into, from);
  assert.equal(platform.peekGuestPhysical32(9 * PAGE_SIZE + 4 * 1023), from[1023]);
  assert.equal(platform.peekGuestPhysical32(10 * PAGE_SIZE), 0, "the next frame is untouched");
  from[0] = 0; // the device's buffer is copied, not kept
  assert.equal(platform.peekGuestPhysical32(9 * PAGE_SIZE), 7);
});

Deno.test("dmaRead() sees words stored by loadGuestPhysical32() and by the processor", () => {
  const platform = build();
  assert.equal(platform.access(DATA_VA + 0x40, 4, ACCESS_WRITE, 0x5555, 0, true), RUN_DONE);
  const into = new Uint32Array(1024);
  platform.dmaRead(DATA_FRAME / PAGE_SIZE, into);
  assert.equal(into[0x40 / 4], 0x5555);
  platform.dmaRead(L4 / PAGE_SIZE, into);
  assert.equal(into[0], L3 | URW | PTE_ACCESSED, "the walk set A in the l4e");
});

Deno.test("dmaRead() and dmaWrite() throw a RangeError for a frame outside memory", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  const buffer = new Uint32Array(1024);
  for (const gfn of [FRAMES, -1, 2 ** 30]) {
    assert.throws(() => platform.dmaRead(gfn, buffer), RangeError);
    assert.throws(() => platform.dmaWrite(gfn, buffer), RangeError);
  }
});

Deno.test({
  name: "dmaWrite() and dmaRead() throw a RangeError for a fractional frame number",
  // BUG (lib/platform/native.ts dmaRead/dmaWrite): the check is on gfn * PAGE_SIZE, which
  // is an integer for gfn = 0.5 (2048), so it passes; then memory.hostFrame(0.5, ...)
  // returns undefined. dmaWrite(0.5, buf) throws "TypeError: Cannot read properties of
  // undefined (reading 'set')" and dmaRead(0.5, buf) silently fills buf with zeros.
  // Expected: a RangeError naming the frame, from both.
  fn() {
    const platform = new NativePlatform({ frames: FRAMES });
    const buffer = new Uint32Array(1024).fill(1);
    assert.throws(() => platform.dmaWrite(0.5, buffer), RangeError);
    assert.throws(() => platform.dmaRead(0.5, buffer), RangeError);
  },
});

// --- start -------------------------------------------------------------------------------

Deno.test("start() enters long-mode paging with CR3 = the l4 and CR4 = PAE | cr4", () => {
  const platform = new NativePlatform({ frames: FRAMES });
  platform.start(L4, CR4_PGE);
  const ctl = platform.cpu.ctl;
  assert.equal(ctl.isPaging, true);
  assert.equal(ctl.cr3, L4);
  assert.equal(ctl.cr4, CR4_PAE | CR4_PGE);
  assert.equal(ctl.efer & EFER_LMA, EFER_LMA);
  assert.equal(platform.stats.get("cpu.cr3Write"), 1);
});

Deno.test("start() throws a RangeError when the processor refuses CR3", () => {
  for (const l4Gpa of [2 ** 46, -0x1000, 4096.5]) {
    const platform = new NativePlatform({ frames: FRAMES });
    assert.throws(
      () => platform.start(l4Gpa, 0),
      new RangeError(`Cannot start the guest: CR3 ${l4Gpa} / CR4 0 refused with #GP`),
    );
    assert.equal(platform.cpu.ctl.isPaging, false);
    platform.loadGuestPhysical32(0, 1); // not started: loading still works
  }
});

Deno.test("access() reads and writes through the tables start() installed", () => {
  const platform = build();
  platform.memory.write32(DATA_FRAME + 0x10, 42);
  assert.equal(platform.access(DATA_VA + 0x10, 4, ACCESS_READ, 0, 0, true), RUN_DONE);
  assert.equal(platform.cpu.data, 42);
  assert.equal(platform.access(DATA_VA + 0x20, 8, ACCESS_WRITE, 0x1111, 0x2222, false), RUN_DONE);
  assert.deepEqual(
    [
      platform.peekGuestPhysical32(DATA_FRAME + 0x20),
      platform.peekGuestPhysical32(DATA_FRAME + 0x24),
    ],
    [0x1111, 0x2222],
  );
  assert.equal(platform.cpu.ctl.cpl, 0, "a kernel access leaves CPL 0");
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "cpu.pf"]), {
    "trap.delivered": 0,
    "cpu.pf": 0,
  });
});

// --- Exceptions: deliver, retry, abandon --------------------------------------------------

Deno.test("access() delivers a #PF to the handler, which maps the page, then retries", () => {
  const platform = build();
  const deliveries: Delivery[] = [];
  const cpls: number[] = [];
  platform.setTrapHandler(VECTOR_PF, (vector, errorCode, cr2, fromUser) => {
    deliveries.push({ vector, errorCode, cr2, fromUser });
    cpls.push(platform.cpu.ctl.cpl);
    mapLive(platform, cr2 - (cr2 % PAGE_SIZE), HOLE_FRAME, URW);
    return TRAP_RETRY;
  });
  assert.equal(platform.access(HOLE_VA + 0x123, 2, ACCESS_WRITE, 0xbeef, 0, true), RUN_DONE);
  assert.deepEqual(deliveries, [
    { vector: VECTOR_PF, errorCode: PFEC_WRITE | PFEC_USER, cr2: HOLE_VA + 0x123, fromUser: true },
  ]);
  assert.deepEqual(cpls, [0], "the handler runs at CPL 0");
  assert.equal(platform.memory.read16(HOLE_FRAME + 0x123), 0xbeef);
  assert.equal(platform.cpu.ctl.cpl, 3, "the retried access ran at CPL 3");
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "cpu.pf", "domain.crash"]), {
    "trap.delivered": 1,
    "cpu.pf": 1,
    "domain.crash": 0,
  });
});

Deno.test("accessFaulted() takes the fault the caller's own try raised, once, then retries", () => {
  const platform = build();
  const deliveries: Delivery[] = [];
  platform.setTrapHandler(VECTOR_PF, (vector, errorCode, cr2, fromUser) => {
    deliveries.push({ vector, errorCode, cr2, fromUser });
    mapLive(platform, cr2 - (cr2 % PAGE_SIZE), HOLE_FRAME, URW);
    return TRAP_RETRY;
  });
  const cpu = platform.cpu;
  cpu.ctl.cpl = 3;
  assert.equal(cpu.write32(HOLE_VA + 0x40, 0x1234_5678), false); // the caller's try
  assert.equal(
    platform.accessFaulted(HOLE_VA + 0x40, 4, ACCESS_WRITE, 0x1234_5678, 0, true),
    RUN_DONE,
  );
  assert.deepEqual(deliveries, [
    { vector: VECTOR_PF, errorCode: PFEC_WRITE | PFEC_USER, cr2: HOLE_VA + 0x40, fromUser: true },
  ]);
  assert.equal(platform.memory.read32(HOLE_FRAME + 0x40), 0x1234_5678);
  // One #PF raised (the caller's try), one handled, one successful retry: as access().
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "cpu.pf"]), {
    "trap.delivered": 1,
    "cpu.pf": 1,
  });
  platform.crash("test");
  assert.equal(platform.accessFaulted(HOLE_VA, 4, ACCESS_READ, 0, 0, true), RUN_CRASHED);
});

Deno.test("access() passes the #PF error code the SDM gives for each access", () => {
  const cases: {
    va: number;
    kind: typeof ACCESS_READ | typeof ACCESS_WRITE;
    user: boolean;
    errorCode: number;
  }[] = [
    { va: HOLE_VA, kind: ACCESS_READ, user: false, errorCode: 0 },
    { va: HOLE_VA, kind: ACCESS_READ, user: true, errorCode: PFEC_USER },
    { va: HOLE_VA, kind: ACCESS_WRITE, user: false, errorCode: PFEC_WRITE },
    { va: RO_VA, kind: ACCESS_WRITE, user: true, errorCode: PFEC_PRESENT | PFEC_WRITE | PFEC_USER },
    { va: TEXT_VA, kind: ACCESS_READ, user: true, errorCode: PFEC_PRESENT | PFEC_USER },
  ];
  for (const { va, kind, user, errorCode } of cases) {
    const platform = build();
    const deliveries: Delivery[] = [];
    platform.setTrapHandler(VECTOR_PF, (vector, errorCode, cr2, fromUser) => {
      deliveries.push({ vector, errorCode, cr2, fromUser });
      return TRAP_ABANDON;
    });
    assert.equal(platform.access(va + 8, 4, kind, 1, 0, user), RUN_ABANDONED);
    assert.deepEqual(deliveries, [{ vector: VECTOR_PF, errorCode, cr2: va + 8, fromUser: user }]);
  }
});

Deno.test("access() retries a write to a read-only page after the handler grants write", () => {
  const platform = build();
  let calls = 0;
  platform.setTrapHandler(VECTOR_PF, (_vector, _errorCode, cr2) => {
    calls++;
    mapLive(platform, RO_VA, RO_FRAME, URW);
    platform.cpu.invlpg(cr2); // as a kernel does after changing a present entry
    return TRAP_RETRY;
  });
  assert.equal(platform.access(RO_VA, 4, ACCESS_READ, 0, 0, true), RUN_DONE); // fills the TLB
  assert.equal(platform.access(RO_VA + 4, 4, ACCESS_WRITE, 9, 0, true), RUN_DONE);
  assert.equal(calls, 1);
  assert.equal(platform.peekGuestPhysical32(RO_FRAME + 4), 9);
});

Deno.test("access() returns RUN_ABANDONED when the handler answers TRAP_ABANDON", () => {
  const platform = build();
  let calls = 0;
  platform.setTrapHandler(VECTOR_PF, () => {
    calls++;
    return TRAP_ABANDON;
  });
  assert.equal(platform.access(HOLE_VA, 4, ACCESS_WRITE, 1, 0, true), RUN_ABANDONED);
  assert.equal(calls, 1);
  assert.equal(platform.crashReason, "");
  assert.equal(platform.access(DATA_VA, 4, ACCESS_WRITE, 2, 0, true), RUN_DONE, "still running");
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "domain.crash"]), {
    "trap.delivered": 1,
    "domain.crash": 0,
  });
});

Deno.test("setTrapHandler() throws a RangeError for a vector outside 0..31", () => {
  const platform = build();
  for (const vector of [32, -1, 1.5, NaN, 255]) {
    assert.throws(
      () => platform.setTrapHandler(vector, () => TRAP_RETRY),
      new RangeError(`Cannot set a trap handler for vector ${vector}: must be 0..31`),
    );
  }
  platform.setTrapHandler(0, () => TRAP_RETRY);
  platform.setTrapHandler(31, () => TRAP_RETRY);
});

Deno.test("setTrapHandler() replaces the handler for a vector", () => {
  const platform = build();
  const calls: string[] = [];
  platform.setTrapHandler(VECTOR_PF, () => {
    calls.push("first");
    return TRAP_ABANDON;
  });
  platform.setTrapHandler(VECTOR_PF, () => {
    calls.push("second");
    return TRAP_ABANDON;
  });
  platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, false);
  assert.deepEqual(calls, ["second"]);
});

// --- Crashes -----------------------------------------------------------------------------

Deno.test("access() with no #PF handler crashes the domain with a triple fault", () => {
  const platform = build();
  assert.equal(platform.access(HOLE_VA + 0x10, 4, ACCESS_WRITE, 1, 0, true), RUN_CRASHED);
  assert.equal(
    platform.crashReason,
    "triple fault: no handler for vector 14 (error code 6, cr2 0x0000000000003010)",
  );
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "domain.crash"]), {
    "trap.delivered": 0,
    "domain.crash": 1,
  });
});

Deno.test("access() crashes with a livelock after MAX_FAULT_RETRIES unhelpful deliveries", () => {
  const platform = build();
  let calls = 0;
  platform.setTrapHandler(VECTOR_PF, () => {
    calls++;
    return TRAP_RETRY; // fixes nothing
  });
  assert.equal(platform.access(HOLE_VA + 8, 4, ACCESS_READ, 0, 0, true), RUN_CRASHED);
  assert.equal(MAX_FAULT_RETRIES, 16);
  assert.equal(calls, MAX_FAULT_RETRIES);
  assert.equal(
    platform.crashReason,
    "livelock: the access at 0x0000000000003008 still faults after 16 retries",
  );
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "cpu.pf", "domain.crash"]), {
    "trap.delivered": MAX_FAULT_RETRIES,
    "cpu.pf": MAX_FAULT_RETRIES + 1,
    "domain.crash": 1,
  });
});

Deno.test("access() that faults inside handlers MAX_TRAP_DEPTH deep crashes with a double fault", () => {
  const platform = build();
  let calls = 0;
  platform.setTrapHandler(VECTOR_PF, () => {
    calls++;
    // The handler touches an unmapped page itself, which faults again, and so on.
    return platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, false) === RUN_DONE
      ? TRAP_RETRY
      : TRAP_ABANDON;
  });
  assert.equal(platform.access(HOLE_VA + 0x20, 4, ACCESS_READ, 0, 0, true), RUN_CRASHED);
  assert.equal(calls, MAX_TRAP_DEPTH);
  assert.equal(
    platform.crashReason,
    "double fault: vector 14 at cr2 0x0000000000003000 nested 3 deep",
  );
  assert.deepEqual(counters(platform.stats, ["trap.delivered", "domain.crash"]), {
    "trap.delivered": MAX_TRAP_DEPTH,
    "domain.crash": 1,
  });
});

Deno.test("access() returns RUN_CRASHED when the handler crashes the domain", () => {
  const platform = build();
  platform.setTrapHandler(VECTOR_PF, () => {
    platform.crash("guest kernel panic");
    return TRAP_RETRY;
  });
  assert.equal(platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, true), RUN_CRASHED);
  assert.equal(platform.crashReason, "guest kernel panic");
});

Deno.test("after a crash every access and execute returns RUN_CRASHED and runs nothing", () => {
  const platform = build([0xc3]); // ret
  assert.equal(platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, false), RUN_CRASHED);
  const before = platform.stats.snapshot();
  assert.equal(platform.access(DATA_VA, 4, ACCESS_WRITE, 5, 0, true), RUN_CRASHED);
  assert.equal(platform.access(DATA_VA, 4, ACCESS_READ, 0, 0, false), RUN_CRASHED);
  assert.equal(platform.execute(TEXT_VA), RUN_CRASHED);
  assert.deepEqual(platform.stats.snapshot(), before, "nothing counted");
  assert.equal(platform.peekGuestPhysical32(DATA_FRAME), 0, "the write did not happen");
});

Deno.test("crash() keeps the first reason and counts one crash", () => {
  const platform = build();
  platform.crash("first");
  platform.crash("second");
  assert.equal(platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, false), RUN_CRASHED);
  assert.equal(platform.crashReason, "first");
  assert.equal(platform.stats.get("domain.crash"), 1);
});

Deno.test("crash() after a triple fault keeps the triple fault as the reason", () => {
  const platform = build();
  platform.access(HOLE_VA, 4, ACCESS_READ, 0, 0, false);
  platform.crash("later");
  assert.match(platform.crashReason, /^triple fault: /);
  assert.equal(platform.stats.get("domain.crash"), 1);
});

// --- execute -----------------------------------------------------------------------------

Deno.test("execute() runs `mov [rdi], rsi; ret` and stores RSI at RDI", () => {
  const platform = build([0x48, 0x89, 0x37, 0xc3]);
  platform.interpreter.setReg(RDI, DATA_VA + 0x18);
  platform.interpreter.setReg(RSI, 0x1234_5678, 0x8000_0001);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  assert.deepEqual(
    [
      platform.peekGuestPhysical32(DATA_FRAME + 0x18),
      platform.peekGuestPhysical32(DATA_FRAME + 0x1c),
    ],
    [0x1234_5678, 0x8000_0001],
  );
  assert.equal(platform.crashReason, "");
  assert.equal(platform.cpu.ctl.cpl, 0);
});

Deno.test("execute() runs at CPL 0 even after a user access", () => {
  const platform = build([0x48, 0x89, 0x37, 0xc3]);
  assert.equal(platform.access(DATA_VA, 4, ACCESS_READ, 0, 0, true), RUN_DONE);
  assert.equal(platform.cpu.ctl.cpl, 3);
  platform.interpreter.setReg(RDI, DATA_VA);
  platform.interpreter.setReg(RSI, 77);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE, "kernel text is a supervisor page");
  assert.equal(platform.peekGuestPhysical32(DATA_FRAME), 77);
});

Deno.test("execute() delivers a #PF from kernel code and resumes after the handler maps", () => {
  // mov ecx, 512; mov eax, 0; rep stosq; ret (clear_page)
  const platform = build([0xb9, 0, 2, 0, 0, 0xb8, 0, 0, 0, 0, 0xf3, 0x48, 0xab, 0xc3]);
  platform.memory.write32(HOLE_FRAME + 0xff8, 0xffff_ffff);
  const deliveries: Delivery[] = [];
  platform.setTrapHandler(VECTOR_PF, (vector, errorCode, cr2, fromUser) => {
    deliveries.push({ vector, errorCode, cr2, fromUser });
    mapLive(platform, HOLE_VA, HOLE_FRAME, URW);
    return TRAP_RETRY;
  });
  platform.interpreter.setReg(RDI, HOLE_VA);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  assert.deepEqual(deliveries, [
    { vector: VECTOR_PF, errorCode: PFEC_WRITE, cr2: HOLE_VA, fromUser: false },
  ]);
  assert.equal(platform.peekGuestPhysical32(HOLE_FRAME + 0xff8), 0);
  assert.equal(platform.interpreter.regLo(RDI), HOLE_VA + PAGE_SIZE);
  assert.equal(platform.interpreter.regLo(RCX), 0);
});

Deno.test("execute() returns RUN_ABANDONED when the handler abandons kernel code", () => {
  const platform = build([0x48, 0x89, 0x37, 0xc3]);
  platform.setTrapHandler(VECTOR_PF, () => TRAP_ABANDON);
  platform.interpreter.setReg(RDI, HOLE_VA);
  assert.equal(platform.execute(TEXT_VA), RUN_ABANDONED);
  assert.equal(platform.crashReason, "");
});

Deno.test("execute() of undecodable bytes with no #UD handler crashes with a triple fault", () => {
  const platform = build([0xd9, 0xe8]); // fld1: x87, not in the subset
  assert.equal(platform.execute(TEXT_VA), RUN_CRASHED);
  assert.equal(
    platform.crashReason,
    "triple fault: no handler for vector 6 (error code 0, cr2 0x0000000000000000)",
  );
  assert.equal(platform.stats.get("cpu.ud"), 1);
});

Deno.test("execute() of undecodable bytes delivers #UD to a handler, then livelocks", () => {
  const platform = build([0xd9, 0xe8]);
  const deliveries: Delivery[] = [];
  platform.setTrapHandler(VECTOR_UD, (vector, errorCode, cr2, fromUser) => {
    deliveries.push({ vector, errorCode, cr2, fromUser });
    return TRAP_RETRY;
  });
  assert.equal(platform.execute(TEXT_VA), RUN_CRASHED);
  assert.equal(deliveries.length, MAX_FAULT_RETRIES);
  assert.deepEqual(deliveries[0], { vector: VECTOR_UD, errorCode: 0, cr2: 0, fromUser: false });
  assert.equal(
    platform.crashReason,
    "livelock: kernel code at 0x0000000000001000 still faults after 16 retries",
  );
  assert.equal(platform.stats.get("trap.delivered"), MAX_FAULT_RETRIES);
});

Deno.test("execute() of a routine with no RET (jmp $) crashes as runaway", () => {
  const platform = build([0xeb, 0xfe]); // jmp $
  assert.equal(platform.execute(TEXT_VA), RUN_CRASHED);
  assert.equal(
    platform.crashReason,
    `runaway kernel code: ${MAX_ROUTINE_STEPS} instructions without RET (at 0x0000000000001000)`,
  );
  assert.equal(platform.stats.get("cpu.instructions"), MAX_ROUTINE_STEPS);
  assert.equal(platform.stats.get("domain.crash"), 1);
});

Deno.test("execute() of HLT or an unsupported instruction crashes and names it", () => {
  const cases: [number[], string][] = [
    [[0xf4], "kernel halted at 0x0000000000001001"],
    [[0x0f, 0x05], "unsupported instruction at 0x0000000000001000: syscall"],
  ];
  for (const [code, reason] of cases) {
    const platform = build(code);
    assert.equal(platform.execute(TEXT_VA), RUN_CRASHED);
    assert.equal(platform.crashReason, reason);
  }
});

Deno.test({
  name: "execute() resolves more than MAX_FAULT_RETRIES distinct faults in one routine",
  // BUG (lib/platform/native.ts execute): `faults` counts every fault of the whole routine,
  // not retries of one access, so a routine whose accesses each fault once and are each
  // resolved (here `rep stosq` over 17 not-yet-mapped pages, each mapped on demand) is
  // crashed as "livelock: kernel code at ... still faults after 16 retries" although no
  // access faulted twice. MAX_FAULT_RETRIES is documented as "how often one access may
  // fault". Not reached by today's kernel routines (each touches at most two pages).
  fn() {
    const pages = MAX_FAULT_RETRIES + 1;
    const base = 0x10_0000; // l1 slots 256..272, frames 0x20..0x30
    const platform = build([0xf3, 0x48, 0xab, 0xc3]); // rep stosq; ret
    platform.setTrapHandler(VECTOR_PF, (_vector, _errorCode, cr2) => {
      const page = cr2 - (cr2 % PAGE_SIZE);
      mapLive(platform, page, 0x20000 + (page - base), URW);
      return TRAP_RETRY;
    });
    platform.interpreter.setReg(RDI, base);
    platform.interpreter.setReg(RCX, pages * 512);
    assert.equal(platform.execute(TEXT_VA), RUN_DONE, platform.crashReason);
    assert.equal(platform.stats.get("trap.delivered"), pages);
  },
});

Deno.test("execute() outside a guest run takes no interrupt, whatever IF the guest left", () => {
  const platform = build([0x90, 0xc3]); // nop; ret
  const interpreter = platform.interpreter;
  interpreter.systemInstructions = true;
  interpreter.idtrLimit = 0; // were the interrupt taken, its delivery would triple-fault
  interpreter.rflags |= 0x200; // IF
  interpreter.raiseInterrupt(32);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  assert.equal(interpreter.pendingInterrupt, 32, "still pending for the guest's next run");
  assert.equal(interpreter.rflags & 0x200, 0x200, "the guest's IF is back");
  assert.equal(platform.crashReason, "");
});

Deno.test("runGuest(): a triple fault crashes the domain with a reason instead of an unexpected result", () => {
  const platform = build([0x90, 0xeb, 0xfe]); // nop; jmp $
  const interpreter = platform.interpreter;
  interpreter.idtrLimit = 0; // no gate fits: the interrupt, its #GP and the #DF all fail
  interpreter.rip = TEXT_VA;
  interpreter.rflags |= 0x200; // IF
  platform.board.setTimerPeriod(5);
  assert.equal(platform.runGuest(100), RUN_CRASHED);
  assert.match(platform.crashReason, /^triple fault at 0x/);
  assert.equal(platform.stats.get("domain.crash"), 1);
  assert.equal(platform.stats.get("cpu.tripleFaults"), 1);
});
