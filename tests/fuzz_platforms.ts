/**
 * Long differential fuzzing of the platforms, kept out of `deno task test` (run:
 * `deno task fuzz-platforms --seed 1 --iterations 50`). Each iteration runs one random
 * guest workload (spawn, fork, exec, exit, mmap/munmap/mprotect/brk, device accesses,
 * touches with every pattern, small memory so swap happens) on every mode, with the
 * platform's consistency checkers after every call, and checks DESIGN.md's invariants:
 *
 * 1. every mode gives the same guest-visible outcome as native: the genuine faults in
 *    order, every value and checksum read, every kill, every guest.* counter;
 * 2-4. the shadow, write-protection and PV-safety checkers hold after every call;
 * 5. nothing throws, no domain crashes.
 *
 * Prints what it ran; exits 1 with the seed to reproduce on a failure, 2 for bad arguments.
 */

import { parseArgs } from "node:util";
import { availableConfigs, createLab, type Lab, Prng, PROT_READ, PROT_WRITE } from "../mod.ts";

const HELP = `Usage: deno task fuzz-platforms [--seed N] [--iterations N] [--steps N] [--json]

Runs random guest workloads on every mode (${availableConfigs().map((c) => c.label).join(", ")})
with the consistency checkers after every call, and compares each mode with native.
  --seed N          first seed (default 1); iteration i uses seed N+i
  --iterations N    workloads (default 20)
  --steps N         lab calls per workload (default 200)
  --json            print the summary as JSON
  --help            this text
Exit codes: 0 all checks held, 1 a check failed (the message names the seed), 2 bad arguments.`;

const RW = PROT_READ | PROT_WRITE;

/** One random workload; returns what the guest could observe. */
function workload(lab: Lab, seed: number, steps: number): string[] {
  const prng = new Prng(seed);
  const seen: string[] = [];
  const live: number[] = [lab.spawn()];
  const areas = new Map<number, number[]>();
  for (let step = 0; step < steps && lab.crashReason === ""; step++) {
    if (live.length === 0) live.push(lab.spawn());
    const pid = live[prng.below(live.length)]!;
    const choice = prng.below(11);
    if (choice === 0 && live.length < 5) live.push(lab.fork(pid));
    else if (choice === 1 && live.length > 1) {
      lab.exit(pid, step);
      live.splice(live.indexOf(pid), 1);
      seen.push(`wait ${JSON.stringify(lab.waitAll())}`);
    } else if (choice === 2) {
      lab.exec(pid);
      areas.delete(pid);
    } else if (choice === 3) {
      const at = lab.mmap(pid, (1 + prng.below(96)) * 4096, RW, { shared: prng.chance(0.25) });
      areas.set(pid, [...(areas.get(pid) ?? []), at]);
    } else if (choice === 4) {
      const mine = areas.get(pid) ?? [];
      if (mine.length > 0) {
        lab.munmap(pid, mine[prng.below(mine.length)]!, (1 + prng.below(40)) * 4096);
      }
    } else if (choice === 5) {
      const mine = areas.get(pid) ?? [];
      if (mine.length > 0) {
        const at = mine[prng.below(mine.length)]!;
        // An area munmap already took part of gives -ENOMEM: an outcome to compare too.
        seen.push(
          `mprotect ${lab.kernel.mprotect(pid, at, 4096, prng.chance(0.5) ? PROT_READ : RW)}`,
        );
      }
    } else if (choice === 6) {
      lab.brk(pid, lab.brk(pid, 0) + prng.below(24) * 4096);
    } else if (choice === 7 && prng.chance(0.3)) {
      const device = lab.mmapDevice(pid);
      seen.push(`device ${lab.readU32(pid, device)}`);
    } else {
      const mine = areas.get(pid) ?? [];
      const start = mine.length > 0 && prng.chance(0.8)
        ? mine[prng.below(mine.length)]!
        : 0x60_0000;
      const patterns = ["sequential", "random", "working-set"] as const;
      const result = lab.touch(pid, {
        start,
        length: (1 + prng.below(64)) * 4096,
        kind: prng.chance(0.5) ? "write" : prng.chance(0.9) ? "read" : "fetch",
        pattern: patterns[prng.below(3)]!,
        count: 1 + prng.below(200),
        value: step,
      });
      seen.push(`touch ${pid} ${result.outcome} ${result.accesses} ${result.checksum}`);
      if (result.outcome === "killed") live.splice(live.indexOf(pid), 1);
    }
  }
  for (const pid of live) lab.exit(pid);
  seen.push(`end ${JSON.stringify(lab.waitAll())} ${JSON.stringify(lab.usage())}`);
  return seen;
}

