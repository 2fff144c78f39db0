/**
 * The instruction-level guest (lib/guest/guest_os.ts) on the bare processor, through the
 * flows of the lecture slides, with every number worked by hand: the keyboard read (IRQ 1
 * through the IDT, the driver's `in al, 0x60`, the byte in the reader's buffer), a system
 * call (the trap frame on the kernel stack, RAX after IRETQ), a protection fault in user
 * mode reflected into the guest kernel, timer-driven round robin, a blocking read with the
 * idle thread halted; and the bad input of issue 9: an opcode nobody decodes (#UD), a
 * privileged instruction at CPL 3 (#GP), a fault while delivering a fault (#DF, then a
 * triple fault that crashes the domain), a kernel spinning with IF = 0 and a user program
 * spinning with the timer off (a step bound with a reason), an idle guest with nothing to
 * wait for. None of it may throw out of the simulator.
 *
 * Virtual time (`board.now`) counts the instructions the processor retires at guest level.
 * The paths the numbers below are made of (lib/guest/entry_text.ts):
 * - ENTRY = 20: a stub (`push 0` unless the CPU pushed an error code, `push vector`,
 *   `jmp common`: 3, or 2 for #GP/#PF) and `common` (15 pushes, `mov rdi, rsp`, `call`:
 *   17). The call lands in the service range: the kernel's C code runs in TypeScript, and
 *   its RET (counted in cpu.instructions) and the driver routines it calls (`in`, `out`)
 *   take no guest time.
 * - EXIT = 17: `commonTail` (15 pops, `add rsp, 16`, `iretq`).
 * An interrupt or exception delivery retires no instruction; INT 0x80 retires one.
 */

import assert from "node:assert/strict";
import { ACCESS_READ, ACCESS_WRITE } from "../../lib/x86/access.ts";
import { formatLinear, linearHigh32 } from "../../lib/x86/address.ts";
import { KERNEL_CS, KERNEL_SS, USER_CS, USER_SS } from "../../lib/x86/interpreter.ts";
import { FRAME_QWORDS, FRAME_SLOT } from "../../lib/guest/entry_text.ts";
import { GuestOs, PROGRAM_DATA } from "../../lib/guest/guest_os.ts";
import { STACK_TOP } from "../../lib/guest/layout.ts";
import {
  echoProgram,
  getpidLoopProgram,
  PRIVILEGED_KINDS,
  privilegedProgram,
  ProgramAssembler,
  readOneProgram,
  spinForeverProgram,
  spinnerProgram,
  storeToTextProgram,
  undefinedProgram,
} from "../../lib/guest/programs.ts";
import { createLab, type Lab } from "../../lib/lab/lab.ts";

const ENTRY = 20;
const EXIT = 17;

function bootNative(): { lab: Lab; os: GuestOs } {
  const lab = createLab({ platform: "native", memoryMiB: 8 });
  const os = GuestOs.forLab(lab);
  assert.equal(lab.crashReason, "");
  return { lab, os };
}

// A kernel read of a 64-bit value, as its two halves [low, high].
function read64(lab: Lab, va: number): [number, number] {
  assert.equal(lab.platform.access(va, 8, ACCESS_READ, 0, 0, false), 0);
  return [lab.platform.cpu.data, lab.platform.cpu.dataHi];
}

function write32(lab: Lab, va: number, value: number): void {
  assert.equal(lab.platform.access(va, 4, ACCESS_WRITE, value >>> 0, 0, false), 0);
}

// The 16-byte IDT gate of `vector`: its handler, selector and attribute bits.
function gateOf(lab: Lab, os: GuestOs, vector: number) {
  const [low, high] = read64(lab, os.idtBase + 16 * vector);
  const [offsetHigh] = read64(lab, os.idtBase + 16 * vector + 8);
  return {
    handler: (offsetHigh & 0xffff) * 2 ** 32 + (((high & 0xffff0000) | (low & 0xffff)) >>> 0),
    selector: low >>> 16,
    present: (high >>> 15) & 1,
    dpl: (high >>> 13) & 3,
    type: (high >>> 8) & 0xf,
  };
}

