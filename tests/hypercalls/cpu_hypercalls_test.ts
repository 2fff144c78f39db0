/**
 * The CPU-side hypercalls of a 64-bit PV guest, each called as the guest kernel calls it
 * (registers RAX, RDI, RSI, RDX; arguments built in a kernel page through the vCPU):
 * set_trap_table, stack_switch, xen_version, vcpu_op, sched_op, callback_op,
 * event_channel_op, physdev_op and iret, with their success and errno cases as Xen's
 * sources give them. A rejected call changes nothing it should not, and nothing throws.
 */

import assert from "node:assert/strict";
import { linearHigh32 } from "../../lib/x86/address.ts";
import { KERNEL_CS, USER_CS, USER_SS } from "../../lib/x86/interpreter.ts";
import { DIRECT_MAP_BASE, STACK_TOP } from "../../lib/guest/layout.ts";
import * as abi from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { relinquishDomain } from "../../hypercalls/relinquish.ts";
import { doSchedOp } from "../../hypercalls/sched_op.ts";
import { VCPUINFO_UPCALL_MASK } from "../../hypercalls/pv_vcpu.ts";
import { bootPvGuest, type PvGuest } from "./_pv_fixture.ts";

const {
  HYPERVISOR_CALLBACK_OP,
  HYPERVISOR_EVENT_CHANNEL_OP,
  HYPERVISOR_IRET,
  HYPERVISOR_PHYSDEV_OP,
  HYPERVISOR_SCHED_OP,
  HYPERVISOR_SET_TRAP_TABLE,
  HYPERVISOR_STACK_SWITCH,
  HYPERVISOR_VCPU_OP,
  HYPERVISOR_XEN_VERSION,
  XEN_EEXIST,
  XEN_EFAULT,
  XEN_EINVAL,
  XEN_ENOENT,
  XEN_ENOSYS,
  XEN_EPERM,
} = abi;

/** A user address nothing maps (the fixture's process maps 0x600000..; not 0x1000). */
const UNMAPPED = 0x1000;
/** Above 2^48: the high half is not a sign extension (a non-canonical pointer). */
const NON_CANONICAL = 2 ** 48 + 0x1000;

function count(g: PvGuest, name: string): number {
  return g.platform.stats.get(name);
}

/** Writes a trap_info {vector, flags, cs, address} at `offset` of the scratch page. */
function trapInfo(g: PvGuest, offset: number, vector: number, flags: number, address: number) {
  g.hostile.write64(offset, vector | (flags << 8) | (KERNEL_CS << 16), 0);
  g.hostile.write64(offset + 8, address >>> 0, linearHigh32(address));
}

Deno.test("CPU hypercall numbers and commands are Xen's", () => {
  assert.deepEqual(
    [
      abi.HYPERVISOR_STACK_SWITCH,
      abi.HYPERVISOR_XEN_VERSION,
      abi.HYPERVISOR_IRET,
      abi.HYPERVISOR_VCPU_OP,
      abi.HYPERVISOR_SCHED_OP,
      abi.HYPERVISOR_CALLBACK_OP,
      abi.HYPERVISOR_EVENT_CHANNEL_OP,
      abi.HYPERVISOR_PHYSDEV_OP,
    ],
    [3, 17, 23, 24, 29, 30, 32, 33],
  );
  assert.deepEqual(
    [
      abi.VCPUOP_REGISTER_VCPU_INFO,
      abi.XEN_SCHEDOP_YIELD,
      abi.XEN_SCHEDOP_BLOCK,
      abi.CALLBACKTYPE_EVENT,
      abi.CALLBACKTYPE_FAILSAFE,
      abi.CALLBACKTYPE_SYSCALL,
      abi.EVTCHNOP_BIND_VIRQ,
      abi.EVTCHNOP_BIND_PIRQ,
      abi.VIRQ_TIMER,
      abi.PHYSDEVOP_SET_IOPL,
      abi.PHYSDEVOP_EOI,
      abi.VGCF_IN_SYSCALL,
    ],
    [10, 0, 1, 0, 1, 2, 1, 2, 0, 6, 12, 0x100],
  );
  assert.deepEqual([abi.XEN_EEXIST, abi.XEN_ENOSPC], [17, 28]);
});