interface Summary {
  seed: number;
  iterations: number;
  steps: number;
  modes: string[];
  genuineFaults: number;
  seconds: number;
}

/** Runs the fuzzing; throws an Error naming the seed on the first failed check. */
function fuzz(seed: number, iterations: number, steps: number): Summary {
  const started = performance.now();
  const configs = availableConfigs();
  let genuineFaults = 0;
  for (let i = 0; i < iterations; i++) {
    const s = seed + i;
    let reference: { seen: string[]; faults: string; guest: string } | null = null;
    for (const config of configs) {
      const lab = createLab({
        platform: config.platform,
        ...(config.oos !== undefined ? { oos: config.oos } : {}),
        memoryMiB: 4 + (s % 3) * 2,
        seed: s,
        recordFaults: true,
        check: true,
      });
      let seen: string[];
      try {
        seen = workload(lab, s, steps);
      } catch (error) {
        throw new Error(
          `seed ${s} on ${config.label}: ${error instanceof Error ? error.message : error}`,
        );
      }
      if (lab.crashReason !== "") {
        throw new Error(`seed ${s} on ${config.label}: crashed: ${lab.crashReason}`);
      }
      const guest = JSON.stringify(
        Object.entries(lab.stats.nonZero()).filter(([name]) => name.startsWith("guest.")),
      );
      const faults = JSON.stringify(lab.faults);
      if (reference === null) {
        reference = { seen, faults, guest };
        genuineFaults += lab.faults.length;
        continue;
      }
      const what = JSON.stringify(seen) !== JSON.stringify(reference.seen)
        ? "values read"
        : faults !== reference.faults
        ? "genuine fault log"
        : guest !== reference.guest
        ? "guest.* counters"
        : "";
      if (what !== "") {
        throw new Error(`seed ${s}: ${config.label} differs from native in its ${what}`);
      }
    }
  }
  return {
    seed,
    iterations,
    steps,
    modes: configs.map((c) => c.label),
    genuineFaults,
    seconds: Math.round((performance.now() - started) / 10) / 100,
  };
}

if (import.meta.main) {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        seed: { type: "string", default: "1" },
        iterations: { type: "string", default: "20" },
        steps: { type: "string", default: "200" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    console.error(`fuzz-platforms: ${e instanceof Error ? e.message : e}\n\n${HELP}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const numbers = [values.seed, values.iterations, values.steps].map(Number);
  if (numbers.some((n) => !Number.isInteger(n) || n < 0 || n > 2 ** 31)) {
    console.error(
      `fuzz-platforms: --seed, --iterations and --steps take whole numbers 0..2^31, got ` +
        `${values.seed}, ${values.iterations}, ${values.steps}`,
    );
    Deno.exit(2);
  }
  try {
    const summary = fuzz(numbers[0]!, numbers[1]!, numbers[2]!);
    if (values.json) console.log(JSON.stringify(summary));
    else {
      console.log(
        `fuzz-platforms: seeds ${summary.seed}..${summary.seed + summary.iterations - 1}, ` +
          `${summary.steps} steps each on ${summary.modes.join(", ")}: ${summary.genuineFaults} ` +
          `genuine faults, every mode matched native, every check held, in ${summary.seconds} s`,
      );
    }
  } catch (error) {
    console.error(`fuzz-platforms: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
