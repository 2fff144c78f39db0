/**
 * The guest kernel's system text: the code that runs when the processor enters the
 * kernel (exception and interrupt stubs, the common trap entry and exit, the idle loop)
 * and the small drivers the kernel's C code calls (keyboard, serial, interrupt
 * controller, interrupt flag save/restore, IDT load/store). Real x86-64 encodings, laid
 * into the kernel text page after the page-table routines of kernel_text.ts.
 *
 * Two flavours, as Linux has with its paravirt ops:
 * - `native` (native, hvm-shadow, hvm-hap, and classic trap-and-emulate): `iretq`,
 *   `cli`/`sti`/`pushf`/`popf`, `hlt`, `lidt`/`sidt`, `in`/`out`, an 8259A EOI.
 * - `pv` (a Xen PV guest): exceptions arrive through Xen's bounce frame (RCX and R11 on
 *   top, popped first as Linux's xen_xenpv_exc stubs do), the return is a jump to
 *   HYPERVISOR_iret with a flags word pushed (xen_iret), the interrupt flag is the event
 *   upcall mask in the vCPU's vcpu_info, idle is SCHEDOP_block, the trap table is
 *   loaded by set_trap_table, the kernel stack by stack_switch; port I/O stays (Xen
 *   emulates it for a domain with I/O port access). The page also holds the hypercall
 *   page as Xen writes it for a 64-bit PV kernel: 32 bytes per hypercall,
 *   `push rcx; push r11; mov eax, N; syscall; pop r11; pop rcx; ret`, and for iret
 *   `push rcx; push r11; push rax; mov eax, 23; syscall` (xen/arch/x86/pv/hypercall.c).
 *
 * The common entry pushes the 15 general registers below the vector and error code, so
 * a trap frame is, from its lowest address: r15, r14, ..., r8, rdi, rsi, rbp, rbx, rdx,
 * rcx, rax, vector, error code, RIP, CS, RFLAGS, RSP, SS. It then calls the kernel's
 * trap service (its C code, {@link SERVICE_TRAP}) with RDI = the frame.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";

/** Which kernel text: bare-metal instructions or Xen PV's paravirtualized ones. */
export type TextFlavour = "native" | "pv";

/** Offset of the system text in the kernel text page (after the page-table routines). */
export const SYSTEM_TEXT_OFFSET = 0x200;
/** Offset of the service gate range: the kernel's C code, 16 bytes per service. */
export const SERVICE_OFFSET = 0x700;
/** Service numbers the gate hands to the host. */
export const SERVICE_TRAP = 0;
/** Number of services in the gate range. */
export const SERVICE_COUNT = 16;
/** Offset of the PV hypercall page (32 bytes per hypercall, numbers 0..63). */
export const HYPERCALL_PAGE_OFFSET = 0x800;

/** Error code slot value pushed by stubs of vectors without one. */
const NO_ERROR_CODE = 0;
/** Vectors whose exceptions push an error code (SDM Vol. 3A Table 6-1). */
const HAS_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17, 21]);

/** The trap-frame slot of each saved register, in qwords from the frame's start. */
export const FRAME_SLOT = {
  r15: 0,
  r14: 1,
  r13: 2,
  r12: 3,
  r11: 4,
  r10: 5,
  r9: 6,
  r8: 7,
  rdi: 8,
  rsi: 9,
  rbp: 10,
  rbx: 11,
  rdx: 12,
  rcx: 13,
  rax: 14,
  vector: 15,
  errorCode: 16,
  rip: 17,
  cs: 18,
  rflags: 19,
  rsp: 20,
  ss: 21,
} as const;
/** Qwords in a trap frame. */
export const FRAME_QWORDS = 22;
/** Pseudo-vector the PV event callback pushes: an event-channel upcall. */
export const VECTOR_UPCALL = 0x100;

/** Xen hypercall numbers the PV text calls (xen/include/public/xen.h). */
export const HYPERCALL_SET_TRAP_TABLE = 0;
/** __HYPERVISOR_stack_switch. */
export const HYPERCALL_STACK_SWITCH = 3;
/** __HYPERVISOR_xen_version (Linux's xen_force_evtchn_callback). */
export const HYPERCALL_XEN_VERSION = 17;
/** __HYPERVISOR_iret. */
export const HYPERCALL_IRET = 23;
/** __HYPERVISOR_sched_op. */
export const HYPERCALL_SCHED_OP = 29;
/** SCHEDOP_block: block until an event is pending, enabling event delivery. */
export const SCHEDOP_BLOCK = 1;

/** Names of the system text's entry points and routines. */
export type SystemLabel =
  | "common"
  | "commonTail"
  | "idle"
  | "keyboardRead"
  | "serialPut"
  | "picEoi"
  | "loadIdt"
  | "storeIdt"
  | "irqSave"
  | "irqRestore"
  | "setKernelStack"
  | "eventCallback";

