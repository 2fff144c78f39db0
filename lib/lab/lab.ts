/**
 * The scenario API: a lab is one guest kernel booted on one platform, with calls a
 * scenario script uses to create processes, change their memory and touch it with
 * access patterns. Same options and seed, same counts: every random choice comes from
 * the lab's seeded PRNG.
 *
 * @module
 */

import { ACCESS_FETCH, ACCESS_READ, ACCESS_WRITE, type AccessKind } from "../x86/access.ts";
import { LINEAR_LIMIT, PAGE_SIZE } from "../x86/address.ts";
import { Prng } from "../x86/prng.ts";
import { Stats, type StatsSnapshot } from "../x86/stats.ts";
import type { TlbConfig } from "../x86/tlb.ts";
import { NativePlatform } from "../platform/native.ts";
import { HvmShadowPlatform } from "../platform/hvm_shadow.ts";
import { ClassicPlatform } from "../platform/classic.ts";
import { HvmHapPlatform } from "../platform/hvm_hap.ts";
import { PvPlatform } from "../platform/pv.ts";
import {
  type Platform,
  PLATFORM_NAMES,
  type PlatformName,
  RUN_ABANDONED,
  RUN_DONE,
} from "../platform/platform.ts";
import { PROT_READ, PROT_WRITE } from "../guest/layout.ts";
import {
  DEFAULT_IMAGE,
  type ExecImage,
  type GuestFault,
  GuestKernel,
  type KernelUsage,
  type WaitResult,
} from "../guest/kernel.ts";
import { PvPagingOps } from "../guest/pv_paging_ops.ts";

/** Platforms this build can run. */
export const AVAILABLE_PLATFORMS: readonly PlatformName[] = [
  "native",
  "pv",
  "hvm-shadow",
  "hvm-hap",
  "classic",
];

/** Options of {@link createLab}. */
export interface LabOptions {
  /** The platform; default "native". */
  platform?: PlatformName;
  /** Guest memory in MiB; default 256. */
  memoryMiB?: number;
  /** Seed of the lab's PRNG; default 1. */
  seed?: number;
  /** Use PCIDs; default false. */
  pcid?: boolean;
  /** Direct-map page size: 4096 (default) or 2097152. */
  directMapPageSize?: 4096 | 2097152;
  /** Swap slots; default as many as guest frames. */
  swapSlots?: number;
  /** Free frames below which the kernel reclaims; default frames / 64. */
  lowWatermark?: number;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Record every genuine fault in {@link Lab.faults}; default false. */
  recordFaults?: boolean;
  /** hvm-shadow and classic: shadow pool size in pages (default 4096). */
  shadowPoolPages?: number;
  /** hvm-hap: paging-structure caches and nested TLB in the 2-D walk (default true). */
  walkCaches?: boolean;
  /** hvm-hap: flush the TLB at every VM exit and entry, as without VPID (default false). */
  flushOnWorldSwitch?: boolean;
  /**
   * hvm-shadow and classic: let written L1 tables go out of sync (default false: emulate
   * every write).
   */
  oos?: boolean;
  /** hvm-shadow and classic: out-of-sync tables at once (default 3). */
  oosPages?: number;
  /**
   * Run the platform's consistency checkers after every lab call (slow; for debugging and
   * tests); a violation throws an Error naming the call and what was wrong.
   */
  check?: boolean;
}

/** How {@link Lab.touch} picks addresses. */
export type TouchPattern = "sequential" | "strided" | "random" | "working-set";

/** What {@link Lab.touch} does. */
export interface TouchOptions {
  /** First address of the range. */
  start: number;
  /** Bytes in the range. */
  length: number;
  /** Access kind; default "read". */
  kind?: "read" | "write" | "fetch";
  /**
   * "sequential": start, start + stride, ... (stride default 4096: each page once);
   * "strided": the same with a required `stride`; "random": uniformly random 4-byte
   * aligned addresses; "working-set": random, 90% of them in the first `workingSet`
   * bytes. Default "sequential".
   */
  pattern?: TouchPattern;
  /** Bytes between accesses (sequential, strided); a multiple of 4. */
  stride?: number;
  /** Accesses; default one per stride (sequential, strided) or one per page (random). */
  count?: number;
  /** Hot bytes at the start of the range (working-set); default length / 8. */
  workingSet?: number;
  /** Value written by writes; default the address's low 32 bits (so reads can check it). */
  value?: number;
}

