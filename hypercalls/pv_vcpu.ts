/**
 * What Xen keeps for the PV domain's one vCPU beyond its registers (struct pv_vcpu in
 * xen/include/asm-x86/domain.h): the virtual IDT (`trap_ctxt[256]`, from set_trap_table),
 * the kernel stack for entries from user mode (`kernel_ss`/`kernel_sp`, from
 * stack_switch), the callbacks (event, failsafe, syscall), the virtual I/O privilege
 * level, whether the vCPU is blocked; the vcpu_info it shares with the guest (event
 * upcall pending and mask, the pending selector, CR2); and, because the lab has one vCPU,
 * the domain's event channels too (struct domain's evtchn, 2-level ABI: ports, their
 * VIRQ / PIRQ bindings, and the pending and mask bitmaps in shared_info).
 *
 * ```
 * vcpu_info (64 bytes, x86-64; xen.h)          shared_info (the lab: the same page)
 *  0  u8  evtchn_upcall_pending                  2048  u64 evtchn_pending[64]
 *  1  u8  evtchn_upcall_mask                     2560  u64 evtchn_mask[64]
 *  8  u64 evtchn_pending_sel                     port p: byte p >> 3, bit p & 7
 * 16  u64 arch.cr2    24 pad   32..63 time
 * ```
 *
 * Deviation (as guest_os.ts documents it): a real PV guest maps Xen's shared_info frame
 * from start_info; here the page the guest registers with VCPUOP_register_vcpu_info also
 * serves as shared_info (vcpu_info at the offset it gave, the bitmaps at 2048 and 2560).
 * Before registration Xen's own shared_info is an internal page of this class, with
 * vcpu_info[0]'s upcall mask set as the domain builder leaves it (pv/dom0_build.c: "Mask
 * all upcalls").
 *
 * @module
 */

import { PAGE_SIZE } from "../lib/x86/address.ts";
import type { MachineMemory } from "../lib/memory/machine_memory.ts";
import { NR_VIRQS, XEN_ENOSPC } from "./abi.ts";

/** vcpu_info.evtchn_upcall_pending. */
export const VCPUINFO_UPCALL_PENDING = 0;
/** vcpu_info.evtchn_upcall_mask. */
export const VCPUINFO_UPCALL_MASK = 1;
/** vcpu_info.evtchn_pending_sel (a 64-bit word: bit i = word i of evtchn_pending). */
export const VCPUINFO_PENDING_SEL = 8;
/** vcpu_info.arch.cr2: the address of the last page fault Xen bounced. */
export const VCPUINFO_CR2 = 16;
/** sizeof(vcpu_info_t) on x86-64. */
export const VCPUINFO_SIZE = 64;
/** shared_info.evtchn_pending[] (the lab's page offset). */
export const SHINFO_EVTCHN_PENDING = 2048;
/** shared_info.evtchn_mask[]. */
export const SHINFO_EVTCHN_MASK = 2560;
/** Ports of the lab's domain: 0..1023 (xl's default max_event_channels is 1023). */
export const NR_EVTCHN_PORTS = 1024;
/** The domain's PIRQs: 24 GSIs of one IO-APIC + extra_domU_pirqs (32). */
export const NR_PIRQS = 56;

/** Port state ECS_FREE (xen/include/xen/sched.h). */
export const ECS_FREE = 0;
/** ECS_RESERVED: port 0, never bound (evtchn_init). */
export const ECS_RESERVED = 1;
/** ECS_PIRQ: bound to a physical IRQ. */
export const ECS_PIRQ = 4;
/** ECS_VIRQ: bound to a virtual IRQ. */
export const ECS_VIRQ = 5;

/**
 * The hypervisor's state of a PV vCPU and of its domain's event channels.
 *
 * @example An event on a masked vCPU stays pending; unmasking makes it deliverable
 * ```ts
 * import { MachineMemory } from "../lib/memory/machine_memory.ts";
 * import { PvVcpu } from "./pv_vcpu.ts";
 * import assert from "node:assert/strict";
 * const v = new PvVcpu(new MachineMemory({ frames: 4 }));
 * assert.equal(v.upcallMask, 1); // as the domain builder leaves it
 * assert.equal(v.allocatePort(), 1); // port 0 is reserved
 * assert.equal(v.setEventPending(1), true); // upcall now pending
 * assert.equal(v.eventsNeedDelivery(), false); // ... but masked
 * v.setUpcallMask(0);
 * assert.equal(v.eventsNeedDelivery(), true);
 * ```
 */
