/**
 * Runs the kernel text's routines on the platform: loads argument registers, executes
 * from the routine's address to its RET, and offers the kernel's own page operations
 * (clear_page, copy_page, and the memcpy of the kernel half into a new top level).
 *
 * @module
 */

import { linearHigh32, PAGE_SIZE } from "../x86/address.ts";
import type { Interpreter } from "../x86/interpreter.ts";
import type { Platform } from "../platform/platform.ts";
import { DIRECT_MAP_BASE } from "./layout.ts";
import {
  KERNEL_ROUTINES,
  type KernelRoutine,
  type KernelText,
  RCX,
  RDI,
  RSI,
} from "./kernel_text.ts";

/**
 * The kernel text, bound to a platform.
 *
 * @example Clear a page of a booted guest (see GuestKernel for booting)
 * ```ts
 * import { KernelCode } from "./kernel_code.ts";
 * import { KernelText } from "./kernel_text.ts";
 * import { KERNEL_TEXT_BASE } from "./layout.ts";
 * import { NativePlatform } from "../platform/native.ts";
 * const code = new KernelCode(new NativePlatform({ frames: 64 }), new KernelText(KERNEL_TEXT_BASE));
 * console.assert(code.address("clearPage") > KERNEL_TEXT_BASE);
 * ```
 */
export class KernelCode {
  /** The platform the routines run on. */
  readonly platform: Platform;
  /** The interpreter whose registers carry the arguments. */
  readonly interpreter: Interpreter;
  /** The text page's layout. */
  readonly text: KernelText;
  readonly #rip = new Map<KernelRoutine, number>();

  /** Binds `text` (mapped at its base address in the guest) to `platform`. */
  constructor(platform: Platform, text: KernelText) {
    this.platform = platform;
    this.interpreter = platform.interpreter;
    this.text = text;
    for (const name of Object.keys(KERNEL_ROUTINES) as KernelRoutine[]) {
      this.#rip.set(name, text.address(name));
    }
  }

  /** Linear address of routine `name`. */
  address(name: KernelRoutine): number {
    return this.#rip.get(name)!;
  }

  /** Loads `register` with the canonical 64-bit form of 48-bit linear `va`. */
  setAddress(register: number, va: number): void {
    this.interpreter.setReg(register, va >>> 0, linearHigh32(va));
  }

  /** Runs routine `name` to its RET; returns the platform's `RUN_*` outcome. */
  call(name: KernelRoutine): number {
    return this.platform.execute(this.#rip.get(name)!);
  }

  /** clear_page: `rep stosq` over guest frame `gfn` through the direct map. */
  clearPage(gfn: number): number {
    this.setAddress(RDI, DIRECT_MAP_BASE + gfn * PAGE_SIZE);
    return this.call("clearPage");
  }

  /** copy_page: `rep movsq` of guest frame `fromGfn` into `toGfn`. */
  copyPage(toGfn: number, fromGfn: number): number {
    this.setAddress(RDI, DIRECT_MAP_BASE + toGfn * PAGE_SIZE);
    this.setAddress(RSI, DIRECT_MAP_BASE + fromGfn * PAGE_SIZE);
    return this.call("copyPage");
  }

  /** memcpy of `count` qwords from guest-physical `fromGpa` to `toGpa` (`rep movsq`). */
  copyQwords(toGpa: number, fromGpa: number, count: number): number {
    this.setAddress(RDI, DIRECT_MAP_BASE + toGpa);
    this.setAddress(RSI, DIRECT_MAP_BASE + fromGpa);
    this.interpreter.setReg(RCX, count, 0);
    return this.call("copyQwords");
  }
}
