/**
 * The paravirtual paging-ops backend, as Linux's `arch/x86/xen/mmu_pv.c` and
 * `multicalls.c` do it: the guest's tables hold machine frames, so every entry is
 * converted GFN -> MFN on the way in and MFN -> GFN on the way out (present entries only,
 * as pte_pfn_to_mfn / pte_mfn_to_pfn: swap and PROT_NONE entries keep their numbers),
 * through the P2M the guest keeps and Xen's read-only M2P. Reads go straight to memory
 * (tables are mapped read-only in the direct map); every change is a hypercall:
 *
 * | kernel operation | hypercall |
 * | --- | --- |
 * | setEntry, clearEntry, set/clearFlags | mmu_update MMU_NORMAL_PT_UPDATE (flag changes that keep A/D: PRESERVE_AD) |
 * | commitProtectionChange | mmu_update MMU_PT_UPDATE_PRESERVE_AD (ptep_modify_prot_commit) |
 * | newTable | update_va_mapping (direct map read-only, no flush) + MMUEXT_PIN_Ln_TABLE |
 * | releaseTable | MMUEXT_UNPIN_TABLE + update_va_mapping (writable again, UVMF_INVLPG) |
 * | switchCr3 | MMUEXT_NEW_BASEPTR |
 * | flushOne / flushAll | MMUEXT_INVLPG_LOCAL / MMUEXT_TLB_FLUSH_LOCAL |
 *
 * Calls are queued in a multicall buffer (Linux's per-CPU `mc_buffer`: 32 entries and 512
 * bytes of arguments) that the kernel writes through the vCPU; consecutive mmu_update (or
 * mmuext_op) requests share one entry (`xen_extend_mmu_update`). Outside lazy MMU mode the
 * buffer is issued at once; in lazy mode it is issued when full (the next call would
 * reach 32 entries or 512 bytes), at leaveLazy, or before a read of an entry that a
 * queued update targets (the lab's kernel keeps lazy mode across a whole area's copy,
 * where Linux's covers one leaf table, so it may read an entry back). A batch of one call
 * is made directly, as xen_mc_flush does. A failed call is a kernel BUG: the domain
 * crashes with the reason.
 *
 * Lab choices: the buffer lives in guest frame 0, which the kernel's frame allocator
 * reserves and never hands out (Linux's is a per-CPU variable in kernel data; this
 * kernel has no data section). Every new table is pinned (Linux pins L1s individually and
 * the top level when an mm is first used); a released table is made writable with
 * UVMF_INVLPG (Linux uses no flush and relies on its spurious-fault handler, which the
 * lab's kernel does not have).
 *
 * @module
 */

import { ACCESS_READ, ACCESS_WRITE } from "../x86/access.ts";
import { linearHigh32, PAGE_SIZE } from "../x86/address.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_XD,
  PTE_PRESENT,
  PTE_WRITABLE,
  pteAddress,
} from "../x86/pte.ts";
import { declareCounter } from "../x86/stats.ts";
import type { Interpreter } from "../x86/interpreter.ts";
import { RUN_CRASHED, RUN_DONE } from "../platform/platform.ts";
import type { PvPlatform } from "../platform/pv.ts";
import {
  DOMID_SELF,
  formatHypercallResult,
  HYPERCALL_NAMES,
  HYPERVISOR_MMU_UPDATE,
  HYPERVISOR_MMUEXT_OP,
  HYPERVISOR_MULTICALL,
  HYPERVISOR_UPDATE_VA_MAPPING,
  MMU_NORMAL_PT_UPDATE,
  MMU_PT_UPDATE_PRESERVE_AD,
  MMU_UPDATE_SIZE,
  MMUEXT_INVLPG_LOCAL,
  MMUEXT_NEW_BASEPTR,
  MMUEXT_OP_SIZE,
  MMUEXT_PIN_L1_TABLE,
  MMUEXT_TLB_FLUSH_LOCAL,
  MMUEXT_UNPIN_TABLE,
  MULTICALL_ENTRY_SIZE,
  UVMF_INVLPG,
  UVMF_NONE,
} from "../../hypercalls/abi.ts";
import { DIRECT_MAP_BASE } from "./layout.ts";
import type { KernelCode } from "./kernel_code.ts";
import type { EntryValue, PagingOps } from "./paging_ops.ts";

