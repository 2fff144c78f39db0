/**
 * Invariant 1 of DESIGN.md: the same scenario and seed give the same guest-visible
 * outcome on every platform: every value read, every genuine #PF (process, address, error
 * code, order), every kill and exit status, and every event the guest kernel counts
 * (guest.*). Each scenario runs on every available platform (and on hvm-shadow with
 * out-of-sync L1s) and the runs are compared with the native one.
 */

import assert from "node:assert/strict";
import { AVAILABLE_PLATFORMS, createLab, type Lab } from "../../lib/lab/lab.ts";
import { PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import { checkShadows } from "../../lib/shadow/check_shadows.ts";
import { HvmShadowPlatform } from "../../lib/platform/hvm_shadow.ts";

const RW = PROT_READ | PROT_WRITE;
const DATA = 0x600000;

/** What a scenario leaves behind that the guest could observe. */
interface Outcome {
  values: number[];
  faults: string[];
  guest: Record<string, number>;
  usage: unknown;
  crash: string;
}

function outcomeOf(lab: Lab, values: number[]): Outcome {
  const guest: Record<string, number> = {};
  for (const [name, value] of Object.entries(lab.stats.nonZero())) {
    if (name.startsWith("guest.")) guest[name] = value;
  }
  return {
    values,
    faults: lab.faults.map((f) => `${f.pid} ${f.cr2.toString(16)} ${f.errorCode} ${f.kind}`),
    guest,
    usage: lab.usage(),
    crash: lab.crashReason,
  };
}

type Scenario = (lab: Lab, values: number[]) => void;

const SCENARIOS: Record<string, { memoryMiB: number; pcid?: boolean; run: Scenario }> = {
  "fork, copy-on-write on both sides, exec, exit": {
    memoryMiB: 16,
    run(lab, values) {
      const parent = lab.spawn();
      const heap = lab.mmap(parent, 64 * 4096, RW);
      lab.touch(parent, { start: heap, length: 64 * 4096, kind: "write" });
      const child = lab.fork(parent);
      lab.touch(child, {
        start: heap,
        length: 64 * 4096,
        kind: "write",
        pattern: "random",
        value: 7,
      });
      values.push(lab.touch(parent, { start: heap, length: 64 * 4096, stride: 64 }).checksum);
      values.push(lab.touch(child, { start: heap, length: 64 * 4096, stride: 64 }).checksum);
      lab.exec(child);
      values.push(lab.readU32(child, DATA));
      lab.exit(child);
      lab.exit(parent);
      lab.waitAll();
    },
  },
  "memory pressure: swap out, fork, swap in": {
    memoryMiB: 4,
    run(lab, values) {
      const parent = lab.spawn();
      const size = 5 * 1024 * 1024;
      const area = lab.mmap(parent, size, RW);
      lab.touch(parent, { start: area, length: size, kind: "write" });
      const child = lab.fork(parent);
      lab.touch(child, { start: area, length: size, kind: "write", pattern: "random", count: 300 });
      values.push(lab.touch(parent, { start: area, length: size, stride: 4096 }).checksum);
      values.push(lab.touch(child, { start: area, length: size, stride: 4096 }).checksum);
      lab.exit(child);
      lab.exit(parent);
      lab.waitAll();
    },
  },
  "mprotect, PROT_NONE, a protection kill": {
    memoryMiB: 8,
    run(lab, values) {
      const pid = lab.spawn();
      const area = lab.mmap(pid, 16 * 4096, RW);
      lab.touch(pid, { start: area, length: 16 * 4096, kind: "write" });
      lab.mprotect(pid, area, 8 * 4096, PROT_READ);
      lab.mprotect(pid, area + 8 * 4096, 8 * 4096, PROT_NONE);
      values.push(lab.touch(pid, { start: area, length: 8 * 4096 }).checksum);
      lab.mprotect(pid, area + 8 * 4096, 8 * 4096, RW | PROT_EXEC);
      values.push(
        lab.touch(pid, { start: area + 8 * 4096, length: 8 * 4096, kind: "fetch" }).checksum,
      );
      const child = lab.fork(pid);
      values.push(lab.touch(child, { start: area, length: 4096, kind: "write" }).accesses);
      lab.exit(pid);
      lab.waitAll();
    },
  },
  "munmap below and above the flush ceiling, brk, shared memory": {
    memoryMiB: 8,
    run(lab, values) {
      const pid = lab.spawn();
      const area = lab.mmap(pid, 128 * 4096, RW);
      lab.touch(pid, { start: area, length: 128 * 4096, kind: "write" });
      lab.munmap(pid, area + 16 * 4096, 8 * 4096);
      lab.munmap(pid, area + 32 * 4096, 40 * 4096);
      const shared = lab.mmap(pid, 4 * 4096, RW, { shared: true });
      const child = lab.fork(pid);
      lab.writeU32(child, shared + 4096, 0x5eed);
      values.push(lab.readU32(pid, shared + 4096));
      const top = lab.brk(pid, 0);
      lab.brk(pid, top + 10 * 4096);
      lab.touch(pid, { start: top, length: 10 * 4096, kind: "write" });
      lab.brk(pid, top + 4096);
      values.push(lab.touch(pid, { start: area, length: 16 * 4096, stride: 4096 }).checksum);
      values.push(lab.touch(pid, { start: area, length: 128 * 4096, stride: 4096 }).accesses);
      lab.exit(child);
      lab.waitAll();
    },
  },
  "PCIDs: switching between processes keeps their translations": {
    memoryMiB: 8,
    pcid: true,
    run(lab, values) {
      const pids = [lab.spawn(), lab.spawn(), lab.spawn()];
      for (let round = 0; round < 3; round++) {
        for (const pid of pids) {
          lab.touch(pid, { start: DATA, length: 16 * 4096, kind: "write", value: round });
          values.push(lab.touch(pid, { start: DATA, length: 16 * 4096 }).checksum);
        }
      }
      for (const pid of pids) lab.exit(pid);
      lab.waitAll();
    },
  },
  "a device loop: MMIO counter, scratch and UART, across fork": {
    memoryMiB: 8,
    run(lab, values) {
      const pid = lab.spawn();
      const device = lab.mmapDevice(pid);
      values.push(lab.touch(pid, { start: device, length: 4, count: 50 }).checksum);
      lab.writeU32(pid, device + 4, 0xabcd);
      for (const c of "ok") lab.writeU32(pid, device + 8, c.charCodeAt(0));
      const child = lab.fork(pid);
      values.push(lab.readU32(child, device), lab.readU32(child, device + 4));
      values.push(lab.readU32(pid, device + 12));
      values.push(lab.platform.device.output.length, lab.platform.device.counter);
      lab.munmap(child, device, 4096);
      values.push(lab.touch(child, { start: device, length: 4 }).accesses); // SIGSEGV now
      lab.exit(pid);
      lab.waitAll();
    },
  },
  "many short processes (a kernel-build-like mix)": {
    memoryMiB: 8,
    run(lab, values) {
      const shell = lab.spawn();
      for (let i = 0; i < 12; i++) {
        const child = lab.fork(shell);
        lab.exec(child);
        const heap = lab.mmap(child, 32 * 4096, RW);
        values.push(
          lab.touch(child, {
            start: heap,
            length: 32 * 4096,
            kind: "write",
            pattern: "working-set",
            count: 64,
          }).accesses,
        );
        if (i % 3 === 0) {
          values.push(lab.touch(child, { start: 0x1000, length: 4 }).accesses); // SIGSEGV
        } else lab.exit(child);
        values.push(lab.wait(child, shell)?.signal ?? -1);
      }
      lab.exit(shell);
      lab.waitAll();
    },
  },
};

/** Every platform, and hvm-shadow with out-of-sync L1s as well. */
const CONFIGS: { platform: (typeof AVAILABLE_PLATFORMS)[number]; oos?: boolean }[] = [
  ...AVAILABLE_PLATFORMS.map((platform) => ({ platform })),
  { platform: "hvm-shadow", oos: true },
];

for (const [name, scenario] of Object.entries(SCENARIOS)) {
  Deno.test(`every platform sees the same: ${name}`, () => {
    const outcomes = CONFIGS.map((config) => {
      const lab = createLab({
        ...config,
        memoryMiB: scenario.memoryMiB,
        seed: 11,
        recordFaults: true,
        pcid: scenario.pcid ?? false,
      });
      const values: number[] = [];
      scenario.run(lab, values);
      if (lab.platform instanceof HvmShadowPlatform) {
        assert.deepEqual(checkShadows(lab.platform.mmu), []);
      }
      return outcomeOf(lab, values);
    });
    assert.equal(outcomes[0]!.crash, "");
    assert.ok(outcomes[0]!.faults.length > 0);
    for (const other of outcomes.slice(1)) assert.deepEqual(other, outcomes[0]);
  });
}