Deno.test("set_trap_table copies entries up to the terminator; NULL clears the table", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  trapInfo(g, 0x100, 14, 4, 0xffff_8100_0240);
  trapInfo(g, 0x110, 0x80, 3 | 4, 0xffff_8100_0270);
  trapInfo(g, 0x120, 3, 3, 0xffff_8100_0210);
  trapInfo(g, 0x130, 0, 0, 0); // address 0: the end
  trapInfo(g, 0x140, 6, 0, 0xffff_8100_0220); // past the end: not read
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, g.hostile.va + 0x100), 0);
  assert.deepEqual(
    [v.trapAddress[14], v.trapFlags[14], v.trapCs[14]],
    [0xffff_8100_0240, 4, KERNEL_CS],
  );
  assert.deepEqual([v.trapAddress[0x80], v.trapFlags[0x80]], [0xffff_8100_0270, 7]);
  assert.deepEqual([v.trapAddress[3], v.trapFlags[3]], [0xffff_8100_0210, 3]);
  assert.equal(v.trapAddress[6], 0);
  assert.equal(v.trapTableVa, g.hostile.va + 0x100);
  assert.equal(count(g, "hypercall.set_trap_table"), 1);
  // A second table adds to the first; NULL clears everything.
  trapInfo(g, 0x200, 6, 0, 0xffff_8100_0220);
  trapInfo(g, 0x210, 0, 0, 0);
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, g.hostile.va + 0x200), 0);
  assert.deepEqual([v.trapAddress[6], v.trapAddress[14]], [0xffff_8100_0220, 0xffff_8100_0240]);
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, 0), 0);
  assert.equal(v.trapAddress.some((a) => a !== 0), false);
  assert.equal(v.trapTableVa, 0);
});

Deno.test("set_trap_table with a bad pointer is -EFAULT; a non-canonical handler -EINVAL", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, UNMAPPED), -XEN_EFAULT);
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, NON_CANONICAL), -XEN_EFAULT);
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, 0xffff_8000_0000_1000), -XEN_EFAULT);
  // The entry before a bad handler address stays installed, as in Xen.
  trapInfo(g, 0x100, 13, 0, 0xffff_8100_0230);
  g.hostile.write64(0x110, 14, 0);
  g.hostile.write64(0x118, 0, 0x0001_0000); // address bits 48..63 not a sign extension
  assert.equal(g.hostile.call(HYPERVISOR_SET_TRAP_TABLE, g.hostile.va + 0x100), -XEN_EINVAL);
  assert.deepEqual([v.trapAddress[13], v.trapAddress[14]], [0xffff_8100_0230, 0]);
  assert.equal(count(g, "hypercall.set_trap_table"), 4);
  assert.equal(count(g, "hypercall.rejected"), 4);
  assert.equal(g.platform.crashReason, "");
});

Deno.test("stack_switch records kernel_ss and kernel_sp, unchecked", () => {
  const g = bootPvGuest();
  assert.equal(g.hostile.call(HYPERVISOR_STACK_SWITCH, 0x10, DIRECT_MAP_BASE + 0x5000), 0);
  assert.deepEqual([g.d.vcpu.kernelSs, g.d.vcpu.kernelSp], [0x10, DIRECT_MAP_BASE + 0x5000]);
  assert.equal(g.hostile.call(HYPERVISOR_STACK_SWITCH, 0x10, NON_CANONICAL), 0);
  assert.equal(g.d.vcpu.kernelSp, -1);
  assert.equal(count(g, "hypercall.stack_switch"), 2);
});

Deno.test("xen_version(XENVER_version) is 4.19 as major << 16 | minor; other commands -ENOSYS", () => {
  const g = bootPvGuest();
  assert.equal(g.hostile.call(HYPERVISOR_XEN_VERSION, 0, 0), 0x0004_0013);
  assert.equal(g.platform.interpreter.regLo(0), 0x0004_0013);
  assert.equal(g.hostile.call(HYPERVISOR_XEN_VERSION, 1, g.hostile.va), -XEN_ENOSYS);
  assert.equal(count(g, "hypercall.xen_version"), 2);
});

Deno.test("hypercall numbers of 64 or more, or with RAX's high half set, are -ENOSYS", () => {
  const g = bootPvGuest();
  assert.equal(g.hostile.call(64), -XEN_ENOSYS);
  g.platform.interpreter.setReg(0, HYPERVISOR_XEN_VERSION, 1);
  assert.equal(g.platform.hypercall(), -XEN_ENOSYS);
  assert.equal(count(g, "hypercall.xen_version"), 0);
});

