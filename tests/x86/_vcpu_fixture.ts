/**
 * A small IA-32e address space for vCPU and TLB tests: a lazily backed MachineMemory, a
 * PML4 at 0x1000, tables handed out bottom-up from frame 2, and `map` / `unmap` that
 * edit the tables in memory and touch nothing else (no TLB invalidation: a test that
 * changes a mapping invalidates as the guest would have to).
 *
 * Table frames live below {@link TABLE_LIMIT}; tests put data pages above it.
 */

import { PAGE_SIZE } from "../../lib/x86/address.ts";
import { PagingControl, type PagingControlInit } from "../../lib/x86/paging_control.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import { Stats } from "../../lib/x86/stats.ts";
import type { TlbConfig } from "../../lib/x86/tlb.ts";
import { Vcpu } from "../../lib/x86/vcpu.ts";
import { MachineMemory } from "../../lib/memory/machine_memory.ts";
import { leafLevelOf, PageTables } from "./_page_tables.ts";

/** Physical address of the PML4 (CR3's table address). */
export const PML4_ADDRESS = 0x1000;
/** Tables are allocated below this physical address; data pages go above it. */
export const TABLE_LIMIT = 0x100000;
/** Flags of every intermediate entry the fixture creates: rights come from the leaf. */
export const TABLE_FLAGS = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

/** Options of {@link buildVcpuFixture}. */
export interface VcpuFixtureOptions {
  /** Installed frames; default 2^20 (4 GiB, lazily backed). */
  frames?: number;
  /** Control registers; cr3 defaults to {@link PML4_ADDRESS}. */
  ctl?: PagingControlInit;
  /** TLB geometry. */
  tlb?: TlbConfig;
  /** Whether the vCPU uses its TLB; default true. */
  tlbEnabled?: boolean;
}

/** High-word attributes of a leaf. */
export interface LeafHigh {
  /** XD (bit 63). */
  xd?: boolean;
  /** Protection key, 0..15. */
  pkey?: number;
}

/** What {@link buildVcpuFixture} returns. */
export interface VcpuFixture {
  memory: MachineMemory;
  ctl: PagingControl;
  cpu: Vcpu;
  stats: Stats;
  /**
   * Maps the page of `size` (4 KiB, 2 MiB or 1 GiB) containing `va` to `pa` with low-word
   * leaf `flags` (PS is added for large pages), creating missing tables.
   */
  map(va: number, pa: number, flags: number, size?: number, high?: LeafHigh): void;
  /** Clears the leaf entry that maps `va` (whatever its level); no-op if none. */
  unmap(va: number): void;
  /**
   * Physical address of the entry at `level` (4..1) used to translate `va`, or -1 when a
   * table above it is missing or a large page ends the walk first.
   */
  entryAddress(va: number, level: number): number;
  /** Physical address of the leaf entry mapping `va`, or -1 when unmapped. */
  leafAddress(va: number): number;
}

/** An empty address space with a vCPU on it (see the module doc). */
export function buildVcpuFixture(options: VcpuFixtureOptions = {}): VcpuFixture {
  const stats = new Stats();
  const memory = new MachineMemory({ frames: options.frames ?? 2 ** 20, stats });
  const ctl = new PagingControl({ cr3: PML4_ADDRESS, ...options.ctl });
  const vcpuOptions: { tlb?: TlbConfig; tlbEnabled?: boolean } = {};
  if (options.tlb !== undefined) vcpuOptions.tlb = options.tlb;
  if (options.tlbEnabled !== undefined) vcpuOptions.tlbEnabled = options.tlbEnabled;
  const cpu = new Vcpu(memory, ctl, stats, vcpuOptions);
  const tables = new PageTables(memory, PML4_ADDRESS, TABLE_LIMIT);

  const map = (va: number, pa: number, flags: number, size = PAGE_SIZE, high: LeafHigh = {}) => {
    const xdLevels = high.xd === true ? [leafLevelOf(size)] : [];
    const options = { pageSize: size, flags, tableFlags: TABLE_FLAGS, keepTables: true };
    tables.map(va - va % size, pa, { ...options, xdLevels, pkey: high.pkey ?? 0 });
  };

  return {
    memory,
    ctl,
    cpu,
    stats,
    map,
    unmap: (va) => tables.unmap(va),
    entryAddress: (va, level) => tables.entryAddress(va, level),
    leafAddress: (va) => tables.leafAddress(va),
  };
}
