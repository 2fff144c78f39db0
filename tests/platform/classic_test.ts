/**
 * The classic trap-and-emulate monitor (lib/platform/classic.ts), worked by hand: the
 * seeds' flows (a keyboard read, a system call, a protection fault in user mode), the
 * sensitive instructions that do not trap (POPF, PUSHF, SIDT), the whole example guest
 * against native, and bad input that must end as the processor or Xen would end it.
 *
 * The guest is GuestOs on `createLab({ platform, memoryMiB: 8 })` with small user programs
 * of real bytes (text at 0x400000, data page at 0x600000, stack top 0x7fff_ffff_f000).
 * Counters are deltas over `os.run()` (boot not included).
 */

import assert from "node:assert/strict";
import { ACCESS_READ, ACCESS_WRITE } from "../../lib/x86/access.ts";
import { formatLinear, linearHigh32 } from "../../lib/x86/address.ts";
import { KERNEL_CS, KERNEL_SS, USER_CS, USER_SS } from "../../lib/x86/interpreter.ts";
import { createLab, type Lab } from "../../lib/lab/lab.ts";
import { GuestOs } from "../../lib/guest/guest_os.ts";
import { GuestKernel } from "../../lib/guest/kernel.ts";
import { STACK_TOP } from "../../lib/guest/layout.ts";
import { ClassicPlatform, MONITOR_GDT_BASE, MONITOR_IDT_BASE } from "../../lib/platform/classic.ts";
import { RUN_CRASHED, RUN_LIMIT } from "../../lib/platform/platform.ts";

type Name = "native" | "classic";

function boot(platform: Name): { lab: Lab; os: GuestOs } {
  const lab = createLab({ platform, memoryMiB: 8 });
  return { lab, os: GuestOs.forLab(lab) };
}

function classicOf(lab: Lab): ClassicPlatform {
  assert.ok(lab.platform instanceof ClassicPlatform);
  return lab.platform;
}

// The counters of `prefixes` that `work` changed.
function measure(lab: Lab, prefixes: RegExp, work: () => void): Record<string, number> {
  const delta = lab.measure(work);
  return Object.fromEntries(Object.entries(delta).filter(([name]) => prefixes.test(name)));
}

// A qword of guest-linear memory, read through the guest's own tables (no side effect on
// the hardware TLB or the shadows), as a 48-bit value for addresses, else the low bits.
function peek64(platform: ClassicPlatform, va: number): number {
  const cpu = platform.mmu.emulator.cpu;
  assert.ok(cpu.read(va, 8, ACCESS_READ), `peek at ${formatLinear(va)}`);
  return (cpu.dataHi & 0xffff) * 2 ** 32 + cpu.data;
}

function write64(lab: Lab, va: number, value: number): void {
  lab.platform.access(va, 8, ACCESS_WRITE, value >>> 0, linearHigh32(value), false);
}

// Records every traced event (name, address, detail) while `work` runs.
function traced(lab: Lab, work: () => void): [string, number, number | string][] {
  const events: [string, number, number | string][] = [];
  lab.stats.trace = (name, address, detail) => {
    if (name.startsWith("classic.") || name.startsWith("exit.")) {
      events.push([name, address, detail]);
    }
  };
  try {
    work();
  } finally {
    lab.stats.trace = null;
  }
  return events;
}

/** getpid(); exit(pid): `mov eax, 39; int 0x80; mov edi, eax; mov eax, 60; int 0x80`. */
const GETPID_EXIT = [
  ...[0xb8, 39, 0, 0, 0, 0xcd, 0x80], // 0x400000: mov eax, 39; int 0x80
  ...[0x89, 0xc7, 0xb8, 60, 0, 0, 0, 0xcd, 0x80], // 0x400007: mov edi, eax; mov eax, 60; int 0x80
];

/**
 * read(0, 0x600000, 1); write(1, 0x600000, 1); exit(0): echo one typed byte.
 * 0x400000 mov esi, 0x600000; xor eax, eax; xor edi, edi; mov edx, 1; int 0x80 (ends 0x400010)
 * 0x400010 mov eax, 1; mov edi, 1; int 0x80 (ends 0x40001c); mov eax, 60; xor edi, edi; int 0x80
 */