// A tiny assembler: bytes, labels and rel32 fixups.
class Assembler {
  readonly bytes: Uint8Array;
  offset: number;
  readonly labels = new Map<string, number>();
  readonly #fixups: { at: number; label: string }[] = [];

  constructor(bytes: Uint8Array, offset: number) {
    this.bytes = bytes;
    this.offset = offset;
  }

  emit(...values: number[]): void {
    for (const value of values) this.bytes[this.offset++] = value & 0xff;
  }

  label(name: string): void {
    this.labels.set(name, this.offset);
  }

  align(n: number): void {
    this.offset = Math.ceil(this.offset / n) * n;
  }

  // opcode + rel32 to `label` (resolved by link()).
  rel32(opcode: number, label: string): void {
    this.emit(opcode);
    this.#fixups.push({ at: this.offset, label });
    this.emit(0, 0, 0, 0);
  }

  // rel32 to a fixed page offset.
  rel32To(opcode: number, target: number): void {
    this.emit(opcode);
    const rel = target - (this.offset + 4);
    this.emit(rel, rel >> 8, rel >> 16, rel >> 24);
  }

  link(): void {
    for (const { at, label } of this.#fixups) {
      const target = this.labels.get(label);
      if (target === undefined) throw new Error(`entry text: no label ${label}`);
      const rel = target - (at + 4);
      this.bytes[at] = rel & 0xff;
      this.bytes[at + 1] = (rel >> 8) & 0xff;
      this.bytes[at + 2] = (rel >> 16) & 0xff;
      this.bytes[at + 3] = (rel >> 24) & 0xff;
    }
  }
}

// push reg / pop reg for registers 0..15 (REX.B for 8..15).
function pushReg(a: Assembler, r: number): void {
  if (r >= 8) a.emit(0x41);
  a.emit(0x50 + (r & 7));
}
function popReg(a: Assembler, r: number): void {
  if (r >= 8) a.emit(0x41);
  a.emit(0x58 + (r & 7));
}

/** Registers in push order (rax first, so r15 ends at the frame's lowest address). */
const SAVED = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/** The vectors the kernel installs stubs for: #DE, #BP, #UD, #GP, #PF, IRQ 0, IRQ 1, 0x80. */
export const STUB_VECTORS: readonly number[] = [0, 3, 6, 13, 14, 0x20, 0x21, 0x80];

/**
 * Lays the system text of `flavour` into `page` (the kernel text page's 4096 bytes) and
 * returns where each label and vector stub landed (page offsets).
 */