export class PvVcpu {
  /** trap_ctxt[v].address as a 48-bit linear value; 0: no handler. */
  readonly trapAddress: Float64Array = new Float64Array(256);
  /** trap_ctxt[v].flags: DPL in bits 1..0, bit 2 masks events on entry. */
  readonly trapFlags: Uint8Array = new Uint8Array(256);
  /** trap_ctxt[v].cs (kept; the lab's segments are flat). */
  readonly trapCs: Uint16Array = new Uint16Array(256);
  /** The guest address of the last trap table set (0: none, or cleared). */
  trapTableVa = 0;
  /** kernel_ss from stack_switch. */
  kernelSs = 0;
  /** kernel_sp from stack_switch: a 48-bit linear value, or -1 when not canonical. */
  kernelSp = 0;
  /** Callback addresses by CALLBACKTYPE (48-bit linear; 0: none). */
  readonly callbacks: Float64Array = new Float64Array(8);
  /** Callback flags by CALLBACKTYPE (CALLBACKF_mask_events). */
  readonly callbackFlags: Uint16Array = new Uint16Array(8);
  /** The virtual IOPL (0..3; PHYSDEVOP_set_iopl), checked by priv-op emulation. */
  iopl = 0;
  /** _VPF_blocked: SCHEDOP_block with nothing to deliver. */
  blocked = false;
  /** The machine frame of the registered vcpu_info (its writable reference), or -1. */
  vcpuInfoMfn: number = -1;
  /** Each port's state (ECS_*). */
  readonly portState: Uint8Array = new Uint8Array(NR_EVTCHN_PORTS);
  /** The VIRQ or PIRQ a port is bound to. */
  readonly portTarget: Int32Array = new Int32Array(NR_EVTCHN_PORTS);
  /** virq_to_evtchn[] of the vCPU (0: unbound). */
  readonly virqToPort: Int32Array = new Int32Array(NR_VIRQS);
  /** pirq_to_evtchn of the domain (0: unbound). */
  readonly pirqToPort: Int32Array = new Int32Array(NR_PIRQS);

  readonly #memory: MachineMemory;
  // Xen's own shared_info frame, used until the guest registers its vcpu_info.
  readonly #xenPage = new Uint8Array(PAGE_SIZE);
  // Machine address of the registered page, or -1 (then #xenPage is shared_info).
  #pageMa = -1;
  #vcpuInfoOffset = 0;

  /** A vCPU with no trap table or callbacks, events masked, reading `memory`. */
  constructor(memory: MachineMemory) {
    this.#memory = memory;
    this.#xenPage[VCPUINFO_UPCALL_MASK] = 1;
    this.portState[0] = ECS_RESERVED;
  }

  /** Byte `offset` of the shared_info page. */
  read8(offset: number): number {
    return this.#pageMa < 0 ? this.#xenPage[offset]! : this.#memory.read8(this.#pageMa + offset);
  }