const ECHO_ONE = [
  ...[0xbe, 0, 0, 0x60, 0, 0x31, 0xc0, 0x31, 0xff, 0xba, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];

/** Stores "hi" at 0x600000, write(1, 0x600000, 2), exit(0). */
const WRITE_HI = [
  ...[0xc7, 0x04, 0x25, 0, 0, 0x60, 0, 0x68, 0x69, 0, 0], // mov dword [0x600000], "hi"
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xbe, 0, 0, 0x60, 0, 0xba, 2, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];

/** `mov dword [0x400000], 1`: a store into its own (read-only) text. */
const STORE_TO_TEXT = [0xc7, 0x04, 0x25, 0, 0, 0x40, 0, 1, 0, 0, 0];

/** The red pill: `sidt [0x600000]`, then write(1, 0x600002, 8) the base it read; exit(0). */
const RED_PILL = [
  ...[0x0f, 0x01, 0x0c, 0x25, 0, 0, 0x60, 0], // sidt [0x600000]
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xbe, 2, 0, 0x60, 0, 0xba, 8, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];

/** The example guest of the notes: an echo of typed keys, two spinners, a SIGSEGV. */
const EXAMPLE = {
  echo: [
    ...[0xbe, 0, 0, 0x60, 0, 0x31, 0xc0, 0x31, 0xff, 0xba, 1, 0, 0, 0, 0xcd, 0x80],
    ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xcd, 0x80, 0x80, 0x3e, 0x0a, 0x75, 0xe4],
    ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
  ],
  spin: [
    ...[0xb9, 0x40, 0x0d, 0x03, 0, 0x83, 0xe9, 0x01, 0x75, 0xfb],
    ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
  ],
  bad: STORE_TO_TEXT,
};

// --- The seeds' flows ------------------------------------------------------------------

/** A ClassicPlatform that logs each trap's RIP before and after, and AL after. */
// The kernel's `mov cr3, rax` (its writeCr3 routine).
function writeCr3Address(kernel: GuestKernel): number {
  return kernel.code.text.address("writeCr3");
}

class WatchedClassic extends ClassicPlatform {
  readonly log: { vector: number; rip: number; after: number; al: number }[] = [];
  protected override onException(inInterpreter: boolean, fromUser: boolean): number {
    const it = this.interpreter;
    const vector = this.cpu.exception.vector;
    const rip = it.rip;
    const outcome = super.onException(inInterpreter, fromUser);
    this.log.push({ vector, rip, after: it.rip, al: it.regLo(0) & 0xff });
    return outcome;
  }
}