/** Linux's MC_BATCH: multicall entries in the buffer. */
export const MC_BATCH = 32;
/** Linux's MC_ARGS: bytes of arguments (mmu_update and mmuext_op structures). */
export const MC_ARGS: number = MC_BATCH * 16;
/** Guest-physical address of the multicall buffer: entries, then arguments at +0x800. */
export const MC_BUFFER_GPA = 0;

/** Batches the PV backend issued. */
export const PVOPS_FLUSH: number = declareCounter(
  "pvops.flush",
  "multicall batches the PV paging-ops backend issued (xen_mc_flush with work)",
  "batches",
);
/** Batches issued because the buffer was full. */
export const PVOPS_FLUSH_FULL: number = declareCounter(
  "pvops.flush.full",
  "batches issued because the next call did not fit (32 entries or 512 bytes)",
  "batches",
);
/** Batches issued before a read of a queued entry. */
export const PVOPS_FLUSH_READ_BACK: number = declareCounter(
  "pvops.flush.readBack",
  "batches issued in lazy mode before the kernel read an entry with a queued update",
  "batches",
);

const ENTRIES_VA = DIRECT_MAP_BASE + MC_BUFFER_GPA;
const ARGS_VA = DIRECT_MAP_BASE + MC_BUFFER_GPA + 0x800;
// PAGE_KERNEL_RO / PAGE_KERNEL of the direct map (low word; XD in the high word).
const KERNEL_RO = PTE_PRESENT | PTE_ACCESSED | PTE_GLOBAL;
const KERNEL_RW = KERNEL_RO | PTE_WRITABLE | PTE_DIRTY;
// Registers of the hypercall ABI: RAX, then RDI, RSI, RDX, R10, R8.
const RAX = 0;
const ARG_REGISTERS = [7, 6, 2, 10, 8] as const;
/** The frame pte_mfn_to_pfn gives an MFN that has no GFN (Linux: ~0). */
const NO_GFN = 2 ** 40 - 1;

/**
 * Paging ops by validated hypercalls.
 *
 * @example Build one for a PV platform (createLab does this for "pv")
 * ```ts
 * import { PvPagingOps } from "./pv_paging_ops.ts";
 * import { GuestKernel } from "./kernel.ts";
 * import { PvPlatform } from "../platform/pv.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 2048 });
 * const kernel = new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) });
 * kernel.boot();
 * const parent = kernel.spawn();
 * kernel.writeU32(parent, 0x600000, 1);
 * const child = kernel.fork(parent);
 * kernel.writeU32(child, 0x600000, 2);
 * assert.deepEqual([kernel.readU32(parent, 0x600000), kernel.readU32(child, 0x600000)], [1, 2]);
 * assert.equal(kernel.ops.name, "pv");
 * ```
 */
export class PvPagingOps implements PagingOps {
  /** "pv". */
  readonly name = "pv";
  readonly #platform: PvPlatform;
  readonly #interpreter: Interpreter;
  readonly #counts: Float64Array;
  readonly #p2m: Int32Array;
  readonly #m2p: Float64Array;
  // The batch (struct mc_buffer): entries used, bytes of arguments used, and each entry's
  // op and six arguments as u32 halves (what the buffer in guest memory holds).
  #mcidx = 0;
  #argidx = 0;
  #argSlot = 0;
  readonly #ops = new Int32Array(MC_BATCH);
  readonly #args = new Uint32Array(MC_BATCH * 12);
  // Machine addresses of the entries queued mmu_updates target.
  readonly #pending = new Float64Array(MC_BATCH);
  #pendingCount = 0;
  #lazy = false;
  #lo = 0;
  #hi = 0;

  /** Ops for the kernel text `code` on PV platform `platform`. */
  constructor(code: KernelCode, platform: PvPlatform) {
    this.#platform = platform;
    this.#interpreter = code.interpreter;
    this.#counts = platform.stats.counts;
    this.#p2m = platform.p2mList;
    this.#m2p = platform.m2p;
  }