Deno.test("VCPUOP_register_vcpu_info moves vcpu_info into a frame of the domain, once", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  const gfn = 901;
  const mfn = g.platform.p2mList[gfn]!;
  g.hostile.write64(0x100, mfn, 0);
  g.hostile.write64(0x108, 0x40, 0); // offset 64, rsvd 0
  const typeCount = g.d.types.typeCount[mfn]!;
  assert.equal(g.hostile.call(HYPERVISOR_VCPU_OP, 10, 0, g.hostile.va + 0x100), 0);
  assert.equal(v.vcpuInfoMfn, mfn);
  assert.equal(v.vcpuInfoOffset, 0x40);
  // The domain builder's mask came along: events are masked until the guest enables them.
  assert.equal(g.platform.peekGuestPhysical32(gfn * 4096 + 0x40) >>> 8 & 0xff, 1);
  assert.equal(g.d.memory.read8(mfn * 4096 + 0x40 + VCPUINFO_UPCALL_MASK), 1);
  assert.equal(g.d.types.typeCount[mfn], typeCount + 1); // Xen's writable reference
  assert.deepEqual(checkPvSafety(g.d), []);
  // Twice: -EINVAL (Xen 4.18 and later say -EBUSY).
  assert.equal(g.hostile.call(HYPERVISOR_VCPU_OP, 10, 0, g.hostile.va + 0x100), -XEN_EINVAL);
  assert.equal(count(g, "hypercall.vcpu_op"), 2);
  // Domain death drops the reference: nothing leaks.
  assert.deepEqual(relinquishDomain(g.d), { freed: 1024, leaked: 0 });
});

Deno.test("VCPUOP_register_vcpu_info refuses what Xen refuses", () => {
  const cases: [string, (g: PvGuest) => number, number][] = [
    ["vCPU 1", (g) => g.hostile.call(HYPERVISOR_VCPU_OP, 10, 1, g.hostile.va), -XEN_ENOENT],
    [
      "another command",
      (g) => g.hostile.call(HYPERVISOR_VCPU_OP, 11, 0, g.hostile.va),
      -XEN_ENOSYS,
    ],
    [
      "an unmapped argument",
      (g) => g.hostile.call(HYPERVISOR_VCPU_OP, 10, 0, UNMAPPED),
      -XEN_EFAULT,
    ],
  ];
  const arg = (mfn: number, offset: number) => (g: PvGuest) => {
    g.hostile.write64(0x100, mfn % 2 ** 32, Math.floor(mfn / 2 ** 32));
    g.hostile.write64(0x108, offset, 0);
    return g.hostile.call(HYPERVISOR_VCPU_OP, 10, 0, g.hostile.va + 0x100);
  };
  cases.push(["offset 4033", (g) => arg(g.platform.p2mList[901]!, 4033)(g), -XEN_EINVAL]);
  cases.push([
    "a neighbour's frame",
    (g) => arg(g.platform.neighbourFrames[0]!, 0)(g),
    -XEN_EINVAL,
  ]);
  cases.push(["Xen's frame 0", (g) => arg(0, 0)(g), -XEN_EINVAL]);
  cases.push(["the pinned L4 (a page table)", (g) => arg(g.d.guestTable, 0)(g), -XEN_EINVAL]);
  cases.push(["a frame past memory", (g) => arg(2 ** 40, 0)(g), -XEN_EINVAL]);
  for (const [what, call, rc] of cases) {
    const g = bootPvGuest();
    assert.equal(call(g), rc, what);
    assert.equal(g.d.vcpu.vcpuInfoMfn, -1, what);
    assert.deepEqual(checkPvSafety(g.d), [], what);
  }
  // Offset 4032 is the last that fits a 64-byte vcpu_info.
  const g = bootPvGuest();
  assert.equal(arg(g.platform.p2mList[901]!, 4032)(g), 0);
});