Deno.test("classic: the slides' keyboard read: IRQ 1 reflected, `in al, 0x60` trapped and emulated", () => {
  const platform = new WatchedClassic({ frames: 2048 });
  const kernel = new GuestKernel(platform);
  kernel.boot();
  const os = new GuestOs(kernel);
  os.boot();
  const text = kernel.code.text;
  const idle = os.threads.get(0)!;
  os.spawnProgram(ECHO_ONE);
  platform.board.type("k", 2000, 0);
  const frames: number[][] = [];
  const flow: [string, number, number | string][] = [];
  platform.stats.trace = (name, address, detail) => {
    if (name === "classic.reflect" || name === "classic.emulate") {
      flow.push([name, address, detail]);
    }
    if (name === "classic.reflect" && detail === 0x21) {
      const it = platform.interpreter;
      const sp = it.regLo(4) + (it.regHi(4) & 0xffff) * 2 ** 32;
      frames.push([0, 8, 16, 24, 32].map((k) => peek64(platform, sp + k)));
    }
  };
  const before = platform.stats.snapshot();
  const result = os.run(1_000_000);
  platform.stats.trace = null;
  const after = platform.stats.snapshot();
  const delta = (name: string) => (after[name] ?? 0) - (before[name] ?? 0);
  assert.deepEqual(result, { outcome: "done", reason: "" });
  assert.equal(os.console, "k"); // the byte reached read(), and write() echoed it
  assert.deepEqual(os.exits, [{ pid: 1, exitCode: 0, signal: 0, reason: "" }]);
  // The slides' flow, as the monitor saw it (RIPs; 128 = int 0x80, 33 = IRQ 1):
  const iretq = text.entry("commonTail") + 8 * 2 + 7 + 4; // 15 pops (8 with REX), add rsp
  assert.deepEqual(flow.slice(0, 9), [
    ["classic.emulate", writeCr3Address(kernel), "mov cr3, rax"], // switch to the program
    ["classic.reflect", 0x400010, 0x80], // read(): no byte yet, the program blocks
    ["classic.emulate", iretq, "iretq"], // into idle's kernel frame (RPL 0)
    ["classic.emulate", text.entry("idle"), "sti"],
    ["classic.emulate", text.entry("idle") + 1, "hlt"], // sleeps until the key
    ["classic.reflect", text.entry("idle") + 2, 0x21], // the key: IRQ 1 through the IDT
    ["classic.emulate", text.entry("keyboardRead"), "in al, 0x60"],
    ["classic.emulate", text.entry("picEoi") + 5, "out 0x20, al"],
    ["classic.reflect", 0x40001c, 0x80], // the reader is back: write()
  ]);
  // The read blocked; idle ran `sti; hlt` (both trapped); the key's IRQ 1 came in the HLT
  // and was reflected through the guest's IDT at RIP = idle + 2 (after the HLT), from
  // virtual kernel mode: CS, SS the kernel's, IF = 1 (the STI), RSP = idle's stack top.
  assert.deepEqual(frames, [[text.entry("idle") + 2, KERNEL_CS, 0x202, idle.kernelTop, KERNEL_SS]]);
  // The kernel's keyboard driver: `in al, 0x60` (2 bytes) trapped with #GP at CPL 1; the
  // monitor read the port: AL = 'k', RIP + 2.
  const read = platform.log.filter((t) => t.rip === text.entry("keyboardRead"));
  assert.deepEqual(read, [{
    vector: 13,
    rip: text.entry("keyboardRead"),
    after: text.entry("keyboardRead") + 2,
    al: 0x6b,
  }]);
  // Traps by hand: 3 `int 0x80` + IRQ 1, and the #GPs of the kernel's privileged
  // instructions: IRETQ into idle (a kernel frame: RPL 0), STI, HLT, IN, OUT (EOI), CLI
  // and OUT (the console write), 3 CR3 writes and a CR3 read (address-space switches and
  // the exit's flush); the rest are #PF exits of the shadow code.
  const emulated = {
    "classic.emulate.iret": 1,
    "classic.emulate.sti": 1,
    "classic.emulate.hlt": 1,
    "classic.emulate.in": 1,
    "classic.emulate.out": 2,
    "classic.emulate.cli": 1,
    "classic.emulate.movcr": 4,
  };
  for (const [name, count] of Object.entries(emulated)) assert.equal(delta(name), count, name);
  assert.equal(delta("classic.reflect"), 4); // 3 system calls and the keyboard IRQ
  assert.equal(platform.interpreter.deliveries[0x21], 1);
  assert.equal(delta("exit.pf"), 12);
  assert.equal(delta("classic.trap"), 12 + 4 + (1 + 1 + 1 + 1 + 2 + 1 + 4));
  assert.equal(delta("exit.total"), delta("classic.trap"));
  assert.equal(delta("classic.held"), 0);
});

Deno.test("classic: a system call: int 0x80 reflected with the native frame; iretq to user does not trap", () => {
  const { lab, os } = boot("classic");
  const platform = classicOf(lab);
  const pid = os.spawnProgram(GETPID_EXIT);
  const top = os.threads.get(pid)!.kernelTop;
  const frames: { rip: number; sp: number; frame: number[] }[] = [];
  let events: [string, number, number | string][] = [];
  let result = { outcome: "", reason: "" };
  const counts = measure(lab, /^(classic|exit)\./, () => {
    events = traced(lab, () => {
      const sink = lab.stats.trace!;
      lab.stats.trace = (name, address, detail) => {
        sink(name, address, detail);
        if (name !== "classic.reflect") return;
        const sp = platform.interpreter.regLo(4) + (platform.interpreter.regHi(4) & 0xffff) *
            2 ** 32;
        const frame = [0, 8, 16, 24, 32].map((k) => peek64(platform, sp + k));
        frames.push({ rip: platform.interpreter.rip, sp, frame });
      };
      result = os.run(1_000_000);
    });
  });
  assert.deepEqual(result, { outcome: "done", reason: "" });
  assert.deepEqual(os.exits, [{ pid, exitCode: pid, signal: 0, reason: "" }]); // RAX came back
  // Both frames on the guest kernel stack (TSS.RSP0 = the thread's stack top, 16-aligned),
  // as the processor pushes them natively: RIP after the INT, USER_CS, RFLAGS with IF = 1
  // (0x202: `mov` changes no flag), the user RSP (untouched: STACK_TOP), USER_SS; RIP =
  // the guest's 0x80 stub.
  const stub = lab.kernel.code.text.stub(0x80);
  assert.deepEqual(frames, [
    { rip: stub, sp: top - 40, frame: [0x400007, USER_CS, 0x202, STACK_TOP, USER_SS] },
    { rip: stub, sp: top - 40, frame: [0x400010, USER_CS, 0x202, STACK_TOP, USER_SS] },
  ]);
  // Between the two reflections nothing trapped: the guest's iretq to user (RPL 3) ran in
  // hardware at CPL 1.
  const first = events.findIndex(([name]) => name === "classic.reflect");
  assert.deepEqual(events[first + 1], ["classic.reflect", 0x400010, 0x80]);
  // By hand: the first switch's CR3 write; #PF exits for the shadows (the text after it,
  // commonTail's first pop of the forged frame, the user text); the 2 INTs; the exit's 4
  // emulated page-table writes, its CR3 read and write (flush), the CR3 write to the
  // kernel's tables. 1 + 3 + 2 + 4 + 3 = 13 traps.
  assert.deepEqual(counts, {
    "exit.total": 13,
    "exit.pf": 7,
    "exit.cr3": 3,
    "exit.cr3Read": 1,
    "classic.trap": 13,
    "classic.reflect": 2,
    "classic.emulate.movcr": 4,
  });
  assert.equal(platform.interpreter.deliveries[0x80], 2);
});

