/**
 * The guest kernel's text: the few machine-code routines through which the kernel touches
 * page tables, clears and copies pages, and drives the MMU. They are real x86-64
 * encodings (SDM Vol. 2), placed in one page of guest memory and executed by the vCPU's
 * interpreter, so a hypervisor that traps one of their writes fetches and decodes the
 * same bytes a processor would.
 *
 * Calling convention (System V): arguments in RDI, RSI, RAX; each routine ends in RET.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";
import {
  layoutSystemText,
  SERVICE_COUNT,
  SERVICE_OFFSET,
  type SystemLabel,
  type TextFlavour,
} from "./entry_text.ts";

/** Register numbers used by the routines. */
export const RAX = 0;
/** RCX: the count of a REP string instruction. */
export const RCX = 1;
/** RSI: the value or source. */
export const RSI = 6;
/** RDI: the address or destination. */
export const RDI = 7;

/**
 * The routines: name, bytes, and what they do. Each starts at a 16-byte boundary of the
 * text page, in this order.
 */
export const KERNEL_ROUTINES = {
  /** `mov [rdi], rsi; ret`: set_pte / set_pmd / set_pud / set_pgd. */
  setEntry: [0x48, 0x89, 0x37, 0xc3],
  /** `xchg [rdi], rsi; ret`: ptep_get_and_clear (RSI = 0 in, the old entry out). */
  exchangeEntry: [0x48, 0x87, 0x37, 0xc3],
  /** `lock cmpxchg [rdi], rsi; ret`: ptep_cmpxchg (RAX expected; ZF says it matched). */
  compareExchangeEntry: [0xf0, 0x48, 0x0f, 0xb1, 0x37, 0xc3],
  /** `lock or [rdi], rsi; ret`: set flag bits atomically (A, D, RW, XD). */
  orEntry: [0xf0, 0x48, 0x09, 0x37, 0xc3],
  /** `lock and [rdi], rsi; ret`: clear flag bits atomically (ptep_set_wrprotect, mkold). */
  andEntry: [0xf0, 0x48, 0x21, 0x37, 0xc3],
  /** `mov cr3, rax; ret`: switch address space (write_cr3). */
  writeCr3: [0x0f, 0x22, 0xd8, 0xc3],
  /** `mov rax, cr3; mov cr3, rax; ret`: flush the non-global TLB entries of the current PCID. */
  reloadCr3: [0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0xc3],
  /** `invlpg [rdi]; ret`: flush one page (__flush_tlb_one_user). */
  invlpg: [0x0f, 0x01, 0x3f, 0xc3],
  /** `mov ecx, 512; mov eax, 0; rep stosq; ret`: clear_page at RDI. */
  clearPage: [0xb9, 0x00, 0x02, 0x00, 0x00, 0xb8, 0x00, 0x00, 0x00, 0x00, 0xf3, 0x48, 0xab, 0xc3],
  /** `mov ecx, 512; rep movsq; ret`: copy_page from RSI to RDI. */
  copyPage: [0xb9, 0x00, 0x02, 0x00, 0x00, 0xf3, 0x48, 0xa5, 0xc3],
  /** `rep movsq; ret`: copy RCX qwords from RSI to RDI (clone_pgd_range's memcpy). */
  copyQwords: [0xf3, 0x48, 0xa5, 0xc3],
} as const;

/** A routine's name. */
export type KernelRoutine = keyof typeof KERNEL_ROUTINES;

/**
 * The text page: its bytes and where each routine starts.
 *
 * @example
 * ```ts
 * import { KernelText } from "./kernel_text.ts";
 * import assert from "node:assert/strict";
 * const text = new KernelText(0xffff_8100_0000);
 * assert.equal(text.address("setEntry"), 0xffff_8100_0000);
 * assert.deepEqual([...text.bytes.subarray(0, 4)], [0x48, 0x89, 0x37, 0xc3]);
 * ```
 */
export class KernelText {
  /** The page's 4096 bytes. */
  readonly bytes: Uint8Array = new Uint8Array(PAGE_SIZE);
  /** Which system text the page holds (see entry_text.ts). */
  readonly flavour: TextFlavour;
  readonly #offsets = new Map<KernelRoutine, number>();
  readonly #labels: Map<string, number>;
  readonly #stubs: Map<number, number>;
  readonly #base: number;

  /**
   * Lays the routines, then the system text of `flavour` (default native), out for a page
   * mapped at linear `base`.
   */
  constructor(base: number, flavour: TextFlavour = "native") {
    this.#base = base;
    this.flavour = flavour;
    let offset = 0;
    for (const [name, code] of Object.entries(KERNEL_ROUTINES)) {
      this.bytes.set(code, offset);
      this.#offsets.set(name as KernelRoutine, offset);
      offset += Math.ceil(code.length / 16) * 16;
    }
    // The rest of the page is INT3 (0xcc), as linkers pad kernel text.
    this.bytes.fill(0xcc, offset);
    const { labels, stubs } = layoutSystemText(this.bytes, flavour);
    this.#labels = labels;
    this.#stubs = stubs;
  }

  /** Linear address of the page. */
  get base(): number {
    return this.#base;
  }

  /** Linear address of routine `name`. */
  address(name: KernelRoutine): number {
    return this.#base + this.#offsets.get(name)!;
  }

  /** Linear address of system-text entry point `name` (-1 if this flavour has none). */
  entry(name: SystemLabel): number {
    const offset = this.#labels.get(name);
    return offset === undefined ? -1 : this.#base + offset;
  }

  /** Linear address of the stub of interrupt `vector` (-1 if none is installed). */
  stub(vector: number): number {
    const offset = this.#stubs.get(vector);
    return offset === undefined ? -1 : this.#base + offset;
  }

  /** Linear address of the service gate range (the kernel's C code) and its length. */
  get serviceRange(): { base: number; length: number } {
    return { base: this.#base + SERVICE_OFFSET, length: 16 * SERVICE_COUNT };
  }
}
