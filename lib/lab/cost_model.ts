/**
 * The cost model: counters -> estimated cycles, per CPU profile. The counts are the lab's
 * primary output; cycles are derived from them only, by multiplying each event by a cost
 * taken from published measurements. Every number cites its source (see
 * ../shared/research/calibration.md, sections 1, 2, 5 and 7); [A] marks an assumption
 * with no published backing, [D] a value derived by arithmetic on published ones.
 *
 * Costs are additive and per event: a VM exit of any reason costs the hardware round trip
 * plus a simple handler (priced once, on `exit.total`); events handled inside an exit (an
 * emulated page-table write, a hidden or reflected fault, a resync, an emulated port
 * access, a round trip to the device model) add what their published totals exceed that
 * by, and exit reasons whose handling is simple (HLT, external interrupt, interrupt
 * window) are listed at 0 so the report says where their cost is.
 *
 * @module
 */

import { findCounter, type StatsSnapshot } from "../x86/stats.ts";

/** One priced event. */
export interface CostEntry {
  /** Counter name in the registry. */
  counter: string;
  /** Cycles per event. */
  cycles: number;
  /** Where the number comes from. */
  source: string;
  /**
   * A counter whose events this one's are a subset of and that they are priced instead
   * of: each event here takes one event off that counter's bill (a classic monitor's trap
   * is also counted in `exit.total`, but costs a ring transition, not a VMX round trip).
   */
  insteadOf?: string;
}

/** A CPU profile: a name, what it models, and its prices. */
export interface CpuProfile {
  /** Profile name for `--cpu`. */
  name: string;
  /** The machine it models. */
  description: string;
  /** Prices by counter. */
  costs: readonly CostEntry[];
}

// Building blocks, each cited once.
const P4 = {
  rt: 4340, // VM entry 2,409 + #PF exit 1,931 (Adams & Agesen 2006, Table 1) [P]
  handler: 2904.5, // (pgfault_VT - native - RT) / 2 passes = 5,809 / 2 (calibration §7) [D]
  ptemod: 12733, // ptemod VT, cycles (Adams & Agesen 2006, Fig. 4) [P]
  truePf: 10149, // pgfault VT - native = 11,242 - 1,093 (Adams & Agesen 2006) [D]
  nativePf: 1093, // pgfault native, minimal handler (Adams & Agesen 2006) [P]
  nativeIo: 3209, // `in` port 0x80 natively (Adams & Agesen 2006) [P]
  io: 15826, // `in` port 0x80 under VT (Adams & Agesen 2006) — used for an MMIO exit [P]
  // A PV transition (a bounced fault, or a hypercall with its handler): (2.73 - 1.42) us x
  // 2.4 GHz / 2 transitions per demand fault (Barham 2003 Table 5 + text), on NetBurst [D].
  pvTransition: 1570,
  nativeException: 889, // divzero: fault to ring 0, minimal handler, IRET (Adams & Agesen) [P]
  // A process switch natively: lmbench 2p/0K 0.77 us x 2.4 GHz (Barham 2003 Table 4) [D].
  contextSwitch: 1850,
};
const NEHALEM = {
  rt: 1009, // Nehalem exit+entry round trip (Agesen et al., ATC 2012, Table 1) [P]
  handler: 1500, // simple exit handling excluding mode switches (Ben-Yehuda et al., Turtles 2010) [P]
  ptemod: 2950, // 2.93 x RT, the P4 ratio ptemod/RT carried over (calibration §7) [D]
  truePf: 2360, // 2.34 x RT, the P4 ratio carried over (calibration §7) [D]
  nativePf: 1000, // [A] (calibration §7)
  nativeIo: 1000, // [A] an uncached register access on a 2009 machine
  io: 4000, // [A] RT + handler + device-model work
  pvTransition: 1000, // [A] (calibration §7: pv.transition on a 2009 machine)
  nativeException: 800, // [A] (calibration §7: native.exception_nonmmu)
  contextSwitch: 1000, // [A] a process switch on a 2009 machine
};

const SANDY_BRIDGE = {
  rt: 784, // Sandy Bridge exit+entry round trip (Agesen et al., ATC 2012, Table 1) [P]
  handler: 1500, // as Nehalem (Turtles 2010); no newer published figure [A]
  ptemod: 2297, // 2.93 x RT, the P4 ratio carried over [D]
  truePf: 1835, // 2.34 x RT [D]
  nativePf: 1000, // [A]
  nativeIo: 1000, // [A]
  io: 4000, // [A]
  pvTransition: 1000, // [A]
  nativeException: 800, // [A]
  contextSwitch: 1000, // [A]
};