Deno.test("classic: a protection fault in guest user mode is reflected and the process killed", () => {
  const outcomes = (["native", "classic"] as const).map((name) => {
    const { lab, os } = boot(name);
    os.spawnProgram(STORE_TO_TEXT);
    let frame: number[] = [];
    if (name === "classic") {
      const platform = classicOf(lab);
      lab.stats.trace = (event, _address, detail) => {
        if (event !== "classic.reflect" || detail !== 14) return;
        const sp = platform.interpreter.regLo(4) + (platform.interpreter.regHi(4) & 0xffff) *
            2 ** 32;
        frame = [0, 8, 16, 24, 32, 40].map((k) => peek64(platform, sp + k));
      };
    }
    const counts = measure(lab, /^(classic\.|fault\.genuine|trap\.delivered)/, () => {
      assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
    });
    lab.stats.trace = null;
    return { exits: os.exits, counts, frame, cr2: lab.platform.guestCr2, vectors: os.vectorCounts };
  });
  const [native, classic] = outcomes as [typeof outcomes[0], typeof outcomes[0]];
  const killed = [{ pid: 1, exitCode: 0, signal: 11, reason: "SEGV_ACCERR at 0x0000000000400000" }];
  assert.deepEqual(native.exits, killed);
  assert.deepEqual(classic.exits, killed);
  assert.equal(classic.cr2, 0x400000);
  assert.deepEqual(classic.vectors, native.vectors);
  // The frame: error code 7 (present, write, user), RIP of the store, USER_CS, IF = 1.
  assert.deepEqual(classic.frame, [7, 0x400000, USER_CS, 0x202, STACK_TOP, USER_SS]);
  assert.equal(classic.counts["fault.genuine"], 1);
  assert.equal(classic.counts["classic.reflect"], 1);
  assert.equal(classic.counts["trap.delivered"], 1);
  assert.equal(native.counts["trap.delivered"], 1);
});

// --- What does not trap ------------------------------------------------------------------

