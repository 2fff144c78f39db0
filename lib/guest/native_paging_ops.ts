/**
 * The native paging-ops backend: each operation runs a routine of the kernel text on the
 * vCPU, so page tables change by real `mov`, `xchg`, `lock or` / `lock and` stores through
 * the direct map, and CR3 / INVLPG by real instructions. The `native`, `hvm-shadow` and
 * `hvm-hap` platforms all use it: the guest does not know it is virtualized; a shadowing
 * hypervisor traps these stores and decodes the bytes.
 *
 * @module
 */

import { ACCESS_READ } from "../x86/access.ts";
import { PAGE_SIZE } from "../x86/address.ts";
import { RUN_DONE } from "../platform/platform.ts";
import { DIRECT_MAP_BASE } from "./layout.ts";
import type { KernelCode } from "./kernel_code.ts";
import { RAX, RDI, RSI } from "./kernel_text.ts";
import type { EntryValue, PagingOps } from "./paging_ops.ts";

/**
 * Paging ops by instruction execution.
 *
 * @example Build one (GuestKernel does this for every platform but pv)
 * ```ts
 * import { NativePagingOps } from "./native_paging_ops.ts";
 * import { KernelCode } from "./kernel_code.ts";
 * import { KernelText } from "./kernel_text.ts";
 * import { KERNEL_TEXT_BASE } from "./layout.ts";
 * import { NativePlatform } from "../platform/native.ts";
 * const platform = new NativePlatform({ frames: 64 });
 * const ops = new NativePagingOps(new KernelCode(platform, new KernelText(KERNEL_TEXT_BASE)));
 * console.assert(ops.name === "native");
 * ```
 */
export class NativePagingOps implements PagingOps {
  /** "native". */
  readonly name = "native";
  readonly #code: KernelCode;

  /** Ops that run `code`'s routines. */
  constructor(code: KernelCode) {
    this.#code = code;
  }

  /** Reads through the direct map at CPL 0 (a plain load; nothing traps a read). */
  readEntry(_level: number, entryGpa: number, out: EntryValue): number {
    const platform = this.#code.platform;
    const outcome = platform.access(DIRECT_MAP_BASE + entryGpa, 8, ACCESS_READ, 0, 0, false);
    out.lo = outcome === RUN_DONE ? platform.cpu.data : 0;
    out.hi = outcome === RUN_DONE ? platform.cpu.dataHi : 0;
    return outcome;
  }

  /** `mov [rdi], rsi`. */
  setEntry(_level: number, entryGpa: number, lo: number, hi: number): number {
    const code = this.#code;
    code.setAddress(RDI, DIRECT_MAP_BASE + entryGpa);
    code.interpreter.setReg(RSI, lo, hi);
    return code.call("setEntry");
  }

  /** `xchg [rdi], rsi` with RSI = 0; the old entry comes back in RSI. */
  clearEntry(_level: number, entryGpa: number, out: EntryValue): number {
    const code = this.#code;
    const interpreter = code.interpreter;
    code.setAddress(RDI, DIRECT_MAP_BASE + entryGpa);
    interpreter.setReg(RSI, 0, 0);
    const outcome = code.call("exchangeEntry");
    out.lo = outcome === RUN_DONE ? interpreter.regLo(RSI) : 0;
    out.hi = outcome === RUN_DONE ? interpreter.regHi(RSI) : 0;
    return outcome;
  }

  /** `lock or [rdi], rsi`. */
  setFlags(_level: number, entryGpa: number, loBits: number, hiBits: number): number {
    const code = this.#code;
    code.setAddress(RDI, DIRECT_MAP_BASE + entryGpa);
    code.interpreter.setReg(RSI, loBits >>> 0, hiBits >>> 0);
    return code.call("orEntry");
  }

  /** `lock and [rdi], rsi` with RSI = ~bits. */
  clearFlags(_level: number, entryGpa: number, loBits: number, hiBits: number): number {
    const code = this.#code;
    code.setAddress(RDI, DIRECT_MAP_BASE + entryGpa);
    code.interpreter.setReg(RSI, ~loBits >>> 0, ~hiBits >>> 0);
    return code.call("andEntry");
  }

  /** Native ptep_modify_prot_start is ptep_get_and_clear. */
  startProtectionChange(entryGpa: number, out: EntryValue): number {
    return this.clearEntry(1, entryGpa, out);
  }

  /** Native ptep_modify_prot_commit is set_pte. */
  commitProtectionChange(entryGpa: number, lo: number, hi: number): number {
    return this.setEntry(1, entryGpa, lo, hi);
  }

  /** Nothing to do natively. */
  newTable(_level: number, _gfn: number): number {
    return RUN_DONE;
  }

  /** Nothing to do natively. */
  releaseTable(_level: number, _gfn: number): number {
    return RUN_DONE;
  }

  /** `mov cr3, rax` with RAX = table address | PCID | bit 63 for no flush. */
  switchCr3(l4Gfn: number, pcid: number, noFlush: boolean): number {
    const code = this.#code;
    const gpa = l4Gfn * PAGE_SIZE;
    const hi = Math.floor(gpa / 2 ** 32) | (noFlush ? 0x80000000 : 0);
    code.interpreter.setReg(RAX, ((gpa >>> 0) | pcid) >>> 0, hi >>> 0);
    return code.call("writeCr3");
  }

  /** `invlpg [rdi]`. */
  flushOne(gva: number): number {
    const code = this.#code;
    code.setAddress(RDI, gva);
    return code.call("invlpg");
  }

  /** `mov rax, cr3; mov cr3, rax`. */
  flushAll(): number {
    return this.#code.call("reloadCr3");
  }

  /** Native lazy MMU mode defers nothing (arch_enter_lazy_mmu_mode is empty). */
  enterLazy(): number {
    return RUN_DONE;
  }

  /** Native lazy MMU mode defers nothing. */
  leaveLazy(): number {
    return RUN_DONE;
  }
}
