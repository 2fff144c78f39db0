/**
 * Long fuzzing runs, kept out of `deno task test` (run: `deno task fuzz --seed 1
 * --iterations 200`). Each iteration builds machine memory full of random bytes and
 * random-but-plausible page tables, picks random control state, and checks:
 *
 * - the vCPU never throws, whatever the tables hold (invariant 5 of DESIGN.md);
 * - with the TLB on and off, reads and fetches give the same outcome (value, vector,
 *   error code, CR2): no writes are made, so no invalidation is owed;
 * - every #PF error code uses only the P, W/R, U/S, RSVD, I/D and PK bits, RSVD implies P;
 * - the decoder never throws on random bytes and returns -1, 0, or a length of 1..15.
 *
 * Prints what it ran; exits 1 with the seed and iteration to reproduce on a failure.
 */

import { parseArgs } from "node:util";
import {
  ACCESS_FETCH,
  ACCESS_IMPLICIT_READ,
  ACCESS_READ,
  type AccessKind,
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PGE,
  CR4_PKE,
  CR4_SMAP,
  CR4_SMEP,
  DecodedInstruction,
  decodeInstruction,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  MachineMemory,
  PagingControl,
  Prng,
  PTE_PRESENT,
  pteHigh,
  pteLow,
  RFLAGS_AC,
  Stats,
  Vcpu,
} from "../mod.ts";

const HELP = `Usage: deno task fuzz [--seed N] [--iterations N] [--accesses N] [--json]

Fuzzes the MMU (random tables, random control state, TLB on vs off) and the decoder.
  --seed N          first seed (default 1); iteration i uses seed N+i
  --iterations N    address spaces to build (default 2000)
  --accesses N      accesses per address space (default 2000)
  --json            print the summary as JSON
  --help            this text
Exit codes: 0 all checks held, 1 a check failed (the message names seed and step), 2 bad arguments.`;

interface Summary {
  seed: number;
  iterations: number;
  accesses: number;
  faults: number;
  generalProtection: number;
  decodes: number;
  seconds: number;
}

function buildMemory(prng: Prng): { memory: MachineMemory; cr3: number } {
  const frames = 64;
  const memory = new MachineMemory({ frames });
  // Most entries are plausible (present, pointing into memory or just past it), the rest
  // are random bytes (reserved bits, absent) or zero, so walks go deep and fail in every way.
  for (let entry = 0; entry < frames * 4096; entry += 8) {
    const roll = prng.nextFloat();
    if (roll < 0.6) {
      const target = prng.below(frames + 2) * 4096;
      const flags = (prng.nextU32() & 0x1ff) | PTE_PRESENT;
      memory.write32(entry, pteLow(target, prng.chance(0.8) ? flags & ~0x80 : flags));
      memory.write32(entry + 4, pteHigh(target, prng.chance(0.3), prng.below(16)));
    } else if (roll < 0.8) {
      memory.write32(entry, prng.nextU32());
      memory.write32(entry + 4, prng.nextU32());
    }
  }
  return { memory, cr3: prng.below(frames) * 4096 };
}

function randomControl(prng: Prng, cr3: number): PagingControl {
  return new PagingControl({
    cr0: CR0_PE | CR0_PG | (prng.chance(0.5) ? CR0_WP : 0),
    cr3,
    cr4: CR4_PAE | (prng.chance(0.5) ? CR4_PGE : 0) | (prng.chance(0.3) ? CR4_SMEP : 0) |
      (prng.chance(0.3) ? CR4_SMAP : 0) | (prng.chance(0.3) ? CR4_PKE : 0),
    efer: EFER_LME | EFER_LMA | (prng.chance(0.7) ? EFER_NXE : 0),
    rflags: 0x2 | (prng.chance(0.3) ? RFLAGS_AC : 0),
    cpl: prng.chance(0.5) ? 3 : 0,
    pkru: prng.nextU32(),
    maxPhyAddr: [36, 39, 46, 52][prng.below(4)]!,
    has1GbPages: prng.chance(0.8),
  });
}

function fail(seed: number, step: number, message: string): never {
  console.error(`fuzz: check failed at seed ${seed}, step ${step}: ${message}`);
  Deno.exit(1);
}