Deno.test("classic: POPF loses the guest's IF, PUSHF shows the real one, SIDT shows the monitor's IDT", () => {
  const runs = (["native", "classic"] as const).map((name) => {
    const { lab, os } = boot(name);
    os.spawnProgram(WRITE_HI);
    const counts = measure(lab, /^classic\.(untrapped|popf|pushf|sidt|emulate\.(cli|out))/, () => {
      assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
    });
    const leaksBefore = lab.stats.get("classic.sidtLeak");
    const stored = os.storeIdt();
    return {
      console: os.console,
      sawEnabled: os.irqSaveSawEnabled,
      saves: os.irqSaves,
      stored,
      idtBase: os.idtBase,
      counts,
      leaks: lab.stats.get("classic.sidtLeak") - leaksBefore,
    };
  });
  const [native, classic] = runs as [typeof runs[0], typeof runs[0]];
  assert.equal(native.console, "hi");
  assert.equal(classic.console, "hi");
  // write() takes the console lock: irqSave = `pushfq; pop rax; cli`. Natively it runs
  // inside the system call, after an interrupt gate cleared IF: it saves IF = 0.
  assert.equal(native.saves, 1);
  assert.equal(native.sawEnabled, 0);
  assert.deepEqual(native.counts, {});
  // Under the monitor PUSHF pushes the real IF, which is always 1: the kernel believes
  // interrupts were on. Its irqRestore (`push rax; popfq`) then means to set IF = 1, and
  // POPF at CPL 1 > IOPL silently keeps the real IF: the monitor never hears of it.
  assert.equal(classic.saves, 1);
  assert.equal(classic.sawEnabled, 1);
  assert.deepEqual(classic.counts, {
    "classic.emulate.cli": 1,
    "classic.emulate.out": 2,
    "classic.untrapped.popf": 1,
    "classic.untrapped.pushf": 1,
    "classic.popfIfLost": 1,
    "classic.pushfIfWrong": 1,
  });
  // SIDT (store_idt) is unprivileged: natively the kernel reads back its own IDT; at
  // CPL 1 it reads the monitor's.
  assert.equal(native.stored, native.idtBase);
  assert.equal(classic.stored, MONITOR_IDT_BASE);
  assert.notEqual(classic.stored, classic.idtBase);
  assert.equal(native.leaks, 0);
  assert.equal(classic.leaks, 1);
});

Deno.test("classic: the red pill: a user program's SIDT tells it runs under the monitor", () => {
  const consoles = (["native", "classic"] as const).map((name) => {
    const { lab, os } = boot(name);
    os.spawnProgram(RED_PILL);
    const counts = measure(lab, /^classic\.(untrapped\.sidt|sidtLeak)/, () => {
      assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
    });
    if (name === "classic") {
      assert.deepEqual(counts, { "classic.untrapped.sidt": 1, "classic.sidtLeak": 1 });
    }
    return { console: os.console, idtBase: os.idtBase };
  });
  const bytes = (va: number) => {
    const hi = linearHigh32(va);
    const lo = va >>> 0;
    return String.fromCharCode(
      ...[0, 8, 16, 24].map((s) => (lo >>> s) & 0xff),
      ...[0, 8, 16, 24].map((s) => (hi >>> s) & 0xff),
    );
  };
  assert.equal(consoles[0]!.console, bytes(consoles[0]!.idtBase));
  assert.equal(consoles[1]!.console, "\0\0\0\0\0\x80\xff\xff"); // 0xffff_8000_0000_0000
  assert.equal(bytes(MONITOR_IDT_BASE), consoles[1]!.console);
});

Deno.test("classic: the PCB holds what the guest believes; the real IDTR and GDTR are the monitor's", () => {
  const { lab, os } = boot("classic");
  const platform = classicOf(lab);
  // getpid(), then a spin of 100000 rounds, then exit(0).
  const pid = os.spawnProgram([
    ...[0xb8, 39, 0, 0, 0, 0xcd, 0x80],
    ...[0xb9, 0xa0, 0x86, 0x01, 0, 0x83, 0xe9, 0x01, 0x75, 0xfb],
    ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
  ]);
  // Boot: LIDT trapped (the only privileged instruction of GuestOs.boot besides CR3).
  assert.equal(lab.stats.get("classic.emulate.lidt"), 1);
  assert.equal(platform.interpreter.idtrBase, MONITOR_IDT_BASE);
  assert.equal(platform.interpreter.gdtrBase, MONITOR_GDT_BASE);
  assert.deepEqual(platform.guestCpuState(), {
    kernelMode: true,
    interruptsEnabled: false,
    idtBase: os.idtBase,
    kernelStack: 0,
    cr3: platform.mmu.guestCtl.cr3,
    cr2: 0,
    pending: [],
    keptIn: "monitor",
  });
  assert.equal(platform.guestKernelCpl, 1);
  // 400 instructions in, the program is back in user mode after getpid, spinning. Its
  // kernel's iretq did not trap, so the PCB still holds what the system call's interrupt
  // gate left: kernel mode, IF = 0, while the processor runs the user code at CPL 3.
  assert.equal(os.run(400).outcome, "limit");
  assert.equal(platform.cpu.ctl.cpl, 3);
  const stale = platform.guestCpuState();
  assert.deepEqual([stale.kernelMode, stale.interruptsEnabled], [true, false]);
  assert.equal(stale.kernelStack, os.threads.get(pid)!.kernelTop);
  // A timer tick traps from CPL 3: the monitor learns user mode, IF on, and reflects the
  // tick at once (nothing held). (The run's bound is the tick: the guest's handler has
  // not run an instruction yet.)
  platform.board.setTimerPeriod(10);
  const counts = measure(lab, /^classic\.(trap|reflect|held)$/, () => os.run(10));
  assert.deepEqual(counts, { "classic.trap": 1, "classic.reflect": 1 });
  assert.equal(platform.interpreter.deliveries[0x20], 1);
  assert.equal(platform.interpreter.rip, lab.kernel.code.text.stub(0x20));
  const inHandler = platform.guestCpuState();
  assert.deepEqual([inHandler.kernelMode, inHandler.interruptsEnabled], [true, false]);
});

