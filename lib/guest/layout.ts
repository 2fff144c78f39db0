/**
 * The guest kernel's address-space layout and its software PTE bits, after Linux x86-64
 * with 4-level paging (Documentation/arch/x86/x86_64/mm.rst). Virtual addresses are
 * 48-bit linear values (bits 63..48 dropped); the canonical form is in each comment.
 *
 * ```
 * 0x0000_0000_0000_0000 .. 0x0000_7fff_ffff_ffff  user half (L4 slots 0..255), per process
 *   0x0040_0000      text of the default image     0x0060_0000  data, then the heap (brk)
 *   MMAP_BASE        mmap areas, placed top-down   STACK_TOP    the stack, growing down
 * 0xffff_8880_0000_0000                            direct map of all guest-physical memory
 * 0xffff_ffff_8100_0000                            kernel text (one page)
 * ```
 * The kernel half (L4 slots 256..511) is built once at boot and copied into every new
 * top level, as Linux's pgd_alloc does.
 *
 * @module
 */

import { PTE_GLOBAL } from "../x86/pte.ts";

/** Start of the direct map (canonical 0xffff_8880_0000_0000): gva = DIRECT_MAP_BASE + gpa. */
export const DIRECT_MAP_BASE = 0x8880_0000_0000;
/** The kernel text page (canonical 0xffff_ffff_8100_0000). */
export const KERNEL_TEXT_BASE = 0xffff_8100_0000;
/** First L4 slot of the kernel half. */
export const KERNEL_L4_FIRST_SLOT = 256;
/** One past the highest user address (canonical 0x0000_7fff_ffff_f000, as TASK_SIZE_MAX). */
export const USER_LIMIT = 0x7fff_ffff_f000;
/** Top of the default stack. */
export const STACK_TOP = 0x7fff_ffff_f000;
/** Size of the default stack. */
export const STACK_SIZE = 32 * 4096;
/** mmap areas are placed top-down below this address. */
export const MMAP_BASE = 0x7f00_0000_0000;
/** Start of the default image's text. */
export const IMAGE_TEXT_START = 0x40_0000;
/** Start of the default image's data; the heap follows it. */
export const IMAGE_DATA_START = 0x60_0000;

/** PROT_READ. */
export const PROT_READ = 1;
/** PROT_WRITE. */
export const PROT_WRITE = 2;
/** PROT_EXEC. */
export const PROT_EXEC = 4;
/** PROT_NONE. */
export const PROT_NONE = 0;

/**
 * Software bit of a non-present leaf: the entry holds a swap slot in bits 51..12
 * (Linux keeps swap entries in non-present PTEs the same way). Bit 9 is ignored by the
 * processor (SDM Table 4-19).
 */
export const PTE_SOFT_SWAP = 0x200;
/**
 * Software bit of a non-present leaf that still maps its frame: the page is PROT_NONE
 * (Linux's _PAGE_PROTNONE reuses the global bit, which means nothing when P=0).
 */
export const PTE_SOFT_PROTNONE: number = PTE_GLOBAL;

/** Linux errno values returned (negated) by the kernel's calls. */
export const EPERM = 1;
/** No such process. */
export const ESRCH = 3;
/** No child processes. */
export const ECHILD = 10;
/** Out of memory. */
export const ENOMEM = 12;
/** Invalid argument. */
export const EINVAL = 22;

/** SIGKILL (out of memory). */
export const SIGKILL = 9;
/** SIGSEGV (bad memory access). */
export const SIGSEGV = 11;
