/**
 * Guest kernel benchmarks on each mode (every platform, and hvm-shadow with out-of-sync L1s):
 * a fork + exec + exit + wait loop
 * (processes per second) and touch loops over resident memory (simulated guest accesses
 * per second, each one a full trip through the kernel's access call, the platform and the
 * vCPU). Divide the time per iteration by the operations per iteration named in each
 * benchmark.
 *
 * Run: deno task bench
 */

import { availableConfigs, createLab, type LabConfig, PROT_READ, PROT_WRITE } from "../mod.ts";

const RW = PROT_READ | PROT_WRITE;

/** Processes per fork-loop iteration. */
const PROCESSES = 16;
/** Accesses per touch iteration. */
const ACCESSES = 65536;

function forkLab(config: LabConfig) {
  const lab = createLab({ ...config, memoryMiB: 64, seed: 1 });
  const parent = lab.spawn();
  const heap = lab.mmap(parent, 64 * 4096, RW);
  lab.touch(parent, { start: heap, length: 64 * 4096, kind: "write" });
  return { lab, parent, heap };
}

function touchLab(config: LabConfig, pages: number) {
  const lab = createLab({ ...config, memoryMiB: 256, seed: 1 });
  const pid = lab.spawn();
  const area = lab.mmap(pid, pages * 4096, RW);
  lab.touch(pid, { start: area, length: pages * 4096, kind: "write" });
  return { lab, pid, area, length: pages * 4096 };
}

for (const config of availableConfigs()) {
  const platform = config.label;
  const fork = forkLab(config);
  Deno.bench(
    `${platform}: fork + exec + exit + wait, 64-page parent (${PROCESSES} processes)`,
    () => {
      const { lab, parent, heap } = fork;
      for (let i = 0; i < PROCESSES; i++) {
        const child = lab.fork(parent);
        lab.touch(child, { start: heap, length: 64 * 4096, kind: "write", count: 8 });
        lab.exec(child);
        lab.touch(child, { start: 0x60_0000, length: 4 * 4096, kind: "write" });
        lab.exit(child);
        lab.wait(child, parent);
      }
    },
  );

  const small = touchLab(config, 256); // 1 MiB: fits the TLB's reach
  Deno.bench(
    `${platform}: sequential word reads over 1 MiB, TLB-resident (${ACCESSES} accesses)`,
    () => {
      const { lab, pid, area, length } = small;
      lab.touch(pid, { start: area, length, stride: 16, count: ACCESSES });
    },
  );

  const large = touchLab(config, 16384); // 64 MiB: far beyond the TLB's reach
  Deno.bench(`${platform}: random reads over 64 MiB, TLB-missing (${ACCESSES} accesses)`, () => {
    const { lab, pid, area, length } = large;
    lab.touch(pid, { start: area, length, pattern: "random", count: ACCESSES });
  });

  Deno.bench(`${platform}: random writes over 64 MiB (${ACCESSES} accesses)`, () => {
    const { lab, pid, area, length } = large;
    lab.touch(pid, { start: area, length, pattern: "random", kind: "write", count: ACCESSES });
  });
}