export function layoutSystemText(
  page: Uint8Array,
  flavour: TextFlavour,
): { labels: Map<string, number>; stubs: Map<number, number> } {
  if (page.length !== PAGE_SIZE) throw new RangeError("entry text: the page must be 4096 bytes");
  page.fill(0xcc, SYSTEM_TEXT_OFFSET);
  const a = new Assembler(page, SYSTEM_TEXT_OFFSET);
  const pv = flavour === "pv";
  const stubs = new Map<number, number>();
  const hypercall = (n: number) => HYPERCALL_PAGE_OFFSET + 32 * n;

  // Vector stubs: [pop rcx; pop r11 (PV)] [push 0] push vector; jmp common.
  for (const vector of STUB_VECTORS) {
    a.align(16);
    stubs.set(vector, a.offset);
    if (pv) {
      a.emit(0x59); // pop rcx
      a.emit(0x41, 0x5b); // pop r11
    }
    if (!HAS_ERROR_CODE.has(vector)) a.emit(0x6a, NO_ERROR_CODE); // push 0
    if (vector < 0x80) a.emit(0x6a, vector); // push imm8
    else a.emit(0x68, vector, vector >> 8, 0, 0); // push imm32
    a.rel32(0xe9, "common");
  }
  if (pv) {
    // The event callback (CALLBACKTYPE_event): an upcall, no error code.
    a.align(16);
    a.label("eventCallback");
    a.emit(0x59, 0x41, 0x5b); // pop rcx; pop r11
    a.emit(0x6a, 0); // push 0
    a.emit(0x68, VECTOR_UPCALL & 0xff, VECTOR_UPCALL >> 8, 0, 0); // push 0x100
    a.rel32(0xe9, "common");
  }

  // Common entry: save the registers, call the trap service with RDI = frame.
  a.align(16);
  a.label("common");
  for (const r of SAVED) pushReg(a, r);
  a.emit(0x48, 0x89, 0xe7); // mov rdi, rsp
  a.rel32To(0xe8, SERVICE_OFFSET + 16 * SERVICE_TRAP); // call trap service
  a.label("commonTail");
  for (let i = SAVED.length - 1; i >= 0; i--) popReg(a, SAVED[i]!);
  a.emit(0x48, 0x83, 0xc4, 0x10); // add rsp, 16 (vector, error code)
  if (pv) {
    a.emit(0x6a, 0); // push 0: iret flags (not VGCF_in_syscall)
    a.rel32To(0xe9, hypercall(HYPERCALL_IRET)); // jmp hypercall_iret
  } else {
    a.emit(0x48, 0xcf); // iretq
  }

  // Idle: wait for an interrupt with interrupts enabled, forever.
  a.align(16);
  a.label("idle");
  if (pv) {
    a.emit(0xbf, SCHEDOP_BLOCK, 0, 0, 0); // mov edi, SCHEDOP_block
    a.emit(0x31, 0xf6); // xor esi, esi
    a.rel32To(0xe8, hypercall(HYPERCALL_SCHED_OP)); // call sched_op
    a.rel32(0xe9, "idle");
  } else {
    a.emit(0xfb, 0xf4); // sti; hlt
    a.rel32(0xe9, "idle");
  }

  // Drivers (called from the kernel's C code; each ends in RET).
  a.align(16);
  a.label("keyboardRead"); // in al, 0x60; movzx eax, al; ret
  a.emit(0xe4, 0x60, 0x0f, 0xb6, 0xc0, 0xc3);
  a.align(16);
  a.label("serialPut"); // mov eax, edi; mov edx, 0x3f8; out dx, al; ret
  a.emit(0x89, 0xf8, 0xba, 0xf8, 0x03, 0x00, 0x00, 0xee, 0xc3);
  a.align(16);
  a.label("picEoi"); // mov eax, 0x20; out 0x20, al; ret
  a.emit(0xb8, 0x20, 0, 0, 0, 0xe6, 0x20, 0xc3);
  a.align(16);
  a.label("loadIdt");
  if (pv) a.rel32To(0xe9, hypercall(HYPERCALL_SET_TRAP_TABLE)); // tail call: RDI = trap_info[]
  else a.emit(0x0f, 0x01, 0x1f, 0xc3); // lidt [rdi]; ret
  a.align(16);
  a.label("storeIdt");
  if (pv) a.emit(0xc3); // xen_store_idt: the kernel keeps its own copy
  else a.emit(0x0f, 0x01, 0x0f, 0xc3); // sidt [rdi]; ret
  a.align(16);
  a.label("irqSave");
  if (pv) {
    // RDI = vcpu_info: eax <- upcall mask; mask <- 1 (xen_irq_disable after save_fl).
    a.emit(0x0f, 0xb6, 0x47, 0x01, 0xc6, 0x47, 0x01, 0x01, 0xc3);
  } else {
    a.emit(0x9c, 0x58, 0xfa, 0xc3); // pushfq; pop rax; cli; ret
  }
  a.align(16);
  a.label("irqRestore");
  if (pv) {
    // mask <- al; if unmasked and an upcall is pending: xen_force_evtchn_callback.
    a.emit(0x88, 0x47, 0x01); // mov [rdi+1], al
    a.emit(0x84, 0xc0); // test al, al
    a.emit(0x75, 0x0a); // jnz done (+10)
    a.emit(0x80, 0x3f, 0x00); // cmp byte [rdi], 0
    a.emit(0x74, 0x05); // jz done (+5)
    a.rel32To(0xe8, hypercall(HYPERCALL_XEN_VERSION)); // call xen_version
    a.emit(0xc3); // done: ret
  } else {
    a.emit(0x50, 0x9d, 0xc3); // push rax; popfq; ret
  }
  a.align(16);
  a.label("setKernelStack");
  if (pv) a.rel32To(0xe9, hypercall(HYPERCALL_STACK_SWITCH)); // RDI = ss, RSI = sp
  else a.emit(0xc3); // the TSS store is done by the kernel's C code
  if (a.offset > SERVICE_OFFSET) throw new Error("entry text: overflows into the service range");
  a.link();

  if (pv) writeHypercallPage(page);
  return { labels: a.labels, stubs };
}

// The hypercall page of a 64-bit PV kernel, as Xen writes it.
function writeHypercallPage(page: Uint8Array): void {
  for (let n = 0; n < (PAGE_SIZE - HYPERCALL_PAGE_OFFSET) / 32; n++) {
    const p = HYPERCALL_PAGE_OFFSET + 32 * n;
    const code = n === HYPERCALL_IRET
      ? [0x51, 0x41, 0x53, 0x50, 0xb8, n, 0, 0, 0, 0x0f, 0x05]
      : [0x51, 0x41, 0x53, 0xb8, n, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3];
    page.set(code, p);
  }
}