// --- The whole example guest --------------------------------------------------------------

Deno.test("classic: the example guest ends as natively: console, exits, vectors; traps add up", () => {
  const runs = (["native", "classic"] as const).map((name) => {
    const { lab, os } = boot(name);
    lab.platform.board.setTimerPeriod(10000);
    lab.platform.board.type("hello\n", 5000, 3000);
    for (const program of [EXAMPLE.echo, EXAMPLE.spin, EXAMPLE.spin, EXAMPLE.bad]) {
      os.spawnProgram(program);
    }
    const deliveries = lab.platform.interpreter.deliveries.slice();
    const counts = lab.measure(() => {
      assert.deepEqual(os.run(5_000_000), { outcome: "done", reason: "" });
    });
    const delivered = lab.platform.interpreter.deliveries.map((n, v) => n - deliveries[v]!);
    return { os, counts, delivered };
  });
  const [native, classic] = runs as [typeof runs[0], typeof runs[0]];
  assert.equal(classic.os.console, "hello\n");
  assert.equal(classic.os.console, native.os.console);
  assert.deepEqual(classic.os.exits, native.os.exits);
  assert.deepEqual(classic.os.vectorCounts, native.os.vectorCounts);
  const guest = (counts: Record<string, number>) =>
    Object.fromEntries(Object.entries(counts).filter(([n]) => n.startsWith("guest.")));
  assert.deepEqual(guest(classic.counts), guest(native.counts));
  // Every vector the guest kernel saw was reflected by the monitor (the processor itself
  // delivered none), and natively by the processor: the same per-vector counts.
  const c = classic.counts;
  assert.equal(c["cpu.interrupts"] ?? 0, 0);
  assert.deepEqual(classic.delivered, native.delivered);
  const seen = [...classic.os.vectorCounts].reduce((a, b) => a + b, 0);
  assert.equal(c["classic.reflect"], seen);
  assert.equal(seen, 80 + 6 + 15 + 1); // ticks, keys, system calls, the SIGSEGV's #PF
  // Every trap is one exit; the emulations and the #PF, CR3 and INT traps add up to it.
  const emulated = ["cli", "sti", "hlt", "lidt", "in", "out", "iret"]
    .reduce((sum, n) => sum + (c[`classic.emulate.${n}`] ?? 0), 0);
  // A key arrived while the kernel handled a tick (virtual IF = 0): held, then taken at
  // the next trap from user mode (a #PF of the program the tick switched to), which ran
  // again after the guest's keyboard handler: one trap more than the sum of the kinds.
  assert.equal(c["exit.total"], c["classic.trap"]);
  assert.equal(c["classic.held"], 1);
  assert.equal(c["classic.deferred"], 1);
  assert.equal(
    c["classic.trap"],
    c["exit.pf"]! + c["exit.cr3"]! + c["exit.cr3Read"]! + emulated + 15 + 80 + 6 + 1,
  );
  // Each write() (6 of them) took the console lock: every one saw "interrupts on".
  assert.equal(native.os.irqSaveSawEnabled, 0);
  assert.equal(classic.os.irqSaveSawEnabled, 6);
  assert.equal(native.counts["divergence.irqSaveSawIf"] ?? 0, 0);
  assert.equal(c["divergence.irqSaveSawIf"], 6);
  assert.equal(c["classic.popfIfLost"], 6);
  assert.equal(c["classic.pushfIfWrong"], 6);
  assert.equal(c["classic.emulate.in"], 6); // one `in al, 0x60` per key
  assert.equal(c["classic.emulate.out"], 6 + 80 + 6); // serial bytes, EOIs of ticks and keys
  assert.equal(c["classic.emulate.cli"], 6);
});

// --- Bad input ----------------------------------------------------------------------------