// The saved trap frame below `kernelTop`, slot by slot, as [low, high] halves.
function frameAt(lab: Lab, kernelTop: number): Record<keyof typeof FRAME_SLOT, [number, number]> {
  const frame = kernelTop - FRAME_QWORDS * 8;
  return Object.fromEntries(
    Object.entries(FRAME_SLOT).map(([name, slot]) => [name, read64(lab, frame + 8 * slot)]),
  ) as Record<keyof typeof FRAME_SLOT, [number, number]>;
}

function counter(lab: Lab, name: string): number {
  return lab.stats.get(name);
}

Deno.test("keyboard read: IRQ 1 through the IDT, in al 0x60, the byte in the reader's buffer, read() = 1", () => {
  const { lab, os } = bootNative();
  const it = lab.platform.interpreter;
  // The gate the processor will use: an interrupt gate (type 0xE, IF cleared on entry),
  // DPL 0, present, KERNEL_CS, aimed at the kernel's stub for vector 0x21.
  assert.deepEqual(gateOf(lab, os, 0x21), {
    handler: lab.kernel.code.text.stub(0x21),
    selector: KERNEL_CS,
    present: 1,
    dpl: 0,
    type: 0xe,
  });
  lab.platform.board.type("x", 1000, 0);
  const pid = os.spawnProgram(readOneProgram().bytes);
  const result = os.run(5000);
  // The program ends in `jmp $` at offset 0x1e.
  assert.deepEqual(result, {
    outcome: "limit",
    reason: "step bound: 5000 instructions ran without finishing (now in user code at " +
      "0x000000000040001e)",
  });
  assert.equal(it.deliveries[0x21], 1); // one IDT delivery of IRQ 1
  assert.equal(os.vectorCounts[0x21], 1); // the kernel's handler ran once
  assert.equal(os.vectorCounts[0x80], 2); // read, write
  assert.equal(counter(lab, "cpu.interrupts"), 1);
  assert.equal(counter(lab, "dev.keyboardBytes"), 1); // the driver's `in al, 0x60`
  assert.equal(counter(lab, "dev.eoi"), 1); // and its `out 0x20, al`
  assert.equal(counter(lab, "guest.keyboardIrq"), 1);
  assert.equal(it.regLo(3), 1); // EBX: read() returned 1
  // The byte is in the reader's buffer, seen as the reader sees it (a user access).
  assert.equal(lab.platform.access(PROGRAM_DATA, 1, ACCESS_READ, 0, 0, true), 0);
  assert.equal(lab.platform.cpu.data & 0xff, 0x78);
  assert.equal(os.console, "x"); // echoed by write(1, buf, 1)
  assert.equal(lab.platform.board.pendingKeys, 0);
  // Before the key: EXIT into the program, 5 instructions to its int 0x80, ENTRY, read()
  // blocks, EXIT into the idle thread, `sti; hlt` = 17 + 5 + 20 + 17 + 2 = 61. The
  // processor then sleeps until the key at 1000.
  assert.equal(counter(lab, "cpu.idle"), 1000 - 61);
  assert.equal(counter(lab, "guest.threadSwitch"), 3); // the program, idle, the program
  assert.equal(os.currentPid, pid);
});