Deno.test("sched_op: yield is 0; block enables events and blocks unless an upcall waits", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  assert.equal(v.upcallMask, 1);
  assert.equal(g.hostile.call(HYPERVISOR_SCHED_OP, 0, 0), 0);
  assert.equal(doSchedOp(g.d, 1), 0);
  assert.deepEqual([v.upcallMask, v.blocked], [0, true]);
  // An event waiting: no block.
  v.blocked = false;
  v.setUpcallMask(1);
  v.setEventPending(v.allocatePort());
  assert.equal(doSchedOp(g.d, 1), 0);
  assert.deepEqual([v.upcallMask, v.blocked], [0, false]);
  // From TypeScript (not the guest's instructions) the call cannot sleep.
  assert.equal(g.hostile.call(HYPERVISOR_SCHED_OP, 1, 0), 0);
  assert.equal(v.blocked, false);
  assert.equal(g.hostile.call(HYPERVISOR_SCHED_OP, 2, 0), -XEN_ENOSYS); // shutdown: not modelled
  assert.equal(count(g, "hypercall.sched_op"), 5);
});

Deno.test("callback_op registers the event, failsafe and syscall callbacks", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  const register = (type: number, flags: number, lo: number, hi: number) => {
    g.hostile.write64(0x100, type | (flags << 16), 0);
    g.hostile.write64(0x108, lo, hi);
    return g.hostile.call(HYPERVISOR_CALLBACK_OP, 0, g.hostile.va + 0x100);
  };
  assert.equal(register(0, 0, 0x8100_0280, 0xffff_ffff), 0);
  assert.equal(register(1, 1, 0x8100_0400, 0xffff_ffff), 0);
  assert.equal(register(2, 0, 0x8100_0500, 0xffff_ffff), 0);
  assert.deepEqual(
    [v.callbacks[0], v.callbacks[1], v.callbacks[2]],
    [0xffff_8100_0280, 0xffff_8100_0400, 0xffff_8100_0500],
  );
  assert.equal(v.callbackFlags[1], 1); // CALLBACKF_mask_events
  // A non-canonical event callback: -EINVAL, the old one stays.
  assert.equal(register(0, 0, 0x8100_0280, 0x0000_8000), -XEN_EINVAL);
  assert.equal(v.callbacks[0], 0xffff_8100_0280);
  assert.equal(register(3, 0, 0x1000, 0), -XEN_ENOSYS); // an unknown type (register_guest_callback)
  assert.equal(g.hostile.call(HYPERVISOR_CALLBACK_OP, 0, UNMAPPED), -XEN_EFAULT);
  // Unregister: the event callback cannot be unregistered; another command is -ENOSYS.
  g.hostile.write64(0x100, 0, 0);
  assert.equal(g.hostile.call(HYPERVISOR_CALLBACK_OP, 1, g.hostile.va + 0x100), -XEN_EINVAL);
  assert.equal(g.hostile.call(HYPERVISOR_CALLBACK_OP, 2, g.hostile.va + 0x100), -XEN_ENOSYS);
  assert.equal(count(g, "hypercall.callback_op"), 8);
});

Deno.test("event_channel_op binds VIRQ_TIMER and the keyboard's PIRQ to ports 1 and 2", () => {
  const g = bootPvGuest();
  const v = g.d.vcpu;
  const bind = (cmd: number, source: number, second: number, at = 0x100) => {
    g.hostile.write64(at, source, second);
    g.hostile.write64(at + 8, 0xdead, 0);
    return g.hostile.call(HYPERVISOR_EVENT_CHANNEL_OP, cmd, g.hostile.va + at);
  };
  assert.equal(bind(1, 0, 0), 0);
  assert.equal(g.hostile.read32(0x108), 1);
  assert.equal(bind(2, 1, 0), 0);
  assert.equal(g.hostile.read32(0x108), 2);
  assert.deepEqual([v.virqToPort[0], v.pirqToPort[1]], [1, 2]);
  // Twice: -EEXIST, and the port written back is not touched.
  assert.equal(bind(1, 0, 0), -XEN_EEXIST);
  assert.equal(g.hostile.read32(0x108), 0xdead);
  assert.equal(bind(2, 1, 0), -XEN_EEXIST);
  assert.equal(bind(1, 24, 0), -XEN_EINVAL); // virq >= NR_VIRQS
  assert.equal(bind(1, 0, 1), -XEN_ENOENT); // no vCPU 1
  assert.equal(bind(1, 2, 1), -XEN_EINVAL); // a global VIRQ on vCPU 1
  assert.equal(bind(2, 4, 0), -XEN_EPERM); // COM1's IRQ 4 was not given to the domain
  assert.equal(bind(2, 56, 0), -XEN_EINVAL); // pirq >= nr_pirqs
  assert.equal(bind(3, 0, 0), -XEN_ENOSYS); // close: not modelled
  assert.equal(g.hostile.call(HYPERVISOR_EVENT_CHANNEL_OP, 1, UNMAPPED), -XEN_EFAULT);
  assert.equal(count(g, "hypercall.event_channel_op"), 11);
});