/** What {@link Lab.touch} did. */
export interface TouchResult {
  /** Accesses completed. */
  accesses: number;
  /** "done"; "killed" when the process was killed (e.g. SIGSEGV); "crashed" for the domain. */
  outcome: "done" | "killed" | "crashed";
  /** XOR of every value read (reads and fetches), to check contents cheaply. */
  checksum: number;
}

/**
 * One guest on one platform, and the calls a scenario makes.
 *
 * @example Fork, write on both sides, exit, wait
 * ```ts
 * import { createLab } from "./lab.ts";
 * import assert from "node:assert/strict";
 *
 * const lab = createLab({ platform: "native", memoryMiB: 64, seed: 7 });
 * const parent = lab.spawn();
 * const heap = lab.mmap(parent, 64 * 1024, 3); // PROT_READ | PROT_WRITE
 * lab.touch(parent, { start: heap, length: 64 * 1024, kind: "write" });
 * const child = lab.fork(parent);
 * lab.writeU32(child, heap, 99);
 * assert.equal(lab.readU32(parent, heap), heap >>> 0); // the parent's value is intact
 * assert.equal(lab.stats.get("guest.cow.copy"), 1);
 * lab.exit(child);
 * lab.exit(parent);
 * assert.equal(lab.wait(child)?.pid, child);
 * assert.equal(lab.wait(parent)?.pid, parent);
 * assert.deepEqual(lab.usage(), { ...lab.usage(), tables: 0, user: 0, tasks: 0 });
 * ```
 */
export class Lab {
  /** The platform. */
  readonly platform: Platform;
  /** The guest kernel. */
  readonly kernel: GuestKernel;
  /** The lab's counters. */
  readonly stats: Stats;
  /** The seed the PRNG started from. */
  readonly seed: number;
  /** The lab's PRNG (every random choice of a scenario). */
  readonly prng: Prng;
  /** Check the platform's invariants after every call (see {@link LabOptions.check}). */
  checkEveryStep = false;

  /** A lab on `platform` with `kernel` (use {@link createLab}). */
  constructor(platform: Platform, kernel: GuestKernel, seed: number) {
    this.platform = platform;
    this.kernel = kernel;
    this.stats = platform.stats;
    this.seed = seed;
    this.prng = new Prng(seed);
  }

  /** Genuine faults in order (with `recordFaults`). */
  get faults(): readonly GuestFault[] {
    return this.kernel.faultLog;
  }

  /** Why the domain crashed, or "". */
  get crashReason(): string {
    return this.platform.crashReason;
  }

  /** A counter snapshot. */
  snapshot(): StatsSnapshot {
    return this.stats.snapshot();
  }

  /** Counter changes while `work` runs (non-zero ones). */
  measure(work: () => void): StatsSnapshot {
    const before = this.stats.snapshot();
    work();
    const diff = Stats.diff(before, this.stats.snapshot());
    return Object.fromEntries(Object.entries(diff).filter(([, value]) => value !== 0));
  }

  /** A new process running `image` (default image); returns its pid. */
  spawn(image: ExecImage = DEFAULT_IMAGE): number {
    return this.#after("spawn", this.#pid(this.kernel.spawn(image), "spawn"));
  }

  /** fork; returns the child's pid. */
  fork(pid: number): number {
    return this.#after("fork", this.#pid(this.kernel.fork(pid), "fork"));
  }

  /** exec of `image` in process `pid`. */
  exec(pid: number, image: ExecImage = DEFAULT_IMAGE): void {
    this.#after("exec", this.#pid(this.kernel.exec(pid, image), "exec"));
  }

  /** exit of process `pid` with `exitCode`. */
  exit(pid: number, exitCode = 0): void {
    this.kernel.exit(pid, exitCode);
    this.#after("exit", 0);
  }