Deno.test("system call: getpid's trap frame on the kernel stack, RAX = pid after IRETQ", () => {
  const { lab, os } = bootNative();
  const it = lab.platform.interpreter;
  // INT 0x80 is allowed from CPL 3 because its gate has DPL 3.
  assert.equal(gateOf(lab, os, 0x80).dpl, 3);
  assert.equal(gateOf(lab, os, 0x80).handler, lab.kernel.code.text.stub(0x80));
  const a = new ProgramAssembler();
  a.movImm("edi", 0x1234).movImm("eax", 39).int(0x80).label("spin").jmp("spin");
  const pid = os.spawnProgram(a.assemble("getpid, spin").bytes);
  const kernelTop = os.threads.get(pid)!.kernelTop;
  const result = os.run(1000);
  assert.equal(result.outcome, "limit");
  assert.equal(it.regLo(0), pid); // EAX after IRETQ
  assert.equal(it.rip, 0x40000c); // spinning after the int 0x80
  assert.equal(it.deliveries[0x80], 1);
  assert.equal(counter(lab, "cpu.softwareInterrupts"), 1);
  assert.equal(counter(lab, "guest.syscall"), 1);
  // The frame stays on the kernel stack after the return: the processor pushed SS, RSP,
  // RFLAGS, CS, RIP at RSP0 (the thread's kernel top), the stub the error code and the
  // vector, `common` the 15 registers; the kernel stored its result in the RAX slot.
  const frame = frameAt(lab, kernelTop);
  assert.deepEqual(frame.ss, [USER_SS, 0]);
  assert.deepEqual(frame.rsp, [STACK_TOP >>> 0, linearHigh32(STACK_TOP)]);
  assert.deepEqual(frame.rflags, [0x202, 0]); // IF set, as in user mode
  assert.deepEqual(frame.cs, [USER_CS, 0]);
  assert.deepEqual(frame.rip, [0x40000c, 0]); // the instruction after int 0x80
  assert.deepEqual(frame.errorCode, [0, 0]);
  assert.deepEqual(frame.vector, [0x80, 0]);
  assert.deepEqual(frame.rax, [pid, 0]); // getpid's result, which commonTail pops
  assert.deepEqual(frame.rdi, [0x1234, 0]); // the caller's registers, saved
  for (const name of ["r15", "r8", "rsi", "rbx", "rdx", "rcx"] as const) {
    assert.deepEqual(frame[name], [0, 0], name);
  }
  // Below the frame, `common`'s call left its return address: commonTail.
  const tail = lab.kernel.code.text.entry("commonTail");
  assert.deepEqual(read64(lab, kernelTop - FRAME_QWORDS * 8 - 8), [
    tail >>> 0,
    linearHigh32(tail),
  ]);
  // What the guest set up for its processor, kept by the processor itself. (Between runs
  // the processor is the lab's: kernel mode, IF = 0, so only the tables are compared.)
  const state = lab.platform.guestCpuState();
  assert.deepEqual([state.idtBase, state.kernelStack, state.cr2, state.pending, state.keptIn], [
    os.idtBase,
    kernelTop,
    0,
    [],
    "processor",
  ]);
});

Deno.test("system call: five getpid calls and exit(pid) end the program with its pid", () => {
  const { lab, os } = bootNative();
  const pid = os.spawnProgram(getpidLoopProgram(5).bytes);
  assert.deepEqual(os.run(10_000), { outcome: "done", reason: "" });
  assert.deepEqual(os.exits, [{ pid, exitCode: pid, signal: 0, reason: "" }]);
  assert.equal(os.vectorCounts[0x80], 6);
  assert.equal(counter(lab, "guest.syscall"), 6);
  // EXIT, then per call 4 user instructions (mov, int, sub, jnz) + ENTRY + EXIT, the
  // exit: mov ebx + mov edi + mov eax + int 0x80 + ENTRY (nothing left to run).
  assert.equal(lab.platform.board.now, EXIT + 1 + 5 * (4 + ENTRY + EXIT) + 3 + ENTRY);
});

Deno.test("protection fault: a store to the program's text is #PF(P|W|U) reflected to the kernel: SIGSEGV", () => {
  const { lab, os } = bootNative();
  const pid = os.spawnProgram(storeToTextProgram().bytes);
  const kernelTop = os.threads.get(pid)!.kernelTop;
  assert.deepEqual(os.run(1000), { outcome: "done", reason: "" });
  assert.deepEqual(os.exits, [{
    pid,
    exitCode: 0,
    signal: 11,
    reason: "SEGV_ACCERR at 0x0000000000400000",
  }]);
  assert.equal(os.vectorCounts[14], 1);
  assert.equal(lab.platform.interpreter.deliveries[14], 1);
  assert.equal(lab.platform.guestCr2, 0x400000);
  assert.equal(counter(lab, "guest.fault.protection"), 1);
  assert.equal(counter(lab, "guest.userException"), 1);
  // Post mortem, the frame is still in the freed task page: the processor pushed error
  // code 0x7 (present | write | user) and the faulting RIP; the stub pushed only 14.
  const frame = frameAt(lab, kernelTop);
  assert.deepEqual([frame.vector, frame.errorCode, frame.rip, frame.cs], [
    [14, 0],
    [7, 0],
    [0x400000, 0],
    [USER_CS, 0],
  ]);
});