// Points the vCPU at kernel text `rip` at CPL 1 on the idle thread's stack (whose top
// holds `returnTo`), RDI = `rdi`, and runs the guest (call after `os.run` started it).
function hijack(
  lab: Lab,
  os: GuestOs,
  rip: number,
  rdi: number,
  returnTo: number,
): number {
  const platform = lab.platform;
  const it = platform.interpreter;
  const top = os.threads.get(0)!.kernelTop;
  write64(lab, top - 8, returnTo);
  it.rip = rip;
  it.setReg(7, rdi >>> 0, linearHigh32(rdi));
  it.setReg(4, (top - 8) >>> 0, linearHigh32(top - 8));
  platform.cpu.ctl.cpl = 1;
  return platform.runGuest(1000);
}

Deno.test("classic: hlt with the guest's virtual IF = 0 takes the vCPU down with a reason", () => {
  const { lab, os } = boot("classic");
  os.spawnProgram(EXAMPLE.spin);
  const text = lab.kernel.code.text;
  const hlt = text.entry("idle") + 1; // `sti; hlt`
  assert.equal(os.run(50).outcome, "limit"); // the spinner runs in user mode
  let outcome = 0;
  // irqSave (`pushfq; pop rax; cli; ret`) returning into the HLT: cli, then hlt. (PUSHF
  // shows the real IF = 1, right this time: the spinner's traps set the virtual IF.)
  const counts = measure(lab, /^classic\.(emulate|untrapped|pushf)/, () => {
    outcome = hijack(lab, os, text.entry("irqSave"), 0, hlt);
  });
  assert.equal(outcome, RUN_CRASHED);
  assert.equal(
    lab.crashReason,
    `hlt at ${formatLinear(hlt)} with the guest's virtual IF = 0: the vCPU is down, ` +
      `nothing can wake it (the classic monitor, as Xen's hvm_hlt)`,
  );
  assert.deepEqual(counts, {
    "classic.untrapped.pushf": 1,
    "classic.emulate.cli": 1,
    "classic.emulate.hlt": 1,
  });
});

Deno.test("classic: a user program's undecodable opcode and privileged instructions are reflected (#UD, #GP)", () => {
  const { lab, os } = boot("classic");
  os.spawnProgram([0x06]); // push es: invalid in 64-bit mode
  os.spawnProgram([0xfa]); // cli at CPL 3
  os.spawnProgram([0xe4, 0x60]); // in al, 0x60 at CPL 3
  os.spawnProgram([0xf4]); // hlt at CPL 3
  const counts = measure(
    lab,
    /^classic\.(reflect|emulate\.(cli|sti|hlt|in|out|iret|lidt))$/,
    () => {
      assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
    },
  );
  assert.deepEqual(os.exits, [
    { pid: 1, exitCode: 0, signal: 11, reason: "vector 6 in user mode" },
    { pid: 2, exitCode: 0, signal: 11, reason: "vector 13 in user mode" },
    { pid: 3, exitCode: 0, signal: 11, reason: "vector 13 in user mode" },
    { pid: 4, exitCode: 0, signal: 11, reason: "vector 13 in user mode" },
  ]);
  // Nothing was emulated: from user mode the #GP is the guest's, not the monitor's.
  assert.deepEqual(counts, { "classic.reflect": 4 });
  assert.equal(os.vectorCounts[6], 1);
  assert.equal(os.vectorCounts[13], 3);
});

Deno.test("classic: SYSCALL from user mode enters the guest kernel at its LSTAR, as natively", () => {
  const reasons = (["native", "classic"] as const).map((name) => {
    const { lab, os } = boot(name);
    os.spawnProgram([0x0f, 0x05]); // syscall: this kernel leaves IA32_LSTAR at 0
    const counts = measure(lab, /^classic\.emulate\.sys/, () => {
      assert.equal(os.run(100_000).outcome, "crashed");
    });
    if (name === "classic") assert.deepEqual(counts, { "classic.emulate.syscall": 1 });
    return lab.crashReason;
  });
  // SYSCALL switches no stack: the fetch at RIP 0 in kernel mode faults, and that #PF is
  // delivered on the user's stack, never touched, so not present: a #PF while delivering a
  // #PF is a double fault, whose gate this kernel leaves empty: a triple fault, natively
  // and under the monitor alike.
  assert.equal(
    reasons[0],
    "triple fault delivering vector 14 at 0x0000000000000000 (cr2 0x0000000000000000): " +
      "a fault while delivering a double fault",
  );
  assert.equal(
    reasons[1],
    "triple fault reflecting a double fault at 0x0000000000000000: vector 13 (error code 67, " +
      "cr2 0x0000000000000000)",
  );
});