  /**
   * Reaps zombie `pid` (a child of the lab, or of `parentPid`); null if it still runs.
   * Throws a RangeError if there is no such child.
   */
  wait(pid: number, parentPid = 0): WaitResult | null {
    const result = this.kernel.wait(parentPid, pid);
    if (typeof result === "number") {
      throw new RangeError(`Cannot wait for process ${pid}: it is not a child of ${parentPid}`);
    }
    return this.#after("wait", result);
  }

  /** Reaps every zombie child of `parentPid` (default the lab); returns them. */
  waitAll(parentPid = 0): WaitResult[] {
    const reaped: WaitResult[] = [];
    for (;;) {
      const result = this.kernel.wait(parentPid, -1);
      if (result === null || typeof result === "number") return reaped;
      reaped.push(result);
    }
  }

  /** Anonymous mmap; returns the address. Throws a RangeError on -EINVAL / -ENOMEM. */
  mmap(
    pid: number,
    length: number,
    prot: number,
    options: { shared?: boolean; fixed?: number } = {},
  ): number {
    return this.#after("mmap", this.#check(this.kernel.mmap(pid, length, prot, options), "mmap"));
  }

  /** Maps the device's registers (counter, scratch, UART) into `pid`; returns the address. */
  mmapDevice(pid: number): number {
    return this.#after("mmapDevice", this.#check(this.kernel.mmapDevice(pid), "mmapDevice"));
  }

  /** munmap. */
  munmap(pid: number, address: number, length: number): void {
    this.#after("munmap", this.#check(this.kernel.munmap(pid, address, length), "munmap"));
  }