Deno.test("scheduling: two spinners and a timer every 500: 8 ticks, 11 thread switches, done at 4378", () => {
  const { lab, os } = bootNative();
  lab.platform.board.setTimerPeriod(500);
  const first = os.spawnProgram(spinnerProgram(1000).bytes);
  const second = os.spawnProgram(spinnerProgram(1000).bytes);
  assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
  // Each spinner retires 2 * 1000 + 4 instructions. Time: EXIT into the first, the
  // spinners' 4008, ENTRY + EXIT per tick, the first exit (ENTRY + EXIT into the second),
  // the second exit (ENTRY, then nothing is left): 17 + 4008 + 37 t + 37 + 20. Ticks come
  // at 500, 1000, ...: t = 8 (the end, 4378, is before 4500).
  const ticks = 8;
  assert.equal(lab.platform.board.now, EXIT + 4008 + ticks * (ENTRY + EXIT) + ENTRY + EXIT + ENTRY);
  assert.equal(lab.platform.board.now, 4378);
  assert.equal(os.ticks, ticks);
  assert.equal(lab.platform.interpreter.deliveries[0x20], ticks);
  assert.equal(counter(lab, "dev.timerTicks"), ticks);
  assert.equal(counter(lab, "dev.eoi"), ticks);
  // Switches: into the first, one per tick (two runnable), first exit -> second,
  // second exit -> idle.
  assert.equal(counter(lab, "guest.threadSwitch"), 1 + ticks + 1 + 1);
  assert.deepEqual(os.exits.map((e) => [e.pid, e.exitCode, e.signal]), [
    [first, 0, 0],
    [second, 0, 0],
  ]);
  assert.equal(counter(lab, "cpu.idle"), 0);
});

Deno.test("blocking read: the idle thread halts between keys; cpu.idle is the time it slept", () => {
  const { lab, os } = bootNative();
  lab.platform.board.type("hi\n", 2000, 1000); // keys at 2000, 3000, 4000
  const pid = os.spawnProgram(echoProgram().bytes);
  assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
  assert.equal(os.console, "hi\n");
  assert.deepEqual(os.exits, [{ pid, exitCode: 0, signal: 0, reason: "" }]);
  // Before the first key: 17 + 5 + 20 + 17 + 2 = 61 (as in the keyboard read). Per key
  // that does not end it: the IRQ's ENTRY + EXIT into the echo (read returns 1), write
  // (3 + ENTRY + EXIT), `cmp; jnz` (2), the next read (4 + ENTRY, it blocks), EXIT into
  // idle, whose frame resumes after its HLT: `jmp idle; sti; hlt` (3) = 123. The newline:
  // 37 + 40 + 2 + `xor; mov; int` (3) + ENTRY = 102.
  const perKey = ENTRY + EXIT + (3 + ENTRY + EXIT) + 2 + (4 + ENTRY) + EXIT + 3;
  assert.equal(perKey, 123);
  assert.equal(lab.platform.board.now, 4000 + ENTRY + EXIT + (3 + ENTRY + EXIT) + 2 + 3 + ENTRY);
  assert.equal(counter(lab, "cpu.idle"), (2000 - 61) + 2 * (1000 - perKey));
  assert.equal(counter(lab, "guest.keyboardIrq"), 3);
  assert.equal(os.vectorCounts[0x21], 3);
  assert.equal(os.vectorCounts[0x80], 7); // 3 reads, 3 writes, exit
  // Into the echo, then per key idle -> echo and echo -> idle, the last exit -> idle.
  assert.equal(counter(lab, "guest.threadSwitch"), 1 + 1 + 2 * 2 + 1 + 1);
});

Deno.test("bad input: ud2 and an opcode the decoder does not know are #UD; the program dies, the guest goes on", () => {
  const { lab, os } = bootNative();
  const ud2 = os.spawnProgram(undefinedProgram("ud2").bytes);
  const x87 = os.spawnProgram(undefinedProgram("x87").bytes);
  const ok = os.spawnProgram(getpidLoopProgram(1).bytes);
  assert.deepEqual(os.run(10_000), { outcome: "done", reason: "" });
  assert.deepEqual(os.exits, [
    { pid: ud2, exitCode: 0, signal: 11, reason: "vector 6 in user mode" },
    { pid: x87, exitCode: 0, signal: 11, reason: "vector 6 in user mode" },
    { pid: ok, exitCode: ok, signal: 0, reason: "" },
  ]);
  assert.equal(os.vectorCounts[6], 2);
  assert.equal(lab.platform.interpreter.deliveries[6], 2);
  assert.equal(counter(lab, "cpu.ud"), 2);
  assert.equal(lab.crashReason, "");
});