  /** Stores byte `offset` of the shared_info page. */
  write8(offset: number, value: number): void {
    if (this.#pageMa < 0) this.#xenPage[offset] = value;
    else this.#memory.write8(this.#pageMa + offset, value);
  }

  /** vcpu_info.evtchn_upcall_mask (what the guest calls its interrupt flag, inverted). */
  get upcallMask(): number {
    return this.read8(this.#vcpuInfoOffset + VCPUINFO_UPCALL_MASK);
  }

  /** Sets vcpu_info.evtchn_upcall_mask. */
  setUpcallMask(value: number): void {
    this.write8(this.#vcpuInfoOffset + VCPUINFO_UPCALL_MASK, value);
  }

  /** vcpu_info.evtchn_upcall_pending. */
  get upcallPending(): number {
    return this.read8(this.#vcpuInfoOffset + VCPUINFO_UPCALL_PENDING);
  }

  /** The vcpu_info's offset in its page. */
  get vcpuInfoOffset(): number {
    return this.#vcpuInfoOffset;
  }

  /**
   * local_events_need_delivery(): an upcall is pending and not masked (what
   * test_guest_events in entry.S checks on every return to the guest).
   */
  eventsNeedDelivery(): boolean {
    return this.upcallPending !== 0 && this.upcallMask === 0;
  }

  /** arch_set_cr2: vcpu_info.arch.cr2 = `cr2` (a 48-bit linear value, stored canonical). */
  writeCr2(cr2: number): void {
    const base = this.#vcpuInfoOffset + VCPUINFO_CR2;
    const lo = cr2 >>> 0;
    const high = Math.floor(cr2 / 2 ** 32);
    const hi = (cr2 >= 2 ** 47 ? high | 0xffff0000 : high) >>> 0;
    for (let k = 0; k < 4; k++) this.write8(base + k, lo >>> (8 * k));
    for (let k = 0; k < 4; k++) this.write8(base + 4 + k, hi >>> (8 * k));
  }

  /** vcpu_info.arch.cr2, low 32 bits. */
  readCr2Low(): number {
    const base = this.#vcpuInfoOffset + VCPUINFO_CR2;
    let value = 0;
    for (let k = 0; k < 4; k++) value |= this.read8(base + k) << (8 * k);
    return value >>> 0;
  }

  /** Whether `port`'s bit is set in evtchn_pending[]. */
  isPortPending(port: number): boolean {
    return (this.read8(SHINFO_EVTCHN_PENDING + (port >> 3)) & (1 << (port & 7))) !== 0;
  }

  /** Whether `port`'s bit is set in evtchn_mask[]. */
  isPortMasked(port: number): boolean {
    return (this.read8(SHINFO_EVTCHN_MASK + (port >> 3)) & (1 << (port & 7))) !== 0;
  }

  /**
   * evtchn_2l_set_pending (common/event_2l.c) and vcpu_mark_events_pending: sets the
   * port's pending bit; if it was clear and the port is not masked, sets the selector bit
   * of its word; if that was clear, sets evtchn_upcall_pending. Returns whether
   * upcall_pending went from 0 to 1 (then Xen kicks the vCPU: unblocks it).
   */
  setEventPending(port: number): boolean {
    const byte = SHINFO_EVTCHN_PENDING + (port >> 3);
    const bit = 1 << (port & 7);
    const pending = this.read8(byte);
    if ((pending & bit) !== 0) return false;
    this.write8(byte, pending | bit);
    if (this.isPortMasked(port)) return false;
    const word = port >> 6; // BITS_PER_EVTCHN_WORD = 64 on x86-64
    const selByte = this.#vcpuInfoOffset + VCPUINFO_PENDING_SEL + (word >> 3);
    const sel = this.read8(selByte);
    const selBit = 1 << (word & 7);
    if ((sel & selBit) !== 0) return false;
    this.write8(selByte, sel | selBit);
    return this.#markEventsPending();
  }

  /** get_free_port: the lowest free port (port 0 is reserved), or -ENOSPC. */
  allocatePort(): number {
    for (let port = 1; port < NR_EVTCHN_PORTS; port++) {
      if (this.portState[port] === ECS_FREE) return port;
    }
    return -XEN_ENOSPC;
  }

  /**
   * map_vcpu_info's copy (common/domain.c): vcpu_info moves to `offset` of the page at
   * machine address `pageMa`, its bytes copied from the old place; the lab's shared_info
   * bitmaps move with it. Xen then sets every selector bit and marks an upcall pending
   * ("the domain will get a spurious event, but it can cope"); the lab leaves that
   * spurious event out, so that the guest kernel does the same work as natively (one
   * upcall fewer: DESIGN.md invariant 1 compares the guest's counters across platforms).
   */
  moveVcpuInfo(pageMa: number, offset: number, mfn: number): void {
    const info = new Uint8Array(VCPUINFO_SIZE);
    for (let k = 0; k < VCPUINFO_SIZE; k++) info[k] = this.read8(this.#vcpuInfoOffset + k);
    const bitmaps = new Uint8Array(1024);
    for (let k = 0; k < 1024; k++) bitmaps[k] = this.read8(SHINFO_EVTCHN_PENDING + k);
    this.#pageMa = pageMa;
    this.#vcpuInfoOffset = offset;
    this.vcpuInfoMfn = mfn;
    for (let k = 0; k < 1024; k++) this.write8(SHINFO_EVTCHN_PENDING + k, bitmaps[k]!);
    for (let k = 0; k < VCPUINFO_SIZE; k++) this.write8(offset + k, info[k]!);
  }

  // vcpu_mark_events_pending: true if upcall_pending went from 0 to 1.
  #markEventsPending(): boolean {
    const at = this.#vcpuInfoOffset + VCPUINFO_UPCALL_PENDING;
    if (this.read8(at) !== 0) return false;
    this.write8(at, 1);
    return true;
  }
}