  /** mprotect. */
  mprotect(pid: number, address: number, length: number, prot: number): void {
    this.#after(
      "mprotect",
      this.#check(this.kernel.mprotect(pid, address, length, prot), "mprotect"),
    );
  }

  /** brk; returns the new break. */
  brk(pid: number, newEnd: number): number {
    return this.#after("brk", this.kernel.brk(pid, newEnd));
  }

  /** Switches to the next running process (the scheduler); returns its pid or 0. */
  yield(): number {
    return this.#after("yield", this.kernel.schedule());
  }

  /** Reads a u32 of `pid` at `va`; throws a RangeError if the process is killed instead. */
  readU32(pid: number, va: number): number {
    checkAddress(va, 4);
    return this.#after("readU32", this.kernel.readU32(pid, va));
  }

  /** Writes a u32 of `pid` at `va`; throws a RangeError if the process is killed instead. */
  writeU32(pid: number, va: number, value: number): void {
    checkAddress(va, 4);
    this.kernel.writeU32(pid, va, value);
    this.#after("writeU32", 0);
  }

  /** Reads a u64 (as a bigint: an edge of the API). */
  readU64(pid: number, va: number): bigint {
    checkAddress(va, 8);
    this.#expect(this.kernel.access(pid, va, 8, ACCESS_READ), pid, va);
    const cpu = this.platform.cpu;
    return this.#after("readU64", (BigInt(cpu.dataHi) << 32n) | BigInt(cpu.data));
  }

  /** Writes a u64 given as a bigint. */
  writeU64(pid: number, va: number, value: bigint): void {
    checkAddress(va, 8);
    const lo = Number(value & 0xffff_ffffn);
    const hi = Number((value >> 32n) & 0xffff_ffffn);
    this.#expect(this.kernel.access(pid, va, 8, ACCESS_WRITE, lo, hi), pid, va);
    this.#after("writeU64", 0);
  }

  /**
   * Touches memory of process `pid` with a pattern; stops early if the process is killed
   * or the domain crashes. Throws a RangeError for bad options.
   */
  touch(pid: number, options: TouchOptions): TouchResult {
    const { start, length } = options;
    const pattern = options.pattern ?? "sequential";
    const kind: AccessKind = options.kind === "write"
      ? ACCESS_WRITE
      : options.kind === "fetch"
      ? ACCESS_FETCH
      : ACCESS_READ;
    if (
      !Number.isInteger(start) || start < 0 || !Number.isInteger(length) || length < 4 ||
      start + length > LINEAR_LIMIT
    ) {
      throw new RangeError(
        `Cannot touch ${length} bytes at ${start}: need integers, length >= 4, ` +
          `within the 48-bit linear space (end <= 2^48)`,
      );
    }
    if (pattern === "strided" && options.stride === undefined) {
      throw new RangeError("Cannot touch with pattern 'strided': give a stride");
    }
    const stride = options.stride ?? PAGE_SIZE;
    if (!Number.isInteger(stride) || stride < 4 || stride % 4 !== 0) {
      throw new RangeError(`Cannot touch with stride ${stride}: must be a multiple of 4, >= 4`);
    }
    const sequential = pattern === "sequential" || pattern === "strided";
    const count = options.count ??
      (sequential ? Math.ceil(length / stride) : Math.ceil(length / PAGE_SIZE));
    const words = Math.floor(length / 4);
    const hotWords = Math.max(
      1,
      Math.min(words, Math.floor((options.workingSet ?? length / 8) / 4)),
    );
    const prng = this.prng;
    const kernel = this.kernel;
    const platform = this.platform;
    const cpu = platform.cpu;
    const ctl = cpu.ctl;
    const direct = kind === ACCESS_READ || kind === ACCESS_WRITE;
    const fixedValue = options.value;
    let checksum = 0;
    for (let i = 0; i < count; i++) {
      let va: number;
      if (sequential) va = start + ((i * stride) % (words * 4));
      else if (pattern === "random") va = start + prng.below(words) * 4;
      else {
        va = start + (prng.nextU32() % 10 < 9 ? prng.below(hotWords) : prng.below(words)) * 4;
      }
      const value = fixedValue ?? va >>> 0;
      // The vCPU first, as the processor does; only a miss that faults goes through the
      // kernel and the platform (which also switch to the process when it is not current).
      // Calling the vCPU here keeps the hot loop monomorphic whatever platforms the process
      // has built (shared code called on six platform classes is slower in V8).
      let outcome: number;
      if (direct && kernel.current?.pid === pid) {
        if (ctl.cpl !== 3) ctl.cpl = 3;
        outcome = (kind === ACCESS_READ ? cpu.read32(va) : cpu.write32(va, value >>> 0))
          ? RUN_DONE
          : platform.accessFaulted(va, 4, kind, value >>> 0, 0, true);
      } else {
        outcome = kernel.access(pid, va, 4, kind, value >>> 0, 0);
      }
      if (outcome !== RUN_DONE) {
        return this.#after("touch", {
          accesses: i,
          outcome: outcome === RUN_ABANDONED ? "killed" : "crashed",
          checksum,
        });
      }
      if (kind !== ACCESS_WRITE) checksum = (checksum ^ cpu.data) >>> 0;
    }
    return this.#after("touch", { accesses: count, outcome: "done", checksum });
  }

  /**
   * Runs the platform's invariant checks now; throws an Error listing the violations
   * (the lab's own bug, not the guest's) after `call`.
   */
  checkInvariants(call = "check"): void {
    const problems = this.platform.checkInvariants?.() ?? [];
    if (problems.length > 0) {
      throw new Error(
        `Consistency check failed after ${call} on ${this.platform.name}: ${
          problems.slice(0, 5).join("; ")
        }${problems.length > 5 ? ` (and ${problems.length - 5} more)` : ""}`,
      );
    }
  }

  /**
   * A new process with a private read-write heap of `pages` pages, every page written once
   * (resident): the usual parent of a fork scenario. Returns its pid and the heap address.
   */
  spawnWithHeap(pages: number): { pid: number; heap: number } {
    const pid = this.spawn();
    const bytes = pages * PAGE_SIZE;
    const heap = this.mmap(pid, bytes, PROT_READ | PROT_WRITE);
    this.touch(pid, { start: heap, length: bytes, kind: "write" });
    return { pid, heap };
  }

  /** Frames and swap slots in use. */
  usage(): KernelUsage {
    return this.kernel.usage();
  }

  #after<T>(call: string, value: T): T {
    if (this.checkEveryStep) this.checkInvariants(call);
    return value;
  }

  #pid(result: number, call: string): number {
    return this.#check(result, call);
  }

  #check(result: number, call: string): number {
    if (result < 0) {
      const name = result === -12 ? "ENOMEM" : result === -22 ? "EINVAL" : `errno ${-result}`;
      throw new RangeError(`Cannot ${call}: the guest kernel returned -${name}`);
    }
    return result;
  }

  #expect(outcome: number, pid: number, va: number): void {
    if (outcome !== RUN_DONE) {
      throw new RangeError(
        `Cannot access ${va} in process ${pid}: ${
          outcome === RUN_ABANDONED ? "the process was killed" : this.crashReason
        }`,
      );
    }
  }
}