// read(0, buf, 1) after `spin` rounds of a count-down, then exit(the byte read).
function readByteThenExit(spin: number): Uint8Array {
  const a = new ProgramAssembler();
  a.movImm("ecx", spin).label("again").subImm("ecx", 1).jnz("again");
  a.movImm("esi", PROGRAM_DATA).xor("edi", "edi").movImm("edx", 1).syscall(0);
  a.movzxByte("edi", "esi", 0).syscall(60);
  return a.assemble(`read a byte after ${spin} rounds`).bytes;
}

Deno.test("read(): a byte taken by a running reader leaves a blocked reader blocked, not returning 0", () => {
  const { lab, os } = bootNative();
  const blocked = os.spawnProgram(readByteThenExit(1)); // blocks at once
  const late = os.spawnProgram(readByteThenExit(2000)); // still spinning when 'a' arrives
  lab.platform.board.type("ab", 1000, 20_000); // 'a' at 1000, 'b' at 21000; no timer
  assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
  // The late reader calls read() with 'a' waiting and takes it; the blocked one is not
  // runnable with the input empty, so it waits for 'b'.
  assert.deepEqual(os.exits.map((e) => [e.pid, e.exitCode]), [[late, 0x61], [blocked, 0x62]]);
  assert.equal(counter(lab, "guest.keyboardIrq"), 2);
  assert.equal(os.input.length, 0);
});

Deno.test("bad input: an encoding the interpreter decodes but does not run is #UD in a user program", () => {
  const { lab, os } = bootNative();
  const push16 = os.spawnProgram([0x66, 0x50]); // push ax: decoded, 16-bit PUSH not modelled
  const iretw = os.spawnProgram([0x66, 0xcf]); // iretw
  assert.deepEqual(os.run(10_000), { outcome: "done", reason: "" });
  assert.deepEqual(os.exits, [
    { pid: push16, exitCode: 0, signal: 11, reason: "vector 6 in user mode" },
    { pid: iretw, exitCode: 0, signal: 11, reason: "vector 6 in user mode" },
  ]);
  assert.equal(lab.platform.interpreter.deliveries[6], 2);
  assert.equal(counter(lab, "cpu.ud"), 2);
  assert.equal(lab.crashReason, "");
});

Deno.test("bad input: cli, hlt, in, mov cr3, lidt, out at CPL 3 are #GP(0); each program dies", () => {
  const { lab, os } = bootNative();
  const pids = PRIVILEGED_KINDS.map((kind) => os.spawnProgram(privilegedProgram(kind).bytes));
  assert.deepEqual(os.run(10_000), { outcome: "done", reason: "" });
  assert.deepEqual(
    os.exits,
    pids.map((pid) => ({ pid, exitCode: 0, signal: 11, reason: "vector 13 in user mode" })),
  );
  assert.equal(os.vectorCounts[13], PRIVILEGED_KINDS.length);
  assert.equal(counter(lab, "cpu.gp"), PRIVILEGED_KINDS.length);
  assert.equal(counter(lab, "cpu.portIo"), 0); // neither `in` nor `out` reached a port
});

Deno.test("bad input: #GP with its gate not present is #NP -> #DF; no #DF gate -> triple fault, domain crash", () => {
  const { lab, os } = bootNative();
  os.spawnProgram(privilegedProgram("cli").bytes);
  // Clear the P bit of the #GP gate. The kernel installs no #DF gate (Linux has one,
  // on an IST stack): gate 8 is zero.
  const attributes = os.idtBase + 16 * 13 + 4;
  write32(lab, attributes, read64(lab, attributes)[0] & ~0x8000);
  assert.deepEqual([gateOf(lab, os, 13).present, read64(lab, os.idtBase + 16 * 8)], [0, [0, 0]]);
  const reason = "triple fault delivering vector 13 at 0x0000000000400000: a fault while " +
    "delivering a double fault";
  assert.deepEqual(os.run(10_000), { outcome: "crashed", reason });
  // cli's #GP; delivering it: #NP (contributory after contributory) -> #DF; delivering
  // #DF: gate 8 has type 0 -> #GP -> shutdown (SDM Vol. 3A 6.15, Table 6-5).
  assert.equal(counter(lab, "cpu.doubleFaults"), 1);
  assert.equal(counter(lab, "cpu.tripleFaults"), 1);
  assert.equal(counter(lab, "cpu.gp"), 2);
  assert.equal(counter(lab, "domain.crash"), 1);
  assert.equal(lab.platform.interpreter.deliveries[13] + lab.platform.interpreter.deliveries[8], 0);
  assert.equal(os.vectorCounts[13], 0);
  assert.deepEqual(os.exits, []);
  // A crashed domain stays crashed; nothing throws.
  assert.deepEqual(os.run(10_000), { outcome: "crashed", reason });
  assert.equal(lab.crashReason, reason);
});

