/**
 * Interpreter benchmarks: the guest kernel's smallest page-table routine (one MOV store
 * and a RET, run N times per iteration) and clearing one 4 KiB page with REP STOSQ, both
 * with every page in the TLB, as a kernel that touches its tables often would have them.
 * Divide the time per iteration by N for the time per routine; the page clear is one
 * page per iteration, so its time is the time per page.
 *
 * Run: deno task bench
 */

import {
  Interpreter,
  MachineMemory,
  PagingControl,
  PTE_PRESENT,
  PTE_WRITABLE,
  pteHigh,
  pteLow,
  Stats,
  STEP_RETURN,
  Vcpu,
} from "../mod.ts";

/** Routine runs per benchmark iteration. */
const N = 1024;

const CODE = 0x0; // va 0x0000 -> pa 0x10000: the routines
const DATA = 0x1000; // va 0x1000 -> pa 0x11000: the page they write
const STORE = CODE; // mov [rdi], rsi; ret
const CLEAR = CODE + 0x10; // mov ecx, 512; mov eax, 0; rep stosq; ret

function buildInterpreter(fastStrings: boolean): Interpreter {
  const stats = new Stats();
  const memory = new MachineMemory({ frames: 64, stats });
  const link = (entry: number, to: number) => {
    memory.write32(entry, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
    memory.write32(entry + 4, pteHigh(to));
  };
  link(0x1000, 0x2000);
  link(0x2000, 0x3000);
  link(0x3000, 0x4000);
  link(0x4000, 0x10000);
  link(0x4008, 0x11000);
  const code = [
    [STORE, [0x48, 0x89, 0x37, 0xc3]],
    [CLEAR, [0xb9, 0, 2, 0, 0, 0xb8, 0, 0, 0, 0, 0xf3, 0x48, 0xab, 0xc3]],
  ] as const;
  for (const [at, bytes] of code) bytes.forEach((b, i) => memory.write8(0x10000 + at + i, b));
  const interpreter = new Interpreter(new Vcpu(memory, new PagingControl({ cr3: 0x1000 }), stats));
  interpreter.fastStrings = fastStrings;
  return interpreter;
}

const store = buildInterpreter(true);
store.setReg(6, 0x0000_5007, 0x8000_0000); // rsi: an l1e
Deno.bench("interpreter: mov [rdi], rsi; ret routine", { group: "routine" }, () => {
  for (let i = 0; i < N; i++) {
    store.setReg(7, DATA + 8 * (i & 511)); // rdi: the entry
    if (store.run(STORE) !== STEP_RETURN) throw new Error("the routine did not return");
  }
});

for (const fast of [true, false]) {
  const clear = buildInterpreter(fast);
  const name = "interpreter: rep stosq one page" + (fast ? "" : " (element by element)");
  Deno.bench(name, { group: "page", baseline: fast }, () => {
    clear.setReg(7, DATA);
    if (clear.run(CLEAR) !== STEP_RETURN) throw new Error("the routine did not return");
  });
}