// A 48-bit linear address for an access of `size` bytes, or a RangeError that says so.
function checkAddress(va: number, size: number): void {
  if (!Number.isInteger(va) || va < 0 || va + size > LINEAR_LIMIT) {
    throw new RangeError(
      `Cannot access ${va}: addresses are integers 0..2^48-${size} (48-bit linear values; ` +
        `write 0xdeadbeef >>> 0 for a 32-bit constant)`,
    );
  }
}

/**
 * Boots a guest kernel on a platform and returns the lab. Throws a RangeError for an
 * unknown or unavailable platform or a bad memory size, naming the valid choices.
 */
export function createLab(options: LabOptions = {}): Lab {
  const name = options.platform ?? "native";
  if (!PLATFORM_NAMES.includes(name)) {
    throw new RangeError(
      `Cannot create a lab for platform "${name}": valid platforms are ${
        PLATFORM_NAMES.join(", ")
      }`,
    );
  }
  if (!AVAILABLE_PLATFORMS.includes(name)) {
    throw new RangeError(
      `Cannot create a lab for platform "${name}": not built yet; available: ${
        AVAILABLE_PLATFORMS.join(", ")
      }`,
    );
  }
  const memoryMiB = options.memoryMiB ?? 256;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 1 || memoryMiB > 65536) {
    throw new RangeError(`Cannot give the guest ${memoryMiB} MiB: must be an integer 1..65536`);
  }
  const seed = options.seed ?? 1;
  const frames = memoryMiB * 256;
  const platformOptions: { frames: number; tlb?: TlbConfig; poolPages?: number } = { frames };
  if (options.tlb !== undefined) platformOptions.tlb = options.tlb;
  let platform: Platform;
  if (name === "hvm-shadow" || name === "classic") {
    if (options.shadowPoolPages !== undefined) platformOptions.poolPages = options.shadowPoolPages;
    const shadowOptions = {
      ...platformOptions,
      ...(options.oos !== undefined ? { oos: options.oos } : {}),
      ...(options.oosPages !== undefined ? { oosPages: options.oosPages } : {}),
    };
    platform = name === "classic"
      ? new ClassicPlatform(shadowOptions)
      : new HvmShadowPlatform(shadowOptions);
  } else if (name === "hvm-hap") {
    platform = new HvmHapPlatform({
      frames,
      ...(options.tlb !== undefined ? { tlb: options.tlb } : {}),
      ...(options.walkCaches !== undefined ? { walkCaches: options.walkCaches } : {}),
      ...(options.flushOnWorldSwitch !== undefined
        ? { flushOnWorldSwitch: options.flushOnWorldSwitch }
        : {}),
    });
  } else if (name === "pv") {
    platform = new PvPlatform({
      frames,
      ...(options.tlb !== undefined ? { tlb: options.tlb } : {}),
    });
  } else {
    platform = new NativePlatform(platformOptions);
  }
  const kernelOptions: ConstructorParameters<typeof GuestKernel>[1] = {};
  if (platform instanceof PvPlatform) {
    const pv = platform;
    kernelOptions.pagingOps = (code) => new PvPagingOps(code, pv);
    kernelOptions.textFlavour = "pv";
  }
  if (options.pcid !== undefined) kernelOptions.pcid = options.pcid;
  if (options.directMapPageSize !== undefined) {
    kernelOptions.directMapPageSize = options.directMapPageSize;
  }
  if (options.swapSlots !== undefined) kernelOptions.swapSlots = options.swapSlots;
  if (options.lowWatermark !== undefined) kernelOptions.lowWatermark = options.lowWatermark;
  if (options.recordFaults !== undefined) kernelOptions.recordFaults = options.recordFaults;
  const kernel = new GuestKernel(platform, kernelOptions);
  kernel.boot();
  const lab = new Lab(platform, kernel, seed);
  lab.checkEveryStep = options.check ?? false;
  return lab;
}