function hardwareCosts(era: { nativePf: number; nativeIo: number }): CostEntry[] {
  return [
    {
      counter: "mmio.read",
      cycles: era.nativeIo,
      source: "an uncached device register access: native `in` (Adams & Agesen 2006: 3,209)",
    },
    {
      counter: "mmio.write",
      cycles: era.nativeIo,
      source: "an uncached device register write, as a read",
    },
    { counter: "cpu.read", cycles: 1, source: "[A] one cycle per load (no cache model)" },
    { counter: "cpu.write", cycles: 1, source: "[A] one cycle per store" },
    { counter: "cpu.fetch", cycles: 1, source: "[A] one cycle per instruction fetch" },
    {
      counter: "walk.refs",
      cycles: 20,
      source: "[A] 20 cycles per page-walk reference (PWC/L1/L2 hits; calibration §7)",
    },
    {
      counter: "tlb.flush.cr3",
      cycles: 150,
      source: "[A] MOV CR3 with flush, refills excluded (calibration §5c, §7)",
    },
    {
      counter: "tlb.flush.invlpg",
      cycles: 150,
      source:
        "[A] INVLPG ~140 ns assumption of the 2012 LKML flush-ceiling patch (calibration §5c)",
    },
    {
      counter: "guest.fault",
      cycles: era.nativePf,
      source: "#PF + minimal handler round trip (Adams & Agesen 2006: 1,093 on the P4 672)",
    },
  ];
}

function pvCosts(era: typeof P4): CostEntry[] {
  return [
    {
      counter: "hypercall.traps",
      cycles: era.pvTransition,
      source: "one PV transition per entry into Xen, a multicall being one (Barham 2003) [D]",
    },
    {
      counter: "pv.bounce.pf",
      cycles: era.pvTransition,
      source: "a fault taken by Xen and bounced to the guest's handler: one transition [D]",
    },
    {
      counter: "validate.entries",
      cycles: 50,
      source: "[A] checking one present entry (calibration §7: pv.pte_validate_per_entry [NF])",
    },
    {
      counter: "pv.bounce.syscall",
      cycles: era.pvTransition,
      source: "a 64-bit PV system call enters Xen and is bounced to the guest kernel: one " +
        "transition, as a bounced fault (Barham 2003) [D]",
    },
    {
      counter: "pv.eventUpcall",
      cycles: era.pvTransition,
      source: "Xen builds a bounce frame to the guest's event callback: one transition, as a " +
        "bounced fault (Barham 2003) [D]",
    },
    {
      counter: "pv.emulatedPrivOp",
      cycles: era.pvTransition + era.handler,
      source: "emulate_privileged_op: the #GP into Xen and back (one transition, Barham " +
        "2003) plus decoding and emulating the instruction (a simple exit handler, " +
        "Turtles 2010 / calibration §7) [D]",
    },
  ];
}

function classicCosts(era: typeof P4): CostEntry[] {
  return [
    {
      counter: "classic.trap",
      insteadOf: "exit.total",
      cycles: era.nativeException + era.handler,
      source: "a pre-VT-x monitor's trap: a fault from ring 1/3 to ring 0 and IRET back " +
        "(divzero with a minimal handler: 889 cycles on the P4 672, Adams & Agesen 2006) " +
        "plus the monitor's decode and emulation (a simple handler, calibration §7) [D]",
    },
  ];
}

function hvmCosts(era: typeof P4): CostEntry[] {
  return [
    {
      counter: "exit.total",
      cycles: era.rt + era.handler,
      source: "VM exit + entry round trip plus a simple handler (calibration §7)",
    },
    {
      counter: "emulate.ptWrite",
      cycles: era.ptemod - era.rt - era.handler,
      source: "ptemod under VT minus the exit it rides on (Adams & Agesen 2006) [D]",
    },
    {
      counter: "fault.genuine",
      cycles: era.handler,
      source: "the second handler pass that reflects a true fault (calibration §7) [D]",
    },
    {
      counter: "fault.hidden",
      cycles: Math.max(0, era.truePf - era.rt - era.handler),
      source: "[A] a shadow fill costs about a reflected fault (calibration §7: hidden_pf)",
    },
    {
      counter: "emulate.mmio",
      cycles: era.io - era.rt - era.handler,
      source: "`in` under VT minus the exit (Adams & Agesen 2006), for an MMIO access [D]",
    },
    {
      counter: "exit.io",
      cycles: era.io - era.rt - era.handler,
      source: "`in` port 0x80 under VT (15,826 on the P4, emulated inside the VMM) minus " +
        "the exit it rides on (Adams & Agesen 2006) [D]: decoding the port access and " +
        "emulating it in the hypervisor (Xen's handle_pio)",
    },
    {
      counter: "hvm.ioreq",
      cycles: 2 * era.pvTransition + 2 * era.contextSwitch,
      source: "[D/A] a round trip to the device model in dom0 (Xen's ioreq to QEMU): two " +
        "switches between the guest's vCPU and dom0's and QEMU's wake-up (2 x a native " +
        "process switch, Barham 2003 Table 4) plus dom0's event upcall and its " +
        "completion hypercall (2 x a PV transition, Barham 2003); no published " +
        "measurement found (calibration [NF])",
    },
    {
      counter: "exit.hlt",
      cycles: 0,
      source: "priced by exit.total (round trip + simple handler); the time the vCPU " +
        "then sleeps is idle time, not cost",
    },
    {
      counter: "exit.externalInterrupt",
      cycles: 0,
      source: "priced by exit.total (round trip + simple handler: the host's interrupt " +
        "handler and the injection at VM entry)",
    },
    {
      counter: "exit.interruptWindow",
      cycles: 0,
      source: "priced by exit.total (round trip + simple handler: turning the window off " +
        "and injecting at VM entry)",
    },
    {
      counter: "shadow.validate",
      cycles: 50,
      source: "[A] re-propagating one guest entry into a shadow",
    },
    {
      counter: "oos.resync",
      cycles: 1024,
      source: "[A] 512 entry compares per resynced page (calibration §7: oos_resync_per_page)",
    },
    {
      counter: "oos.unsync",
      cycles: 1000,
      source: "[A] snapshotting a 4 KiB guest table and making it writable",
    },
    {
      counter: "shadow.made",
      cycles: 1000,
      source: "[A] allocating and clearing a shadow page",
    },
    {
      counter: "shadow.tlbFlush",
      cycles: 150,
      source: "[A] a full TLB flush by the hypervisor, refills excluded",
    },
  ];
}