Deno.test("event_channel_op: a port that cannot be written back is -EFAULT, the binding stays", () => {
  const g = bootPvGuest();
  // The top-level table, read-only in the direct map: slot 32 is empty (virq 0, vcpu 0).
  const l4Gfn = g.d.m2p[g.d.guestTable]!;
  const arg = DIRECT_MAP_BASE + l4Gfn * 4096 + 32 * 8;
  assert.equal(g.hostile.call(HYPERVISOR_EVENT_CHANNEL_OP, 1, arg), -XEN_EFAULT);
  assert.equal(g.d.vcpu.virqToPort[0], 1);
  assert.equal(g.hostile.call(HYPERVISOR_EVENT_CHANNEL_OP, 1, arg), -XEN_EEXIST);
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("physdev_op: set_iopl up to 3; eoi of a bound PIRQ only", () => {
  const g = bootPvGuest();
  const arg = (value: number) => {
    g.hostile.write64(0x100, value, 0);
    return g.hostile.va + 0x100;
  };
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 6, arg(1)), 0);
  assert.equal(g.d.vcpu.iopl, 1);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 6, arg(4)), -XEN_EINVAL);
  assert.equal(g.d.vcpu.iopl, 1);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 12, arg(1)), -XEN_EINVAL); // not bound yet
  g.hostile.write64(0x200, 1, 0);
  assert.equal(g.hostile.call(HYPERVISOR_EVENT_CHANNEL_OP, 2, g.hostile.va + 0x200), 0);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 12, arg(1)), 0);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 12, arg(56)), -XEN_EINVAL);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 12, UNMAPPED), -XEN_EFAULT);
  assert.equal(g.hostile.call(HYPERVISOR_PHYSDEV_OP, 5, arg(1)), -XEN_ENOSYS);
  assert.equal(count(g, "hypercall.physdev_op"), 7);
});

/** Writes struct iret_context at `offset` of the scratch page; returns its address. */
function iretFrame(
  g: PvGuest,
  offset: number,
  frame: { rip: [number, number]; cs: number; rflags: number; rsp: number; flags?: number },
): number {
  const q = (k: number, lo: number, hi = 0) => g.hostile.write64(offset + 8 * k, lo, hi);
  q(0, 0x9abc_def0, 0x1234_5678); // rax
  q(1, 0x1111, 0); // r11
  q(2, 0x2222, 0); // rcx
  q(3, frame.flags ?? 0);
  q(4, frame.rip[0], frame.rip[1]);
  q(5, frame.cs);
  q(6, frame.rflags);
  q(7, frame.rsp >>> 0, linearHigh32(frame.rsp));
  q(8, frame.cs === USER_CS ? USER_SS : 0x10);
  return g.hostile.va + offset;
}

function iretFrom(g: PvGuest, rsp: number): number {
  const it = g.platform.interpreter;
  it.setReg(4, rsp >>> 0, linearHigh32(rsp));
  it.setReg(0, HYPERVISOR_IRET, 0);
  return g.platform.hypercall();
}

Deno.test("iret to user mode: RIP, RSP, RAX, RCX, R11 restored, IOPL dropped, events unmasked", () => {
  const g = bootPvGuest();
  const it = g.platform.interpreter;
  const v = g.d.vcpu;
  assert.equal(v.upcallMask, 1);
  const at = iretFrame(g, 0x300, {
    rip: [0x0040_0010, 0],
    cs: USER_CS,
    rflags: 0x3a03, // IOPL 3, IF, OF, CF
    rsp: STACK_TOP - 0x40,
  });
  assert.equal(iretFrom(g, at), 0);
  assert.deepEqual(
    [it.rip, it.regLo(4), it.regHi(4), it.rflags, g.platform.cpu.ctl.cpl],
    [0x40_0010, (STACK_TOP - 0x40) >>> 0, linearHigh32(STACK_TOP - 0x40), 0xa03, 3],
  );
  assert.deepEqual([it.regLo(0), it.regHi(0), it.regLo(1), it.regLo(11)], [
    0x9abc_def0,
    0x1234_5678,
    0x2222,
    0x1111,
  ]);
  assert.equal(v.upcallMask, 0);
  assert.equal(count(g, "hypercall.iret"), 1);
  assert.equal(g.platform.guestCpuState().kernelMode, false);
});

