/**
 * A booted PV guest for hypercall tests, and a hostile guest that builds its own requests
 * in a kernel page (through the vCPU, as the kernel would) and makes hypercalls with
 * whatever arguments it likes. Also: snapshots of the frame table and of every page-table
 * frame, to show that a rejected call changed nothing.
 */

import { ACCESS_WRITE } from "../../lib/x86/access.ts";
import { levelIndex, linearHigh32 } from "../../lib/x86/address.ts";
import { RUN_DONE } from "../../lib/platform/platform.ts";
import { PvPlatform, type PvPlatformOptions } from "../../lib/platform/pv.ts";
import { FRAME_USE_KERNEL } from "../../lib/guest/frame_allocator.ts";
import { GuestKernel } from "../../lib/guest/kernel.ts";
import { DIRECT_MAP_BASE } from "../../lib/guest/layout.ts";
import { PvPagingOps } from "../../lib/guest/pv_paging_ops.ts";
import {
  DOMID_SELF,
  HYPERVISOR_MMU_UPDATE,
  HYPERVISOR_MMUEXT_OP,
  HYPERVISOR_MULTICALL,
  HYPERVISOR_UPDATE_VA_MAPPING,
} from "../../hypercalls/abi.ts";
import type { PvDomain } from "../../hypercalls/pv_domain.ts";

/** The heap of the fixture's process (16 written pages). */
export const HEAP = 0x600000;

/** A booted PV guest with one process whose data pages 0..15 are written. */
export interface PvGuest {
  platform: PvPlatform;
  kernel: GuestKernel;
  d: PvDomain;
  pid: number;
  hostile: HostileGuest;
}

/** Boots a PV guest of `frames` frames and runs one process that wrote its 16 data pages. */
export function bootPvGuest(options: Partial<PvPlatformOptions> = {}): PvGuest {
  const platform = new PvPlatform({ frames: 1024, ...options });
  const kernel = new GuestKernel(platform, {
    pagingOps: (code) => new PvPagingOps(code, platform),
  });
  kernel.boot();
  const pid = kernel.spawn();
  for (let i = 0; i < 16; i++) kernel.writeU32(pid, HEAP + i * 4096, i);
  const scratch = kernel.frames.allocate(FRAME_USE_KERNEL);
  return {
    platform,
    kernel,
    d: platform.domain,
    pid,
    hostile: new HostileGuest(platform, scratch),
  };
}

/** (lo, hi) of an entry naming machine frame `mfn` with low flags and XD. */
export function pte(mfn: number, flags: number, xd = false): [number, number] {
  return [
    ((mfn % 2 ** 20) * 4096 + flags) >>> 0,
    (Math.floor(mfn / 2 ** 20) | (xd ? 0x80000000 : 0)) >>> 0,
  ];
}

/** One mmu_update request: machine address of the entry, command, new value. */
export interface MmuRequest {
  ma: number;
  cmd?: number;
  lo: number;
  hi?: number;
}

/** One mmuext_op. */
export interface MmuextRequest {
  cmd: number;
  arg1?: number;
  arg2?: number;
}

/**
 * A guest that writes requests into its scratch page (guest frame `scratch`, through the
 * direct map) and calls the hypervisor directly.
 */
export class HostileGuest {
  readonly platform: PvPlatform;
  /** Linear address of the scratch page. */
  readonly va: number;

  constructor(platform: PvPlatform, scratchGfn: number) {
    this.platform = platform;
    this.va = DIRECT_MAP_BASE + scratchGfn * 4096;
  }

  /** Writes a u64 into the scratch page at `offset`. */
  write64(offset: number, lo: number, hi: number): void {
    const outcome = this.platform.access(
      this.va + offset,
      8,
      ACCESS_WRITE,
      lo >>> 0,
      hi >>> 0,
      false,
    );
    if (outcome !== RUN_DONE) throw new Error("the scratch page is not writable");
  }

  /** Reads the u32 at `offset` of the scratch page (through the P2M). */
  read32(offset: number): number {
    const gpa = this.va - DIRECT_MAP_BASE + offset;
    return this.platform.peekGuestPhysical32(gpa);
  }

  /** Makes hypercall `op` with up to five 64-bit arguments (linear addresses are canonicalized). */
  call(op: number, ...args: number[]): number {
    const interpreter = this.platform.interpreter;
    interpreter.setReg(0, op, 0);
    const registers = [7, 6, 2, 10, 8];
    for (let i = 0; i < 5; i++) {
      const value = args[i] ?? 0;
      const hi = value >= 2 ** 47 && value < 2 ** 48
        ? linearHigh32(value)
        : Math.floor(value / 2 ** 32);
      interpreter.setReg(registers[i]!, value >>> 0, hi >>> 0);
    }
    return this.platform.hypercall();
  }