  /** Reads the entry through the direct map; a present entry's MFN becomes its GFN. */
  readEntry(_level: number, entryGpa: number, out: EntryValue): number {
    const outcome = this.#readMachineEntry(entryGpa);
    this.#toPseudo(this.#lo, this.#hi);
    out.lo = outcome === RUN_DONE ? this.#lo : 0;
    out.hi = outcome === RUN_DONE ? this.#hi : 0;
    return outcome;
  }

  /** set_pte and friends: mmu_update with the entry in machine terms. */
  setEntry(_level: number, entryGpa: number, lo: number, hi: number): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#toMachine(lo, hi);
    this.#queueMmuUpdate(entryGpa, MMU_NORMAL_PT_UPDATE, this.#lo, this.#hi);
    return this.#issue();
  }

  /** ptep_get_and_clear: the entry is read, then cleared by mmu_update. */
  clearEntry(_level: number, entryGpa: number, out: EntryValue): number {
    const outcome = this.#readMachineEntry(entryGpa);
    if (outcome !== RUN_DONE) {
      out.lo = 0;
      out.hi = 0;
      return outcome;
    }
    this.#toPseudo(this.#lo, this.#hi);
    out.lo = this.#lo;
    out.hi = this.#hi;
    this.#queueMmuUpdate(entryGpa, MMU_NORMAL_PT_UPDATE, 0, 0);
    return this.#issue();
  }

  /** Sets flag bits: the new entry, keeping any A/D the processor set meanwhile. */
  setFlags(_level: number, entryGpa: number, loBits: number, hiBits: number): number {
    const outcome = this.#readMachineEntry(entryGpa);
    if (outcome !== RUN_DONE) return outcome;
    this.#queueMmuUpdate(
      entryGpa,
      MMU_PT_UPDATE_PRESERVE_AD,
      (this.#lo | loBits) >>> 0,
      (this.#hi | hiBits) >>> 0,
    );
    return this.#issue();
  }

  /** Clears flag bits (A/D preserved unless A or D is what is being cleared). */
  clearFlags(_level: number, entryGpa: number, loBits: number, hiBits: number): number {
    const outcome = this.#readMachineEntry(entryGpa);
    if (outcome !== RUN_DONE) return outcome;
    const command = (loBits & (PTE_ACCESSED | PTE_DIRTY)) !== 0
      ? MMU_NORMAL_PT_UPDATE
      : MMU_PT_UPDATE_PRESERVE_AD;
    this.#queueMmuUpdate(
      entryGpa,
      command,
      (this.#lo & ~loBits) >>> 0,
      (this.#hi & ~hiBits) >>> 0,
    );
    return this.#issue();
  }

  /** xen_ptep_modify_prot_start: just the entry (A/D are preserved at commit). */
  startProtectionChange(entryGpa: number, out: EntryValue): number {
    return this.readEntry(1, entryGpa, out);
  }

  /** xen_ptep_modify_prot_commit: mmu_update MMU_PT_UPDATE_PRESERVE_AD. */
  commitProtectionChange(entryGpa: number, lo: number, hi: number): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#toMachine(lo, hi);
    this.#queueMmuUpdate(entryGpa, MMU_PT_UPDATE_PRESERVE_AD, this.#lo, this.#hi);
    return this.#issue();
  }

  /** xen_alloc_ptpage: the frame's direct-map page becomes read-only, then it is pinned. */
  newTable(level: number, gfn: number): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    const mfn = this.#p2m[gfn]!;
    this.#queueUpdateVaMapping(gfn, KERNEL_RO, UVMF_NONE);
    this.#queueMmuext(MMUEXT_PIN_L1_TABLE + level - 1, mfn, true);
    return this.#issue();
  }

  /** xen_release_ptpage: unpinned, then writable again in the direct map. */
  releaseTable(_level: number, gfn: number): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#queueMmuext(MMUEXT_UNPIN_TABLE, this.#p2m[gfn]!, true);
    this.#queueUpdateVaMapping(gfn, KERNEL_RW, UVMF_INVLPG);
    return this.#issue();
  }

  /** xen_write_cr3: MMUEXT_NEW_BASEPTR (the PCID and no-flush bit are Xen's business). */
  switchCr3(l4Gfn: number, _pcid: number, _noFlush: boolean): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#queueMmuext(MMUEXT_NEW_BASEPTR, this.#p2m[l4Gfn]!, true);
    return this.#issue();
  }

  /** xen_flush_tlb_one_user: MMUEXT_INVLPG_LOCAL. */
  flushOne(gva: number): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#queueMmuext(MMUEXT_INVLPG_LOCAL, gva - (gva % PAGE_SIZE), false);
    return this.#issue();
  }

  /** xen_flush_tlb: MMUEXT_TLB_FLUSH_LOCAL. */
  flushAll(): number {
    if (this.#isCrashed()) return RUN_CRASHED;
    this.#queueMmuext(MMUEXT_TLB_FLUSH_LOCAL, 0, false);
    return this.#issue();
  }

  /** xen_enter_lazy_mmu: calls are queued until leaveLazy (or the buffer is full). */
  enterLazy(): number {
    this.#lazy = true;
    return this.#isCrashed() ? RUN_CRASHED : RUN_DONE;
  }

  /** xen_leave_lazy_mmu: issues the batch. */
  leaveLazy(): number {
    const outcome = this.#flush();
    this.#lazy = false;
    return outcome;
  }

  // -------------------------------------------------------------------------------------
  // Entries: reads and conversions.
  // -------------------------------------------------------------------------------------

  // Reads the machine entry at entryGpa into #lo/#hi (after issuing a batch that holds an
  // update of it).
  #readMachineEntry(entryGpa: number): number {
    if (this.#pendingCount > 0) {
      const ma = this.#machineAddress(entryGpa);
      for (let i = 0; i < this.#pendingCount; i++) {
        if (this.#pending[i] === ma) {
          this.#counts[PVOPS_FLUSH_READ_BACK]++;
          if (this.#flush() !== RUN_DONE) return RUN_CRASHED;
          break;
        }
      }
    }
    const platform = this.#platform;
    const outcome = platform.access(DIRECT_MAP_BASE + entryGpa, 8, ACCESS_READ, 0, 0, false);
    this.#lo = outcome === RUN_DONE ? platform.cpu.data : 0;
    this.#hi = outcome === RUN_DONE ? platform.cpu.dataHi : 0;
    return outcome;
  }

  // pte_pfn_to_mfn: a present entry's GFN becomes its MFN; one with no MFN becomes empty.
  #toMachine(lo: number, hi: number): void {
    if ((lo & PTE_PRESENT) === 0) {
      this.#lo = lo >>> 0;
      this.#hi = hi >>> 0;
      return;
    }
    const gfn = pteAddress(lo, hi) / PAGE_SIZE;
    const mfn = gfn < this.#p2m.length ? this.#p2m[gfn]! : -1;
    if (mfn < 0) {
      this.#lo = 0;
      this.#hi = 0;
      return;
    }
    this.#lo = (((mfn % 2 ** 20) * PAGE_SIZE) + (lo & 0xfff)) >>> 0;
    this.#hi = ((hi & 0xfff00000) | Math.floor(mfn / 2 ** 20)) >>> 0;
  }

  // pte_mfn_to_pfn: a present entry's MFN becomes its GFN (M2P, checked against the P2M;
  // the device's frame through the P2M's I/O entry).
  #toPseudo(lo: number, hi: number): void {
    if ((lo & PTE_PRESENT) === 0) {
      this.#lo = lo >>> 0;
      this.#hi = hi >>> 0;
      return;
    }
    const mfn = pteAddress(lo, hi) / PAGE_SIZE;
    const p2m = this.#p2m;
    let gfn = mfn < this.#m2p.length ? this.#m2p[mfn]! : -1;
    if (!(gfn >= 0 && gfn < p2m.length && p2m[gfn] === mfn)) {
      const io = p2m.length - 1; // the device's GFN, right above RAM
      gfn = p2m[io] === mfn ? io : NO_GFN;
    }
    this.#lo = (((gfn % 2 ** 20) * PAGE_SIZE) + (lo & 0xfff)) >>> 0;
    this.#hi = ((hi & 0xfff00000) | Math.floor(gfn / 2 ** 20)) >>> 0;
  }

  #machineAddress(entryGpa: number): number {
    const gfn = Math.floor(entryGpa / PAGE_SIZE);
    return this.#p2m[gfn]! * PAGE_SIZE + (entryGpa % PAGE_SIZE);
  }

  // -------------------------------------------------------------------------------------
  // The multicall buffer.
  // -------------------------------------------------------------------------------------

  // xen_extend_mmu_update: appended to the last entry if it is an mmu_update with room.
  #queueMmuUpdate(entryGpa: number, command: number, lo: number, hi: number): void {
    const ma = this.#machineAddress(entryGpa);
    if (!this.#extendArgs(HYPERVISOR_MMU_UPDATE, MMU_UPDATE_SIZE)) {
      const i = this.#newEntry(HYPERVISOR_MMU_UPDATE, MMU_UPDATE_SIZE);
      this.#setArg(i, 0, ARGS_VA + this.#argSlot);
      this.#setArg(i, 1, 1);
      this.#setArg(i, 2, 0); // pdone: NULL
      this.#setArg(i, 3, DOMID_SELF);
    } else {
      const i = this.#mcidx - 1;
      this.#setArg(i, 1, this.#args[i * 12 + 2]! + 1); // mc->args[1]++
    }
    const at = ARGS_VA + this.#argSlot;
    this.#write(at, ((ma % 2 ** 32) + command) >>> 0, Math.floor(ma / 2 ** 32));
    this.#write(at + 8, lo, hi);
    this.#pending[this.#pendingCount++] = ma;
  }

  // xen_extend_mmuext_op (extend) or xen_mc_entry + MULTI_mmuext_op (a new entry).
  #queueMmuext(cmd: number, arg1: number, extend: boolean): void {
    if (!extend || !this.#extendArgs(HYPERVISOR_MMUEXT_OP, MMUEXT_OP_SIZE)) {
      const i = this.#newEntry(HYPERVISOR_MMUEXT_OP, MMUEXT_OP_SIZE);
      this.#setArg(i, 0, ARGS_VA + this.#argSlot);
      this.#setArg(i, 1, 1);
      this.#setArg(i, 2, 0);
      this.#setArg(i, 3, DOMID_SELF);
    } else {
      const i = this.#mcidx - 1;
      this.#setArg(i, 1, this.#args[i * 12 + 2]! + 1);
    }
    const at = ARGS_VA + this.#argSlot;
    this.#write(at, cmd, 0);
    this.#write(at + 8, arg1 >>> 0, Math.floor(arg1 / 2 ** 32) >>> 0);
    this.#write(at + 16, 0, 0);
  }

  // __set_pfn_prot: MULTI_update_va_mapping of the frame's direct-map page.
  #queueUpdateVaMapping(gfn: number, flags: number, uvmf: number): void {
    const mfn = this.#p2m[gfn]!;
    const i = this.#newEntry(HYPERVISOR_UPDATE_VA_MAPPING, 0);
    this.#setArg(i, 0, DIRECT_MAP_BASE + gfn * PAGE_SIZE);
    this.#setArgWords(
      i,
      1,
      ((mfn % 2 ** 20) * PAGE_SIZE + flags) >>> 0,
      (PTE_HI_XD | Math.floor(mfn / 2 ** 20)) >>> 0,
    );
    this.#setArg(i, 2, uvmf);
  }

  // xen_mc_extend_args: room for `size` more bytes in the last entry's arguments.
  #extendArgs(op: number, size: number): boolean {
    if (this.#mcidx === 0 || this.#ops[this.#mcidx - 1] !== op) return false;
    if (this.#argidx + size >= MC_ARGS) return false;
    this.#argSlot = this.#argidx;
    this.#argidx += size;
    return true;
  }

  // __xen_mc_entry: a new entry with `size` bytes of arguments, issuing the batch first
  // when it would not fit.
  #newEntry(op: number, size: number): number {
    let argidx = (this.#argidx + 7) & ~7;
    if (this.#mcidx === MC_BATCH || argidx + size >= MC_ARGS) {
      this.#counts[PVOPS_FLUSH_FULL]++;
      this.#flush();
      argidx = 0;
    }
    const i = this.#mcidx++;
    this.#argSlot = argidx;
    this.#argidx = argidx + size;
    this.#ops[i] = op;
    this.#args.fill(0, i * 12, i * 12 + 12);
    this.#write(ENTRIES_VA + i * MULTICALL_ENTRY_SIZE, op, 0);
    return i;
  }

  #setArg(i: number, a: number, value: number): void {
    const hi = value >= 2 ** 47 ? linearHigh32(value) : Math.floor(value / 2 ** 32);
    this.#setArgWords(i, a, value >>> 0, hi >>> 0);
  }

  #setArgWords(i: number, a: number, lo: number, hi: number): void {
    this.#args[i * 12 + 2 * a] = lo;
    this.#args[i * 12 + 2 * a + 1] = hi;
    this.#write(ENTRIES_VA + i * MULTICALL_ENTRY_SIZE + 16 + a * 8, lo, hi);
  }

  // A store into the buffer through the vCPU (the kernel's own write to its memory).
  #write(va: number, lo: number, hi: number): void {
    this.#platform.access(va, 8, ACCESS_WRITE, lo >>> 0, hi >>> 0, false);
  }

  // xen_mc_issue(XEN_LAZY_MMU): outside lazy mode the batch goes at once.
  #issue(): number {
    if (!this.#lazy) return this.#flush();
    return this.#isCrashed() ? RUN_CRASHED : RUN_DONE;
  }

  // xen_mc_flush: nothing, one call made directly, or a multicall.
  #flush(): number {
    const n = this.#mcidx;
    this.#mcidx = 0;
    this.#argidx = 0;
    this.#pendingCount = 0;
    if (this.#isCrashed()) return RUN_CRASHED;
    if (n === 0) return RUN_DONE;
    this.#counts[PVOPS_FLUSH]++;
    const platform = this.#platform;
    const interpreter = this.#interpreter;
    const args = this.#args;
    if (n === 1) {
      interpreter.setReg(RAX, this.#ops[0]!, 0);
      for (let a = 0; a < 5; a++) {
        interpreter.setReg(ARG_REGISTERS[a], args[2 * a]!, args[2 * a + 1]!);
      }
      const rc = platform.hypercall();
      if (rc < 0) return this.#bug(1, 1, this.#ops[0]!, rc);
      return this.#isCrashed() ? RUN_CRASHED : RUN_DONE;
    }
    interpreter.setReg(RAX, HYPERVISOR_MULTICALL, 0);
    interpreter.setReg(ARG_REGISTERS[0], ENTRIES_VA >>> 0, linearHigh32(ENTRIES_VA));
    interpreter.setReg(ARG_REGISTERS[1], n, 0);
    const rc = platform.hypercall();
    if (rc !== 0) return this.#bug(n, n, HYPERVISOR_MULTICALL, rc);
    let failed = 0;
    let firstOp = 0;
    let firstRc = 0;
    for (let i = 0; i < n; i++) {
      const va = ENTRIES_VA + i * MULTICALL_ENTRY_SIZE + 8;
      if (platform.access(va, 8, ACCESS_READ, 0, 0, false) !== RUN_DONE) return RUN_CRASHED;
      if ((platform.cpu.dataHi >>> 31) !== 0) {
        if (failed++ === 0) {
          firstOp = this.#ops[i]!;
          firstRc = platform.cpu.data | 0;
        }
      }
    }
    if (failed > 0) return this.#bug(failed, n, firstOp, firstRc);
    return this.#isCrashed() ? RUN_CRASHED : RUN_DONE;
  }

  // A failed call: Linux WARNs and its caller BUGs; the lab crashes the domain.
  #bug(failed: number, n: number, op: number, rc: number): number {
    this.#platform.crash(
      `kernel BUG: ${failed} of ${n} multicall(s) failed: ` +
        `${HYPERCALL_NAMES[op] ?? `hypercall ${op}`} returned ${formatHypercallResult(rc)}`,
    );
    return RUN_CRASHED;
  }

  #isCrashed(): boolean {
    return this.#platform.crashReason !== "";
  }
}