Deno.test("iret to kernel mode with IF clear masks events; VGCF_in_syscall keeps SYSRET's RCX/R11", () => {
  const g = bootPvGuest();
  const it = g.platform.interpreter;
  const v = g.d.vcpu;
  v.setUpcallMask(0);
  const at = iretFrame(g, 0x300, {
    rip: [0x8100_0300, 0xffff_ffff],
    cs: KERNEL_CS,
    rflags: 0x2,
    rsp: g.hostile.va + 0x800,
    flags: abi.VGCF_IN_SYSCALL,
  });
  assert.equal(iretFrom(g, at), 0);
  assert.deepEqual([it.rip, g.platform.cpu.ctl.cpl, v.upcallMask], [0xffff_8100_0300, 0, 1]);
  // The real IF of a PV guest is always on; RCX = RIP and R11 = RFLAGS, as after SYSRET.
  assert.equal(it.rflags, 0x202);
  assert.deepEqual([it.regLo(1), it.regHi(1), it.regLo(11)], [0x8100_0300, 0xffff_ffff, 0x202]);
  assert.deepEqual(g.platform.guestCpuState().interruptsEnabled, false);
});

Deno.test("iret with its frame on an unmapped page crashes the domain, with the reason", () => {
  const g = bootPvGuest();
  assert.equal(iretFrom(g, UNMAPPED + 0x800), -XEN_EINVAL);
  assert.equal(
    g.platform.crashReason,
    "iret: cannot read the frame at 0x0000000000001800: a fault reading the guest stack " +
      "(do_iret: domain_crash)",
  );
  assert.equal(g.platform.stats.get("domain.crash"), 1);
  // Nothing runs after a crash.
  assert.equal(g.hostile.call(HYPERVISOR_XEN_VERSION, 0), -XEN_EINVAL);
});

Deno.test("iret to a non-canonical RIP: the failsafe callback, or a crash without one", () => {
  const frame = (g: PvGuest) =>
    iretFrame(g, 0x300, {
      rip: [0x1234, 0x0000_8000], // bits 63..47 differ
      cs: KERNEL_CS,
      rflags: 0x202,
      rsp: g.hostile.va + 0x808, // aligned down to +0x800 by the bounce
    });
  const bare = bootPvGuest();
  assert.equal(iretFrom(bare, frame(bare)), -XEN_EINVAL);
  assert.equal(
    bare.platform.crashReason,
    "iret: return to the non-canonical RIP 0x0000800000001234 faults and no failsafe " +
      "callback is registered",
  );
  const g = bootPvGuest();
  const v = g.d.vcpu;
  v.callbacks[abi.CALLBACKTYPE_FAILSAFE] = 0xffff_8100_0400;
  assert.equal(iretFrom(g, frame(g)), 0);
  assert.equal(g.platform.crashReason, "");
  const it = g.platform.interpreter;
  assert.equal(it.rip, 0xffff_8100_0400);
  // { RCX, R11, DS, ES, FS, GS, RIP, CS | saved mask << 32, RFLAGS, RSP, SS } below +0x800.
  const base = 0x800 - 11 * 8;
  assert.equal(it.regLo(4), (g.hostile.va + base) >>> 0);
  const q = (k: number) => [g.hostile.read32(base + 8 * k), g.hostile.read32(base + 8 * k + 4)];
  assert.deepEqual(
    Array.from({ length: 11 }, (_, k) => q(k)),
    [
      [0x2222, 0],
      [0x1111, 0],
      [0, 0],
      [0, 0],
      [0, 0],
      [0, 0],
      [0x1234, 0x0000_8000],
      [KERNEL_CS, 0], // events were unmasked by the iret (IF set)
      [0x202, 0],
      [(g.hostile.va + 0x808) >>> 0, linearHigh32(g.hostile.va + 0x808)],
      [0x10, 0],
    ],
  );
  assert.equal(g.platform.stats.get("pv.failsafe"), 1);
});