/**
 * The profiles. `p4_2006` is the VT-x generation Adams & Agesen measured (shadow paging
 * without hardware MMU support); `nehalem2009` is the first EPT generation;
 * `sandybridge2011` the latest round trip the calibration data has (later generations: not
 * found).
 */
export const CPU_PROFILES: readonly CpuProfile[] = [
  {
    name: "p4_2006",
    description: "Pentium 4 672, 3.8 GHz, first-generation VT-x (Adams & Agesen, ASPLOS 2006)",
    costs: [...hardwareCosts(P4), ...hvmCosts(P4), ...pvCosts(P4), ...classicCosts(P4)],
  },
  {
    name: "nehalem2009",
    description: "Nehalem, 2009: VT-x with EPT, ~1,000-cycle round trip (Agesen et al. 2012)",
    costs: [
      ...hardwareCosts(NEHALEM),
      ...hvmCosts(NEHALEM),
      ...pvCosts(NEHALEM),
      ...classicCosts(NEHALEM),
    ],
  },
  {
    name: "sandybridge2011",
    description:
      "Sandy Bridge, 2011: the fastest round trip published (784 cycles, Agesen et al. 2012)",
    costs: [
      ...hardwareCosts(SANDY_BRIDGE),
      ...hvmCosts(SANDY_BRIDGE),
      ...pvCosts(SANDY_BRIDGE),
      ...classicCosts(SANDY_BRIDGE),
    ],
  },
];

/** The default profile. */
export const DEFAULT_CPU_PROFILE = "nehalem2009";

/** A profile by name; throws a RangeError naming the valid ones. */
export function cpuProfile(name: string): CpuProfile {
  const profile = CPU_PROFILES.find((p) => p.name === name);
  if (profile === undefined) {
    throw new RangeError(
      `Unknown CPU profile "${name}": valid profiles are ${
        CPU_PROFILES.map((p) => p.name).join(", ")
      }`,
    );
  }
  return profile;
}

/** Estimated cycles of a run, total and per priced counter. */
export interface CycleEstimate {
  /** The profile used. */
  profile: string;
  /** Sum over the priced counters. */
  total: number;
  /** Each priced counter that occurred: count, price, cycles. */
  parts: { counter: string; count: number; cycles: number; each: number }[];
}

/**
 * Prices counter deltas `counts` (as a run reports them) with `profile`. Unpriced counters
 * cost nothing; a priced counter that is not declared is a bug (RangeError).
 *
 * @example
 * ```ts
 * import { estimateCycles } from "./cost_model.ts";
 * import "../platform/hvm_shadow.ts"; // declares exit.* counters
 * import assert from "node:assert/strict";
 * const estimate = estimateCycles({ "exit.total": 2, "cpu.read": 10 }, "p4_2006");
 * assert.equal(estimate.total, 2 * (4340 + 2904.5) + 10);
 * ```
 */
export function estimateCycles(counts: StatsSnapshot, profileName: string): CycleEstimate {
  const profile = cpuProfile(profileName);
  const parts: CycleEstimate["parts"] = [];
  let total = 0;
  // Events priced instead of another counter's come off that counter's count.
  const replaced = new Map<string, number>();
  for (const { counter, insteadOf } of profile.costs) {
    if (insteadOf === undefined) continue;
    replaced.set(insteadOf, (replaced.get(insteadOf) ?? 0) + (counts[counter] ?? 0));
  }
  for (const { counter, cycles } of profile.costs) {
    if (findCounter(counter) === undefined) continue; // that layer is not loaded: no events
    const count = Math.max(0, (counts[counter] ?? 0) - (replaced.get(counter) ?? 0));
    if (count === 0) continue;
    parts.push({ counter, count, cycles: count * cycles, each: cycles });
    total += count * cycles;
  }
  return { profile: profile.name, total, parts };
}