Deno.test("classic: lidt of a pseudo-descriptor on an unmapped page: #PF reflected, the kernel oopses", () => {
  const { lab, os } = boot("classic");
  os.spawnProgram(EXAMPLE.spin);
  const platform = classicOf(lab);
  const text = lab.kernel.code.text;
  const unmapped = 0x9000_0000_0000; // 0xffff_9000_0000_0000: nothing maps it
  assert.equal(os.run(50).outcome, "limit");
  const outcome = hijack(lab, os, text.entry("loadIdt"), unmapped, text.entry("idle"));
  assert.equal(outcome, RUN_CRASHED);
  // Error code 0: a supervisor read of a not-present page; CR2 the descriptor's address.
  assert.equal(lab.crashReason, "guest kernel oops: vector 14 error code 0 in kernel mode");
  assert.equal(platform.guestCr2, unmapped);
  assert.equal(platform.guestCpuState().idtBase, os.idtBase); // the IDTR did not change
  assert.equal(lab.stats.get("classic.emulate.lidt"), 2); // boot's, and this one
});

Deno.test("classic: a fault while reflecting: #PF on the guest's RSP0 twice is a double fault, then a triple", () => {
  const spinThenGetpid = [
    ...[0xb9, 0x10, 0x27, 0, 0, 0x83, 0xe9, 0x01, 0x75, 0xfb], // mov ecx, 10000; loop
    ...GETPID_EXIT,
  ];
  for (const name of ["native", "classic"] as const) {
    const { lab, os } = boot(name);
    os.spawnProgram(spinThenGetpid);
    assert.equal(os.run(100).outcome, "limit");
    lab.platform.setTssRsp0(0x9000_0000_0000); // the kernel stack is gone
    const result = os.run(1_000_000);
    assert.equal(result.outcome, "crashed");
    assert.match(result.reason, /^triple fault/, name);
    if (name === "classic") {
      assert.match(result.reason, /reflecting a double fault at 0x000000000040000f/); // the INT
    }
  }
});

Deno.test("classic: a kernel spinning after cli stops at the step bound, saying the virtual IF is 0", () => {
  const { lab, os } = boot("classic");
  os.spawnProgram(EXAMPLE.spin);
  assert.equal(os.run(50).outcome, "limit");
  const platform = classicOf(lab);
  const it = platform.interpreter;
  const text = lab.kernel.code.text;
  const top = os.threads.get(0)!.kernelTop;
  // irqSave (`pushfq; pop rax; cli; ret`) returning into itself, 64 times: a kernel that
  // spins with interrupts off for longer than the step bound.
  for (let k = 1; k <= 64; k++) write64(lab, top - 8 * k, text.entry("irqSave"));
  it.rip = text.entry("irqSave");
  it.setReg(4, (top - 8 * 64) >>> 0, linearHigh32(top - 8 * 64));
  platform.cpu.ctl.cpl = 1;
  platform.board.setTimerPeriod(100);
  const counts = measure(lab, /^classic\.(held|reflect)$/, () => {
    assert.equal(platform.runGuest(150), RUN_LIMIT);
  });
  assert.deepEqual(counts, { "classic.held": 1 }); // the tick at +100 waits in the PCB
  assert.deepEqual(platform.guestCpuState().pending, [0x20]);
  assert.match(
    platform.stopReason,
    /^step bound: 150 instructions ran without finishing \(now in kernel code at .*\); the guest kernel's virtual IF is 0 \(it ran cli\), so the classic monitor holds every device interrupt pending$/,
  );
});

Deno.test("classic: createLab and the platform lists know the classic platform", () => {
  const lab = createLab({ platform: "classic", memoryMiB: 4 });
  assert.equal(lab.platform.name, "classic");
  assert.ok(lab.platform instanceof ClassicPlatform);
  assert.equal(lab.platform.guestKernelCpl, 1);
  // The memory side is the shadow code's: a guest write works, behind hidden faults.
  const pid = lab.spawn();
  lab.writeU32(pid, 0x600000, 42);
  assert.equal(lab.readU32(pid, 0x600000), 42);
  assert.ok(lab.stats.get("classic.emulate.movcr") > 0);
  assert.equal(lab.stats.get("exit.total"), lab.stats.get("classic.trap"));
});