  /** mmu_update of `requests`; `done` read back from the scratch page. */
  mmuUpdate(
    requests: readonly MmuRequest[],
    foreigndom = DOMID_SELF,
  ): { rc: number; done: number } {
    requests.forEach((r, i) => {
      this.write64(0x100 + i * 16, (r.ma % 2 ** 32) + (r.cmd ?? 0), Math.floor(r.ma / 2 ** 32));
      this.write64(0x108 + i * 16, r.lo, r.hi ?? 0);
    });
    this.write64(0, 0xdead, 0);
    const rc = this.call(
      HYPERVISOR_MMU_UPDATE,
      this.va + 0x100,
      requests.length,
      this.va,
      foreigndom,
    );
    return { rc, done: this.read32(0) };
  }

  /** mmuext_op of `ops`. */
  mmuextOp(ops: readonly MmuextRequest[], foreigndom = DOMID_SELF): { rc: number; done: number } {
    ops.forEach((op, i) => {
      this.write64(0x100 + i * 24, op.cmd, 0);
      this.write64(0x108 + i * 24, op.arg1 ?? 0, Math.floor((op.arg1 ?? 0) / 2 ** 32));
      this.write64(0x110 + i * 24, op.arg2 ?? 0, Math.floor((op.arg2 ?? 0) / 2 ** 32));
    });
    this.write64(0, 0xdead, 0);
    const rc = this.call(HYPERVISOR_MMUEXT_OP, this.va + 0x100, ops.length, this.va, foreigndom);
    return { rc, done: this.read32(0) };
  }

  /** update_va_mapping of linear `va` to (`hi`:`lo`). */
  updateVaMapping(va: number, lo: number, hi: number, flags: number): number {
    const interpreter = this.platform.interpreter;
    interpreter.setReg(0, HYPERVISOR_UPDATE_VA_MAPPING, 0);
    interpreter.setReg(7, va >>> 0, linearHigh32(va));
    interpreter.setReg(6, lo >>> 0, hi >>> 0);
    interpreter.setReg(2, flags >>> 0, Math.floor(flags / 2 ** 32) >>> 0);
    return this.platform.hypercall();
  }

  /**
   * A multicall of mmu_update calls, one request each (entries at +0x800, requests at
   * +0x100): the multicall's result and each call's.
   */
  multicallMmuUpdates(requests: readonly MmuRequest[]): { rc: number; results: number[] } {
    requests.forEach((r, i) => {
      this.write64(0x100 + i * 16, (r.ma % 2 ** 32) + (r.cmd ?? 0), Math.floor(r.ma / 2 ** 32));
      this.write64(0x108 + i * 16, r.lo, r.hi ?? 0);
      const entry = 0x800 + i * 64;
      this.write64(entry, HYPERVISOR_MMU_UPDATE, 0);
      this.write64(entry + 8, 0x5a5a, 0);
      const reqVa = this.va + 0x100 + i * 16;
      this.write64(entry + 16, reqVa >>> 0, linearHigh32(reqVa));
      this.write64(entry + 24, 1, 0);
      this.write64(entry + 32, 0, 0);
      this.write64(entry + 40, DOMID_SELF, 0);
    });
    const rc = this.call(HYPERVISOR_MULTICALL, this.va + 0x800, requests.length);
    const results = requests.map((_, i) => this.read32(0x808 + i * 64) | 0);
    return { rc, results };
  }
}

/** Machine frames and entry addresses of the walk of linear `va` from CR3. */
export function walkMachine(d: PvDomain, va: number): { table: number[]; entry: number[] } {
  const table = [0, 0, 0, 0, 0];
  const entry = [0, 0, 0, 0, 0];
  let mfn = d.guestTable;
  for (let level = 4; level >= 1; level--) {
    table[level] = mfn;
    entry[level] = mfn * 4096 + levelIndex(va, level) * 8;
    const lo = d.memory.read32(entry[level]!);
    if ((lo & 1) === 0) {
      for (let l = level - 1; l >= 1; l--) table[l] = -1;
      break;
    }
    mfn = (d.memory.read32(entry[level]! + 4) & 0xfffff) * 2 ** 20 + (lo >>> 12);
  }
  return { table, entry };
}

/**
 * The frame table's state of every frame (count; type, type count and flags where the
 * type count is not 0, since a frame at type count 0 may take any type) and the contents
 * of every frame in use as a page table, plus the M2P.
 */
export function snapshotFrames(d: PvDomain): string {
  const types = d.types;
  const parts: string[] = [];
  for (let mfn = 0; mfn < d.frames.frameCount; mfn++) {
    const inUse = types.typeCount[mfn]! > 0;
    parts.push(
      `${mfn}:${d.frames.owner[mfn]}/${types.count[mfn]}/` +
        (inUse
          ? `${types.type[mfn]}x${types.typeCount[mfn]}f${types.flags[mfn]}l${
            types.linearCount[mfn]
          }`
          : "-"),
    );
    if (inUse && types.type[mfn]! <= 4 && types.type[mfn]! >= 1) {
      const words = d.memory.frameWords(mfn as never);
      parts.push(words === undefined ? "zero" : Array.from(words).join(","));
    }
  }
  parts.push(Array.from(d.m2p).join(","));
  parts.push(`cr3 ${d.guestTable} user ${d.guestTableUser}`);
  return parts.join("\n");
}