Deno.test("bad input: a kernel spinning with IF = 0 stops at the step bound with a reason naming IF=0", () => {
  const { lab, os } = bootNative();
  lab.platform.board.setTimerPeriod(1000);
  os.spawnProgram(spinForeverProgram().bytes);
  const broken = os.spawnProgram(spinForeverProgram().bytes);
  // Model a kernel bug: the second thread's saved frame (the one commonTail will IRETQ
  // through when the scheduler first switches to it) says kernel mode with IF = 0, so the
  // thread resumes at its `jmp $` at CPL 0 with interrupts off, like a kernel thread stuck
  // in a spinlock taken with spin_lock_irqsave. Only guest memory is changed.
  const thread = os.threads.get(broken)!;
  const frame = thread.savedRsp + 8;
  const put64 = (slot: number, value: number) =>
    lab.platform.access(frame + 8 * slot, 8, ACCESS_WRITE, value >>> 0, linearHigh32(value), false);
  put64(FRAME_SLOT.cs, KERNEL_CS);
  put64(FRAME_SLOT.ss, KERNEL_SS);
  put64(FRAME_SLOT.rflags, 0x2);
  put64(FRAME_SLOT.rsp, thread.kernelTop);
  const result = os.run(10_000);
  assert.deepEqual(result, {
    outcome: "limit",
    reason: "step bound: 10000 instructions ran without finishing; the guest is spinning in " +
      "kernel code at 0x0000000000400000 with interrupts disabled (IF=0), so no timer " +
      "interrupt can preempt it",
  });
  // One tick switched to the broken thread; the later ones stay pending at the processor.
  assert.equal(os.ticks, 1);
  assert.equal(lab.platform.interpreter.deliveries[0x20], 1);
  assert.equal(lab.platform.interpreter.pendingInterrupt, 0x20);
  assert.equal(lab.platform.cpu.ctl.cpl, 0);
  assert.equal(os.currentPid, broken);
  assert.equal(lab.crashReason, "");
});

Deno.test("bad input: a user program spinning with the timer off stops at the step bound, and can go on", () => {
  const { lab, os } = bootNative();
  os.spawnProgram(spinForeverProgram().bytes);
  const reason = "step bound: 5000 instructions ran without finishing (now in user code at " +
    "0x0000000000400000)";
  assert.deepEqual(os.run(5000), { outcome: "limit", reason });
  assert.deepEqual(os.run(5000), { outcome: "limit", reason });
  assert.equal(lab.platform.board.now, 10_000);
  assert.equal(counter(lab, "guest.threadSwitch"), 1);
});

Deno.test("an idle guest with nothing scheduled stops as idle; a key typed later wakes it", () => {
  const { lab, os } = bootNative();
  assert.deepEqual(os.run(1000), { outcome: "done", reason: "" }); // no program at all
  os.spawnProgram(echoProgram().bytes);
  // The idle thread's `sti; hlt` leaves RIP after the HLT.
  const afterHlt = lab.kernel.code.text.entry("idle") + 2;
  assert.deepEqual(os.run(100_000), {
    outcome: "idle",
    reason: `idle at ${
      formatLinear(afterHlt)
    }: the guest waits for an interrupt and no device event is scheduled`,
  });
  assert.equal(lab.platform.board.now, 61); // as in the keyboard read: nothing slept
  lab.platform.board.type("\n", 100, 0);
  assert.deepEqual(os.run(100_000), { outcome: "done", reason: "" });
  assert.equal(os.console, "\n");
  // The idle thread resumes after its HLT: `jmp idle; sti; hlt` (3), then sleeps to 100.
  assert.equal(counter(lab, "cpu.idle"), 100 - 61 - 3);
});