/** Runs `iterations` seeded rounds from `firstSeed`; exits 1 on the first failed check. */
export function fuzz(firstSeed: number, iterations: number, accesses: number): Summary {
  const started = performance.now();
  const summary: Summary = {
    seed: firstSeed,
    iterations,
    accesses: 0,
    faults: 0,
    generalProtection: 0,
    decodes: 0,
    seconds: 0,
  };
  const decoded = new DecodedInstruction();
  const bytes = new Uint8Array(32);
  for (let it = 0; it < iterations; it++) {
    const seed = firstSeed + it;
    const prng = new Prng(seed);
    const a = buildMemory(new Prng(seed));
    const b = buildMemory(new Prng(seed));
    const withTlb = new Vcpu(a.memory, randomControl(new Prng(seed ^ 0x5a5a), a.cr3), new Stats());
    const without = new Vcpu(b.memory, randomControl(new Prng(seed ^ 0x5a5a), b.cr3), new Stats(), {
      tlbEnabled: false,
    });
    for (let step = 0; step < accesses; step++) {
      // Now and then an access that straddles the end of the lower canonical half (#GP).
      const va = prng.chance(0.01)
        ? 2 ** 47 - 1 - prng.below(4)
        : prng.below(2 ** 16) * 2 ** 32 + prng.nextU32();
      const size = ([1, 2, 4, 8] as const)[prng.below(4)]!;
      const kind = ([ACCESS_READ, ACCESS_FETCH, ACCESS_IMPLICIT_READ] as AccessKind[])[
        prng.below(3)
      ]!;
      let okA: boolean;
      let okB: boolean;
      try {
        okA = withTlb.read(va, size, kind);
        okB = without.read(va, size, kind);
      } catch (e) {
        fail(seed, step, `the vCPU threw: ${e instanceof Error ? e.stack : e}`);
      }
      summary.accesses++;
      const ea = withTlb.exception;
      const eb = without.exception;
      if (okA !== okB) fail(seed, step, `TLB on gave ${okA}, off gave ${okB}`);
      if (okA) {
        if (withTlb.data !== without.data || (size === 8 && withTlb.dataHi !== without.dataHi)) {
          fail(seed, step, "TLB on and off read different values");
        }
      } else {
        if (ea.vector !== eb.vector || ea.errorCode !== eb.errorCode || ea.cr2 !== eb.cr2) {
          fail(seed, step, `exceptions differ: ${JSON.stringify([ea, eb])}`);
        }
        if (ea.vector === 14) {
          summary.faults++;
          if (
            (ea.errorCode & ~0x3f) !== 0 || ((ea.errorCode & 8) !== 0 && (ea.errorCode & 1) === 0)
          ) {
            fail(seed, step, `malformed #PF error code 0x${ea.errorCode.toString(16)}`);
          }
        } else summary.generalProtection++;
      }
    }
    for (let n = 0; n < accesses; n++) {
      for (let k = 0; k < bytes.length; k++) bytes[k] = prng.nextU32() & 0xff;
      const available = 1 + prng.below(bytes.length);
      let length: number;
      try {
        length = decodeInstruction(bytes.subarray(0, available), 0, decoded);
      } catch (e) {
        fail(seed, n, `the decoder threw: ${e instanceof Error ? e.stack : e}`);
      }
      if (
        !(length === -1 || length === 0 || (length >= 1 && length <= 15 && length <= available))
      ) {
        fail(seed, n, `decoder returned ${length} for ${available} bytes`);
      }
      summary.decodes++;
    }
  }
  summary.seconds = Math.round((performance.now() - started) / 10) / 100;
  return summary;
}

if (import.meta.main) {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        seed: { type: "string", default: "1" },
        iterations: { type: "string", default: "2000" },
        accesses: { type: "string", default: "2000" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    console.error(`fuzz: ${e instanceof Error ? e.message : e}\n\n${HELP}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const numbers = [values.seed, values.iterations, values.accesses].map(Number);
  if (numbers.some((n) => !Number.isInteger(n) || n < 0 || n > 2 ** 31)) {
    console.error(
      `fuzz: --seed, --iterations and --accesses take whole numbers 0..2^31, got ` +
        `${values.seed}, ${values.iterations}, ${values.accesses}`,
    );
    Deno.exit(2);
  }
  const summary = fuzz(numbers[0]!, numbers[1]!, numbers[2]!);
  if (values.json) console.log(JSON.stringify(summary));
  else {
    console.log(
      `fuzz: seeds ${summary.seed}..${summary.seed + summary.iterations - 1}: ` +
        `${summary.accesses} accesses (${summary.faults} #PF, ${summary.generalProtection} #GP), ` +
        `${summary.decodes} decodes, all checks held in ${summary.seconds} s`,
    );
  }
}
