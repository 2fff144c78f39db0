/**
 * Explain one memory access: build a small example address space (a user process and a
 * kernel half) in machine memory, perform one access through a {@link Vcpu}, and show
 * what the x86 MMU did, step by step: the control state that decides the outcome, the TLB
 * lookup, every paging-structure entry the walk read (Intel SDM Vol. 3A 4.5), the
 * combined rights after each level (4.6), the Accessed/Dirty flags the walk set (4.8),
 * and the result: a physical address, a #PF with its error code decoded (4.7), or #GP(0)
 * for a non-canonical address (3.3.7.1).
 *
 * The access itself runs on the real vCPU path (TLB -> walk -> fill or fault), which
 * gives the result and the counters. The level-by-level record comes from a second,
 * identical machine walked with a {@link WalkTrace} (the vCPU's own walk keeps none);
 * both walks must agree, and a disagreement is a bug, thrown as an Error.
 *
 * Run it as `deno task explain --address user-data --access write` (see `--help`).
 *
 * @module
 */

import { parseArgs, styleText } from "node:util";
import {
  type AccessKind,
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_PKE,
  CR4_SMAP,
  CR4_SMEP,
  describePteFlags,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  formatHex,
  formatLinear,
  isFetch,
  isImplicit,
  isWrite,
  levelIndex,
  levelSpan,
  linearFromBigInt,
  MachineMemory,
  PAGE_SIZE,
  PageWalker,
  PagingControl,
  parseAccessKind,
  parseBigInt,
  PFEC_FETCH,
  PFEC_PK,
  PFEC_PRESENT,
  PFEC_RSVD,
  PFEC_USER,
  PFEC_WRITE,
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_XD,
  PTE_LO_RESERVED_1G,
  PTE_LO_RESERVED_2M,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
  pteHigh,
  pteLargePageBase,
  pteLow,
  ptePkey,
  reservedHighMask,
  RFLAGS_AC,
  RIGHTS_USER,
  RIGHTS_WRITABLE,
  RIGHTS_XD,
  Stats,
  type StatsSnapshot,
  type Tlb,
  TLB_DIRTY,
  TLB_PKEY_SHIFT,
  TLB_RIGHTS_MASK,
  UPPER_HALF_START,
  Vcpu,
  VECTOR_GP,
  VECTOR_PF,
  WalkTrace,
} from "../mod.ts";

// ---------------------------------------------------------------------------------------
// The example address space
// ---------------------------------------------------------------------------------------

/** Installed machine memory: 64 MiB (frames are backed lazily, on first write). */
const MACHINE_FRAMES = 0x4000;
/** The PML4 (CR3 points here); further tables take the next frames, in build order. */
const PML4_MFN = 0x100;
/** Flags of non-leaf entries: user half P|RW|US, kernel half P|RW (as Linux sets them). */
const USER_TABLE_FLAGS = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const KERNEL_TABLE_FLAGS = PTE_PRESENT | PTE_WRITABLE;
/** Bit 51 as a bit of the high word: reserved while MAXPHYADDR < 52. */
const HI_BIT_51 = 1 << 19;

/** Table names by level, as the SDM calls them (l4 = PML4 .. l1 = page table). */
const TABLE_NAMES = ["", "PT", "PD", "PDPT", "PML4"] as const;

/** How one named page is put into the tables. */
interface PageSpec {
  readonly name: string;
  /** 48-bit linear base. */
  readonly va: number;
  /** Level of the leaf entry (1: 4 KiB, 2: 2 MiB, 3: 1 GiB); 4 for a hole at the PML4. */
  readonly level: number;
  /** Physical base of the page, or null when nothing is mapped. */
  readonly pa: number | null;
  /** Low flags of the leaf (PS added for large pages). */
  readonly flags: number;
  readonly xd: boolean;
  readonly pkey: number;
  /** Extra high-word bits of the leaf (the reserved-bit example). */
  readonly extraHigh: number;
  /** A raw leaf entry instead of a mapping (the swapped-out example). */
  readonly raw: { readonly lo: number; readonly hi: number } | null;
  /** One line for a student: what the page is and what to try. */
  readonly summary: string;
}

function page(
  name: string,
  va: number,
  pa: number | null,
  summary: string,
  more: Partial<Omit<PageSpec, "name" | "va" | "pa" | "summary">> = {},
): PageSpec {
  return {
    name,
    va,
    pa,
    summary,
    level: more.level ?? 1,
    flags: more.flags ?? 0,
    xd: more.xd ?? false,
    pkey: more.pkey ?? 0,
    extraHigh: more.extraHigh ?? 0,
    raw: more.raw ?? null,
  };
}

const P = PTE_PRESENT;
const RW = PTE_WRITABLE;
const US = PTE_USER;
const G = PTE_GLOBAL;

/**
 * The named pages, in address order. Every A and D flag starts clear, so a walk shows
 * each one it sets.
 */
const PAGES: readonly PageSpec[] = [
  page("user-code", 0x400000, 0x200000, "user code: user, read-only, executable", {
    flags: P | US,
  }),
  page("user-data", 0x600000, 0x201000, "user data: user, read/write, XD (no execute)", {
    flags: P | RW | US,
    xd: true,
  }),
  page(
    "user-pkey",
    0x601000,
    0x202000,
    "user data with protection key 1: try --pke --pkru 0x4 (AD1) or 0x8 (WD1)",
    { flags: P | RW | US, xd: true, pkey: 1 },
  ),
  page(
    "user-swapped",
    0x602000,
    null,
    "swapped out: P=0; the OS keeps its swap slot (0x1234) and old bits in the entry",
    { raw: { lo: (0x1234 << 12 | RW | US) >>> 0, hi: PTE_HI_XD } },
  ),
  page(
    "user-rsvd",
    0x603000,
    0x203000,
    "user, read/write, XD, but bit 51 is set: a reserved bit while MAXPHYADDR < 52",
    { flags: P | RW | US, xd: true, extraHigh: HI_BIT_51 },
  ),
  page("user-2m", 0x40000000, 0x2000000, "a 2 MiB page (PS=1 in the l2e): user, read/write", {
    level: 2,
    flags: P | RW | US,
  }),
  page("unmapped", 0x7f0000000000, null, "a hole: PML4[254] is empty (512 GiB unmapped)", {
    level: 4,
  }),
  page("user-stack", 0x7ffffffff000, 0x204000, "top user stack page: user, read/write, XD", {
    flags: P | RW | US,
    xd: true,
  }),
  page(
    "direct-map",
    linearFromBigInt(0xffff_8880_0000_0000n),
    0,
    "kernel direct map of physical memory, 1 GiB page (PS=1 in the l3e): " +
      "supervisor, read/write, global, XD",
    { level: 3, flags: P | RW | G, xd: true },
  ),
  page(
    "kernel-text",
    linearFromBigInt(0xffff_ffff_8100_0000n),
    0x1000000,
    "kernel text: supervisor, read-only, global, executable",
    { flags: P | G },
  ),
];

/** A page table of the example, for the report. */
export interface TableReport {
  /** `l4` .. `l1`: the level whose entries the table holds. */
  level: string;
  /** `PML4`, `PDPT`, `PD` or `PT`. */
  name: string;
  /** Machine frame number, hex. */
  mfn: string;
  /** Physical address of the table, hex. */
  address: string;
  /** First linear address the table translates (canonical hex). */
  covers: string;
}

/** A named page of the example, for the report and `--list`. */
export interface NamedPageReport {
  /** The name to pass as `--address`. */
  name: string;
  /** Linear base address (canonical hex). */
  address: string;
  /** Bytes covered: the page size, or the hole's size. */
  size: number;
  /** `4 KiB`, `2 MiB`, `1 GiB` or `512 GiB`. */
  sizeName: string;
  /** Physical base (hex), or null when nothing is mapped. */
  physicalAddress: string | null;
  /** The leaf entry as built (16 hex digits), or null for a hole. */
  entry: string | null;
  /** The leaf's flags as {@link describePteFlags} prints them, or why there is none. */
  flags: string;
  /** What the page is. */
  summary: string;
}

/** The example address space, as a report (`--list` prints it). */
export interface AddressSpaceReport {
  /** Installed machine memory in bytes. */
  memoryBytes: number;
  /** CR3's table address: the PML4 (hex). */
  pml4Address: string;
  /** Every page table, in the order they were built. */
  tables: TableReport[];
  /** The named pages, in address order. */
  pages: NamedPageReport[];
}

interface ExampleMachine {
  memory: MachineMemory;
  space: AddressSpaceReport;
}

/** Builds the example tables in a fresh machine memory counting into `stats`. */
function buildExample(stats: Stats): ExampleMachine {
  const memory = new MachineMemory({ frames: MACHINE_FRAMES, stats });
  const tables: TableReport[] = [
    {
      level: "l4",
      name: "PML4",
      mfn: formatHex(PML4_MFN),
      address: formatHex(PML4_MFN * PAGE_SIZE),
      covers: formatLinear(0),
    },
  ];
  let nextMfn = PML4_MFN + 1;
  const pages: NamedPageReport[] = [];
  for (const spec of PAGES) {
    const tableFlags = spec.va >= UPPER_HALF_START ? KERNEL_TABLE_FLAGS : USER_TABLE_FLAGS;
    let table = PML4_MFN * PAGE_SIZE;
    for (let level = 4; level > spec.level; level--) {
      const entry = table + levelIndex(spec.va, level) * 8;
      const lo = memory.read32(entry);
      if ((lo & PTE_PRESENT) === 0) {
        const next = nextMfn++ * PAGE_SIZE;
        memory.write32(entry, pteLow(next, tableFlags));
        memory.write32(entry + 4, pteHigh(next));
        const span = levelSpan(level);
        tables.push({
          level: `l${level - 1}`,
          name: TABLE_NAMES[level - 1]!,
          mfn: formatHex(next / PAGE_SIZE),
          address: formatHex(next),
          covers: formatLinear(spec.va - (spec.va % span)),
        });
      }
      table = pteAddress(memory.read32(entry), memory.read32(entry + 4));
    }
    const size = levelSpan(spec.level);
    let lo = 0;
    let hi = 0;
    if (spec.raw !== null) {
      lo = spec.raw.lo;
      hi = spec.raw.hi;
    } else if (spec.pa !== null) {
      lo = pteLow(spec.pa, spec.flags | (spec.level > 1 ? PTE_PAGE_SIZE : 0));
      hi = (pteHigh(spec.pa, spec.xd, spec.pkey) | spec.extraHigh) >>> 0;
    }
    const isHole = spec.raw === null && spec.pa === null;
    if (!isHole) {
      const entry = table + levelIndex(spec.va, spec.level) * 8;
      memory.write32(entry, lo);
      memory.write32(entry + 4, hi);
    }
    pages.push({
      name: spec.name,
      address: formatLinear(spec.va),
      size,
      sizeName: sizeName(size),
      physicalAddress: spec.pa === null ? null : formatHex(spec.pa),
      entry: isHole ? null : formatEntry(lo, hi),
      flags: isHole
        ? `no entry: PML4[${levelIndex(spec.va, 4)}] is empty`
        : describeEntryFlags(lo, hi, spec.level),
      summary: spec.summary,
    });
  }
  return {
    memory,
    space: {
      memoryBytes: MACHINE_FRAMES * PAGE_SIZE,
      pml4Address: formatHex(PML4_MFN * PAGE_SIZE),
      tables,
      pages,
    },
  };
}

/**
 * The example address space: its tables (with their machine frames) and named pages.
 *
 * @example
 * ```ts
 * import { describeExampleAddressSpace } from "./explain.ts";
 * import assert from "node:assert/strict";
 * const space = describeExampleAddressSpace();
 * assert.equal(space.pml4Address, "0x100000");
 * assert.ok(space.pages.some((p) => p.name === "user-data"));
 * ```
 */
export function describeExampleAddressSpace(): AddressSpaceReport {
  return buildExample(new Stats()).space;
}

// ---------------------------------------------------------------------------------------
// Options and report
// ---------------------------------------------------------------------------------------

/** An access kind by name, as `--access` takes it. */
export type AccessName = "read" | "write" | "fetch" | "implicit-read" | "implicit-write";

const ACCESS_NAMES: readonly AccessName[] = [
  "read",
  "write",
  "fetch",
  "implicit-read",
  "implicit-write",
];

/** What to explain; omitted fields take the defaults shown. */
export interface ExplainOptions {
  /**
   * The linear address: hex (`0x600010`), decimal, a named page (`user-data`) or a name
   * plus an offset inside it (`user-data+0x10`). Non-canonical values are allowed: they
   * give #GP(0).
   */
  address: string;
  /** The access; default `read`. */
  access?: AccessName;
  /** Current privilege level 0..3; default 3 (user mode). */
  cpl?: number;
  /** CR0.WP; default true. */
  wp?: boolean;
  /** CR4.SMEP; default false. */
  smep?: boolean;
  /** CR4.SMAP; default false. */
  smap?: boolean;
  /** RFLAGS.AC; default false. */
  ac?: boolean;
  /** IA32_EFER.NXE; default true. */
  nxe?: boolean;
  /** CR4.PKE; default false. */
  pke?: boolean;
  /** PKRU (32 bits); default 0. */
  pkru?: number;
  /** A PCID 0..4095: sets CR4.PCIDE and CR3[11:0]; default none (PCIDE=0). */
  pcid?: number;
  /** MAXPHYADDR 36..52; default 46. */
  maxPhyAddr?: number;
  /** Do the access twice (the second can hit the TLB); default false. */
  twice?: boolean;
}

/** The access asked for. */
export interface RequestReport {
  /** The address as given. */
  given: string;
  /** The 64-bit address, 16 hex digits (canonical form when it is canonical). */
  address: string;
  /** Whether bits 63..47 are all equal. */
  isCanonical: boolean;
  /** The named page (or hole) containing the address, or null. */
  page: string | null;
  /** Offset from that page's base, hex, or null. */
  pageOffset: string | null;
  /** The access kind. */
  access: AccessName;
  /** CPL. */
  cpl: number;
  /** Whether paging treats it as a user-mode access (CPL 3 and not implicit). */
  isUserMode: boolean;
  /** How many times the access is performed (1, or 2 with `twice`). */
  times: number;
  /** Table indexes and page offset the address splits into, or null if not canonical. */
  split: { l4: number; l3: number; l2: number; l1: number; offset: number } | null;
}

/** The processor state paging depends on. */
export interface ControlReport {
  /** CR0, hex. */
  cr0: string;
  /** CR0.WP. */
  wp: boolean;
  /** CR3, hex (table address | PCID). */
  cr3: string;
  /** The PML4's physical address, hex. */
  pml4Address: string;
  /** The current PCID (0 when PCIDE=0). */
  pcid: number;
  /** CR4, hex. */
  cr4: string;
  /** CR4.PGE. */
  pge: boolean;
  /** CR4.PCIDE. */
  pcide: boolean;
  /** CR4.SMEP. */
  smep: boolean;
  /** CR4.SMAP. */
  smap: boolean;
  /** CR4.PKE. */
  pke: boolean;
  /** IA32_EFER, hex. */
  efer: string;
  /** EFER.NXE. */
  nxe: boolean;
  /** Current privilege level. */
  cpl: number;
  /** RFLAGS.AC. */
  ac: boolean;
  /** PKRU, 8 hex digits. */
  pkru: string;
  /** Physical-address width. */
  maxPhyAddr: number;
}

/** Combined rights: R/W ANDed, U/S ANDed, XD ORed over the levels so far (SDM 4.6). */
export interface RightsReport {
  /** R/W=1 at every level so far. */
  writable: boolean;
  /** U/S=1 at every level so far (a user-mode page). */
  user: boolean;
  /** XD=1 at some level so far (and NXE=1). */
  executeDisable: boolean;
}

/** A flag the walk changed in an entry. */
export interface FlagChange {
  /** `A` (accessed) or `D` (dirty). */
  flag: "A" | "D";
  /** Value before the walk. */
  before: number;
  /** Value after the walk. */
  after: number;
}

/** One paging-structure entry the walk read. */
export interface WalkLevelReport {
  /** 4 (PML4) .. 1 (PT). */
  level: number;
  /** `l4e` .. `l1e`. */
  entryName: string;
  /** Name of the table holding the entry: `PML4`, `PDPT`, `PD`, `PT`. */
  table: string;
  /** Index into the table (from the linear address). */
  index: number;
  /** Physical address of the table, hex. */
  tableAddress: string;
  /** Physical address of the entry, hex. */
  entryAddress: string;
  /** The entry as read, 16 hex digits. */
  entry: string;
  /** The entry after the walk's A/D update, 16 hex digits. */
  entryAfter: string;
  /** Flags of the entry as read. */
  flags: string;
  /** Reserved bits set in the entry (bit numbers, high first); empty when none. */
  reservedBits: number[];
  /** Rights after this level, or null when the walk stopped at this entry before them. */
  rightsAfter: RightsReport | null;
  /** A/D flags the walk set here. */
  adChanges: FlagChange[];
  /** Whether this entry maps the page (PS=1, or an l1e) and the walk used it as such. */
  isLeaf: boolean;
  /** The next table (non-leaf) or the page base (leaf), hex; null when not followed. */
  next: string | null;
}

/** A TLB entry: what it caches (SDM 4.10.2.2). */
export interface TlbEntryReport {
  /** Linear base of the page (canonical hex). */
  page: string;
  /** Physical base of the page, hex. */
  pageBase: string;
  /** Page size in bytes. */
  pageSize: number;
  /** PCID tag, or null for a global entry (matches every PCID). */
  pcid: number | null;
  /** Whether the entry is global. */
  isGlobal: boolean;
  /** Cached combined rights. */
  rights: RightsReport;
  /** Cached protection key. */
  pkey: number;
  /** Cached D flag of the leaf. */
  isDirty: boolean;
}

/** The TLB's part in one access. */
export interface TlbReport {
  /** `hit`, `miss`, or `not-consulted` (a #GP comes before any lookup). */
  outcome: "hit" | "miss" | "not-consulted";
  /** The entry that hit. */
  hitEntry: TlbEntryReport | null;
  /** The entry the walk filled. */
  filledEntry: TlbEntryReport | null;
}

/** A rule of SDM 4.6 that refused the access. */
export interface ProtectionRule {
  /** `U/S`, `R/W`, `WP`, `XD`, `SMEP`, `SMAP` or `PK`. */
  rule: "U/S" | "R/W" | "WP" | "XD" | "SMEP" | "SMAP" | "PK";
  /** One sentence: why. */
  explanation: string;
}

/** The access was translated. */
export interface TranslatedResult {
  /** Discriminant. */
  outcome: "translated";
  /** Physical address, hex. */
  physicalAddress: string;
  /** Physical base of the page, hex. */
  pageBase: string;
  /** Page size in bytes. */
  pageSize: number;
  /** `4 KiB`, `2 MiB` or `1 GiB`. */
  pageSizeName: string;
  /** Offset in the page, hex. */
  offset: string;
  /** Why an access that might look forbidden was allowed (e.g. CR0.WP=0). */
  notes: string[];
}

/** The access raised a page fault. */
export interface PageFaultResult {
  /** Discriminant. */
  outcome: "page-fault";
  /** 14. */
  vector: number;
  /** The error code. */
  errorCode: number;
  /** The error code in hex. */
  errorCodeHex: string;
  /** Names of the set error-code bits, low first: `P`, `W`, `U`, `RSVD`, `I`, `PK`. */
  errorBits: string[];
  /** The error code in words: `0x7 = P (protection violation) | W (write) | U (user mode)`. */
  errorCodeText: string;
  /** CR2: the faulting linear address (canonical hex). */
  cr2: string;
  /** Level where the walk stopped (4..1), or null when a TLB entry refused the access. */
  level: number | null;
  /** Why: a not-present entry, a reserved bit, or a protection rule. */
  cause: "not-present" | "reserved-bit" | "protection";
  /** For `protection`: every rule that refused the access (usually one). */
  rules: ProtectionRule[];
  /** One sentence on why the walk stopped. */
  reason: string;
}

/** The access raised #GP(0): a non-canonical address. */
export interface GeneralProtectionResult {
  /** Discriminant. */
  outcome: "general-protection";
  /** 13. */
  vector: number;
  /** 0. */
  errorCode: number;
  /** Why. */
  reason: string;
}

/** One performance of the access. */
export interface AccessReport {
  /** 1 or 2. */
  ordinal: number;
  /** The TLB lookup. */
  tlb: TlbReport;
  /** Each entry the walk read, l4 first; null when no walk happened. */
  walk: WalkLevelReport[] | null;
  /** The outcome. */
  result: TranslatedResult | PageFaultResult | GeneralProtectionResult;
  /** Counter deltas for this access, every declared counter by name. */
  counters: Record<string, number>;
}

/** Everything `run` found; JSON-serialisable (no bigint, no undefined). */
export interface ExplainReport {
  /** The access asked for. */
  request: RequestReport;
  /** The control state. */
  control: ControlReport;
  /** Remarks on the options (e.g. PKRU ignored because CR4.PKE=0). */
  notes: string[];
  /** One entry per access performed. */
  accesses: AccessReport[];
  /** Counter deltas over all accesses, every declared counter by name. */
  counters: Record<string, number>;
  /** The example address space the access ran in. */
  addressSpace: AddressSpaceReport;
}

// ---------------------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------------------

/**
 * Builds the example address space, performs the access (twice with `twice`) through a
 * vCPU, and reports every step. Pure: nothing is printed and nothing global changes.
 *
 * A fault is a result, not an error. Throws a RangeError for options out of range (an
 * unknown access or page name, a CPL outside 0..3, an address wider than 64 bits...),
 * with a message that says what is valid.
 *
 * @example A user-mode write to user data
 * ```ts
 * import { run } from "./explain.ts";
 * import assert from "node:assert/strict";
 * const report = run({ address: "user-data+0x10", access: "write" });
 * const result = report.accesses[0]!.result;
 * assert.equal(result.outcome, "translated");
 * if (result.outcome === "translated") assert.equal(result.physicalAddress, "0x201010");
 * ```
 */
export function run(options: ExplainOptions): ExplainReport {
  const access = options.access ?? "read";
  const kind = parseAccessKind(access);
  if (kind === undefined) {
    throw new RangeError(`Invalid access "${access}": must be one of ${ACCESS_NAMES.join(", ")}`);
  }
  const cpl = options.cpl ?? 3;
  checkInteger("cpl", cpl, 0, 3);
  const maxPhyAddr = options.maxPhyAddr ?? 46;
  checkInteger("maxphyaddr", maxPhyAddr, 36, 52);
  const pkru = options.pkru ?? 0;
  checkInteger("pkru", pkru, 0, 0xffffffff);
  if (options.pcid !== undefined) checkInteger("pcid", options.pcid, 0, 0xfff);
  const target = resolveAddress(options.address);

  const cr4 = CR4_PAE | CR4_PGE | (options.pcid !== undefined ? CR4_PCIDE : 0) |
    (options.smep ? CR4_SMEP : 0) | (options.smap ? CR4_SMAP : 0) | (options.pke ? CR4_PKE : 0);
  const init = {
    cr0: CR0_PE | CR0_PG | (options.wp ?? true ? CR0_WP : 0),
    cr3: PML4_MFN * PAGE_SIZE + (options.pcid ?? 0),
    cr4,
    efer: EFER_LME | EFER_LMA | (options.nxe ?? true ? EFER_NXE : 0),
    rflags: 0x2 | (options.ac ? RFLAGS_AC : 0),
    cpl,
    pkru,
    maxPhyAddr,
  };
  const stats = new Stats();
  const machine = buildExample(stats);
  const ctl = new PagingControl(init);
  const cpu = new Vcpu(machine.memory, ctl, stats);
  // The twin: the same tables in another memory, walked with a trace in step with the
  // vCPU's own walks, so its A/D state always matches the machine's before each walk.
  const twin = buildExample(new Stats());
  const twinCtl = new PagingControl(init);
  const twinWalker = new PageWalker(twin.memory, new Stats());

  const linear = target.linear;
  const times = options.twice ? 2 : 1;
  const notes = [...target.notes];
  if (pkru !== 0 && !options.pke) {
    notes.push("PKRU is ignored while CR4.PKE=0: add --pke to enforce protection keys");
  }
  const accesses: AccessReport[] = [];
  const start = stats.snapshot();
  for (let ordinal = 1; ordinal <= times; ordinal++) {
    const before = stats.snapshot();
    if (linear < 0) {
      cpu.raiseGeneralProtection();
      accesses.push({
        ordinal,
        tlb: { outcome: "not-consulted", hitEntry: null, filledEntry: null },
        walk: null,
        result: {
          outcome: "general-protection",
          vector: VECTOR_GP,
          errorCode: 0,
          reason: `${target.hex} is not canonical: bits 63..47 must all equal bit 47, so ` +
            "the processor raises #GP(0) before any TLB lookup or page walk " +
            "(SDM Vol. 3A 3.3.7.1); CR2 is not written",
        },
        counters: counterDeltas(before, stats.snapshot()),
      });
      continue;
    }
    const pa = cpu.translate(linear, kind);
    const counters = counterDeltas(before, stats.snapshot());
    const hitIndex = counters["tlb.hit"]! > 0 ? findTlbEntry(cpu.tlb, linear, ctl.pcid) : -1;
    let walk: WalkLevelReport[] | null = null;
    let trace: WalkTrace | null = null;
    if (counters["walk.count"]! > 0) {
      trace = new WalkTrace();
      const twinPa = twinWalker.walk(twinCtl, linear, kind, trace);
      if (
        twinPa !== pa || (pa < 0 && twinWalker.errorCode !== cpu.exception.errorCode)
      ) {
        throw new Error(
          `Bug: the traced walk of ${target.hex} gave ${twinPa} (error code ` +
            `${twinWalker.errorCode}), the vCPU ${pa} (error code ${cpu.exception.errorCode})`,
        );
      }
      walk = describeWalk(trace, linear, ctl);
    }
    const entryIndex = findTlbEntry(cpu.tlb, linear, ctl.pcid);
    const entry = entryIndex >= 0 ? describeTlbEntry(cpu.tlb, entryIndex) : null;
    const tlb: TlbReport = {
      outcome: counters["tlb.hit"]! > 0 ? "hit" : "miss",
      hitEntry: hitIndex >= 0 ? entry : null,
      filledEntry: walk !== null && pa >= 0 ? entry : null,
    };
    let result: TranslatedResult | PageFaultResult;
    if (pa >= 0) {
      const base = walk !== null ? cpu.walker.pageBase : cpu.tlb.frame[entryIndex]!;
      const size = walk !== null ? cpu.walker.pageSize : cpu.tlb.offsetMask[entryIndex]! + 1;
      result = {
        outcome: "translated",
        physicalAddress: formatHex(pa),
        pageBase: formatHex(base),
        pageSize: size,
        pageSizeName: sizeName(size),
        offset: formatHex(pa - base),
        notes: allowedNotes(kind, ctl, entry?.rights ?? null),
      };
    } else {
      result = describePageFault(cpu.exception.errorCode, linear, kind, ctl, trace, entry);
    }
    accesses.push({ ordinal, tlb, walk, result, counters });
  }
  const isUserMode = cpl === 3 && !isImplicit(kind);
  return {
    request: {
      given: options.address,
      address: target.hex,
      isCanonical: linear >= 0,
      page: target.page,
      pageOffset: target.pageOffset,
      access,
      cpl,
      isUserMode,
      times,
      split: linear < 0 ? null : {
        l4: levelIndex(linear, 4),
        l3: levelIndex(linear, 3),
        l2: levelIndex(linear, 2),
        l1: levelIndex(linear, 1),
        offset: linear & 0xfff,
      },
    },
    control: describeControl(ctl),
    notes,
    accesses,
    counters: counterDeltas(start, stats.snapshot()),
    addressSpace: machine.space,
  };
}

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Invalid --${name} ${value}: must be an integer ${formatRange(name, min, max)}`,
    );
  }
}

function formatRange(name: string, min: number, max: number): string {
  return name === "pkru" || name === "pcid"
    ? `${formatHex(min)}..${formatHex(max)}`
    : `${min}..${max}`;
}

interface ResolvedAddress {
  /** 48-bit linear value, or -1 when not canonical. */
  linear: number;
  /** The 64-bit value as 16 hex digits. */
  hex: string;
  page: string | null;
  pageOffset: string | null;
  notes: string[];
}

/** Resolves `--address`: a name, name+offset, hex or decimal. RangeError when invalid. */
function resolveAddress(text: string): ResolvedAddress {
  const notes: string[] = [];
  const named = /^([a-z0-9-]+)(?:\+(.+))?$/.exec(text.trim());
  const spec = named !== null ? PAGES.find((p) => p.name === named[1]) : undefined;
  let value: bigint;
  if (spec !== undefined) {
    const span = levelSpan(spec.level);
    const offset = named![2] === undefined ? 0n : parseBigInt(named![2]);
    if (offset === undefined || offset >= BigInt(span)) {
      throw new RangeError(
        `Invalid --address "${text}": the offset after "${spec.name}+" must be a number ` +
          `below ${formatHex(span)} (the ${sizeName(span)} the name covers)`,
      );
    }
    value = BigInt.asUintN(64, BigInt(spec.va) | (spec.va >= UPPER_HALF_START ? ~0n << 48n : 0n)) +
      offset;
  } else {
    const parsed = parseBigInt(text);
    if (parsed === undefined) {
      throw new RangeError(
        `Invalid --address "${text}": give a hex address (0x600010), a decimal one, a ` +
          `named page or a name plus an offset (user-data+0x10); named pages: ` +
          PAGES.map((p) => p.name).join(", "),
      );
    }
    if (parsed >= 1n << 64n) {
      throw new RangeError(
        `Invalid --address "${text}": wider than 64 bits (largest: 0xffffffffffffffff)`,
      );
    }
    value = parsed;
    if (/^\s*[0-9_]+\s*$/.test(text) && parsed >= 10n) {
      notes.push(
        `--address ${text.trim()} was read as decimal (= 0x${parsed.toString(16)}); ` +
          "write 0x... for hex",
      );
    }
  }
  const linear = linearFromBigInt(value);
  let page: string | null = null;
  let pageOffset: string | null = null;
  if (linear >= 0) {
    const containing = PAGES.find((p) => linear >= p.va && linear < p.va + levelSpan(p.level));
    if (containing !== undefined) {
      page = containing.name;
      pageOffset = formatHex(linear - containing.va);
    }
  }
  return { linear, hex: "0x" + value.toString(16).padStart(16, "0"), page, pageOffset, notes };
}

/** Every declared counter's delta, in registry order. */
function counterDeltas(before: StatsSnapshot, after: StatsSnapshot): Record<string, number> {
  return { ...Stats.diff(before, after) };
}

function describeControl(ctl: PagingControl): ControlReport {
  return {
    cr0: formatHex(ctl.cr0, 8),
    wp: (ctl.cr0 & CR0_WP) !== 0,
    cr3: formatHex(ctl.cr3, 16),
    pml4Address: formatHex(ctl.cr3TableAddress),
    pcid: ctl.pcid,
    cr4: formatHex(ctl.cr4, 8),
    pge: (ctl.cr4 & CR4_PGE) !== 0,
    pcide: (ctl.cr4 & CR4_PCIDE) !== 0,
    smep: (ctl.cr4 & CR4_SMEP) !== 0,
    smap: (ctl.cr4 & CR4_SMAP) !== 0,
    pke: (ctl.cr4 & CR4_PKE) !== 0,
    efer: formatHex(ctl.efer, 8),
    nxe: (ctl.efer & EFER_NXE) !== 0,
    cpl: ctl.cpl,
    ac: (ctl.rflags & RFLAGS_AC) !== 0,
    pkru: formatHex(ctl.pkru, 8),
    maxPhyAddr: ctl.maxPhyAddr,
  };
}

function rightsOf(bits: number): RightsReport {
  return {
    writable: (bits & RIGHTS_WRITABLE) !== 0,
    user: (bits & RIGHTS_USER) !== 0,
    executeDisable: (bits & RIGHTS_XD) !== 0,
  };
}

function rightsBits(rights: RightsReport): number {
  return (rights.writable ? RIGHTS_WRITABLE : 0) | (rights.user ? RIGHTS_USER : 0) |
    (rights.executeDisable ? RIGHTS_XD : 0);
}

/** Reserved bits set in a present entry at `level` under `ctl` (SDM 4.5.4), high first. */
function reservedBitsOf(lo: number, hi: number, level: number, ctl: PagingControl): number[] {
  if ((lo & PTE_PRESENT) === 0) return [];
  const bits: number[] = [];
  if ((ctl.efer & EFER_NXE) === 0 && (hi & PTE_HI_XD) !== 0) bits.push(63);
  const high = hi & reservedHighMask(ctl.maxPhyAddr);
  for (let b = 19; b >= 0; b--) if ((high >>> b) & 1) bits.push(32 + b);
  if ((lo & PTE_PAGE_SIZE) !== 0) {
    const low = level === 4
      ? PTE_PAGE_SIZE
      : level === 3
      ? (ctl.has1GbPages ? lo & PTE_LO_RESERVED_1G : PTE_PAGE_SIZE)
      : level === 2
      ? lo & PTE_LO_RESERVED_2M
      : 0;
    for (let b = 31; b >= 0; b--) if ((low >>> b) & 1) bits.push(b);
  }
  return bits;
}

function describeWalk(trace: WalkTrace, va: number, ctl: PagingControl): WalkLevelReport[] {
  const levels: WalkLevelReport[] = [];
  for (let level = 4; level >= trace.lastLevel; level--) {
    const lo = trace.entryLow[level]!;
    const hi = trace.entryHigh[level]!;
    const after = trace.entryLowAfter[level]!;
    const isLast = level === trace.lastLevel;
    const passed = !isLast || trace.cause === "none" || trace.cause === "protection";
    const isLeaf = isLast && passed;
    const index = levelIndex(va, level);
    const adChanges: FlagChange[] = [];
    for (const [flag, bit] of [["A", PTE_ACCESSED], ["D", PTE_DIRTY]] as const) {
      if ((lo & bit) !== (after & bit)) {
        adChanges.push({ flag, before: lo & bit ? 1 : 0, after: after & bit ? 1 : 0 });
      }
    }
    const size = levelSpan(level);
    levels.push({
      level,
      entryName: `l${level}e`,
      table: TABLE_NAMES[level]!,
      index,
      tableAddress: formatHex(trace.entryAddress[level]! - index * 8),
      entryAddress: formatHex(trace.entryAddress[level]!),
      entry: formatEntry(lo, hi),
      entryAfter: formatEntry(after, hi),
      flags: describeEntryFlags(lo, hi, level),
      reservedBits: reservedBitsOf(lo, hi, level, ctl),
      rightsAfter: passed ? rightsOf(trace.rightsAfter[level]!) : null,
      adChanges,
      isLeaf,
      next: !passed
        ? null
        : !isLeaf
        ? formatHex(pteAddress(lo, hi))
        : formatHex(level === 1 ? pteAddress(lo, hi) : pteLargePageBase(lo, hi, size)),
    });
  }
  return levels;
}

/** The TLB entry that translates `va` for `pcid`, found without a lookup (no counting). */
function findTlbEntry(tlb: Tlb, va: number, pcid: number): number {
  for (let i = 0; i < tlb.tag.length; i++) {
    const tag = tlb.tag[i]!;
    if (tag < 0) continue;
    const size = tlb.offsetMask[i]! + 1;
    if (tag === Math.floor(va / size) && (tlb.pcid[i] === pcid || tlb.pcid[i] === -1)) return i;
  }
  return -1;
}

function describeTlbEntry(tlb: Tlb, i: number): TlbEntryReport {
  const size = tlb.offsetMask[i]! + 1;
  const flags = tlb.flags[i]!;
  const isGlobal = tlb.pcid[i] === -1;
  return {
    page: formatLinear(tlb.tag[i]! * size),
    pageBase: formatHex(tlb.frame[i]!),
    pageSize: size,
    pcid: isGlobal ? null : tlb.pcid[i]!,
    isGlobal,
    rights: rightsOf(flags & TLB_RIGHTS_MASK),
    pkey: (flags >> TLB_PKEY_SHIFT) & 0xf,
    isDirty: (flags & TLB_DIRTY) !== 0,
  };
}

/** The levels (as `l1e`, ...) whose entry has `bit` equal to `value` in the low word. */
function levelsWhere(walk: WalkTrace | null, test: (lo: number, hi: number) => boolean): string {
  if (walk === null) return "cached TLB entry";
  const names: string[] = [];
  for (let level = 4; level >= walk.lastLevel; level--) {
    if (test(walk.entryLow[level]!, walk.entryHigh[level]!)) names.push(`l${level}e`);
  }
  return names.join(" and ");
}

/**
 * Every SDM 4.6 rule that refuses `kind` under `ctl` for combined `rights` and `pkey`.
 * The outcome comes from the permission table; this names the rules for the reader.
 */
function protectionRules(
  kind: AccessKind,
  ctl: PagingControl,
  rights: number,
  pkey: number,
  trace: WalkTrace | null,
): ProtectionRule[] {
  const rules: ProtectionRule[] = [];
  const write = isWrite(kind);
  const fetch = isFetch(kind);
  const user = ctl.isUserAccess(kind);
  const writable = (rights & RIGHTS_WRITABLE) !== 0;
  const userPage = (rights & RIGHTS_USER) !== 0;
  const xd = (rights & RIGHTS_XD) !== 0;
  const wp = (ctl.cr0 & CR0_WP) !== 0;
  const notWritable = () => levelsWhere(trace, (lo) => (lo & PTE_WRITABLE) === 0);
  if (user && !userPage) {
    rules.push({
      rule: "U/S",
      explanation: "a user-mode access needs U/S=1 at every level, and U/S=0 in the " +
        levelsWhere(trace, (lo) => (lo & PTE_USER) === 0) + " makes this a supervisor page",
    });
  }
  if (user && write && !writable) {
    rules.push({
      rule: "R/W",
      explanation: "a user-mode write needs R/W=1 at every level, and R/W=0 in the " +
        notWritable() + " (user writes honour R/W whatever CR0.WP)",
    });
  }
  if (!user && write && !writable && wp) {
    rules.push({
      rule: "WP",
      explanation: `a supervisor-mode write to a read-only page (R/W=0 in the ${notWritable()})` +
        " faults because CR0.WP=1; with --no-wp it would be allowed",
    });
  }
  if (fetch && xd) {
    rules.push({
      rule: "XD",
      explanation: "an instruction fetch from a page with XD=1 (in the " +
        levelsWhere(trace, (_lo, hi) => (hi & PTE_HI_XD) !== 0) + ") while EFER.NXE=1",
    });
  }
  if (!user && fetch && userPage && (ctl.cr4 & CR4_SMEP) !== 0) {
    rules.push({
      rule: "SMEP",
      explanation: "CR4.SMEP=1 forbids supervisor-mode instruction fetches from user pages " +
        "(U/S=1 at every level)",
    });
  }
  if (!user && !fetch && userPage && (ctl.cr4 & CR4_SMAP) !== 0) {
    if (isImplicit(kind)) {
      rules.push({
        rule: "SMAP",
        explanation: "CR4.SMAP=1 forbids implicit supervisor-mode accesses to user pages, " +
          "whatever RFLAGS.AC",
      });
    } else if ((ctl.rflags & RFLAGS_AC) === 0) {
      rules.push({
        rule: "SMAP",
        explanation: "CR4.SMAP=1 forbids supervisor-mode data accesses to user pages while " +
          "RFLAGS.AC=0 (with --ac, as STAC sets it, the access would be allowed)",
      });
    }
  }
  if ((ctl.cr4 & CR4_PKE) !== 0 && userPage && !fetch) {
    const ad = (ctl.pkru >>> (2 * pkey)) & 1;
    const wd = (ctl.pkru >>> (2 * pkey + 1)) & 1;
    if (ad) {
      rules.push({
        rule: "PK",
        explanation: `the page has protection key ${pkey}, and PKRU.AD${pkey} (bit ` +
          `${2 * pkey}) = 1 disables every data access to it`,
      });
    } else if (wd && write && (user || wp)) {
      rules.push({
        rule: "PK",
        explanation: `the page has protection key ${pkey}, and PKRU.WD${pkey} (bit ` +
          `${2 * pkey + 1}) = 1 disables writes to it` + (user ? "" : " (CR0.WP=1)"),
      });
    }
  }
  return rules;
}

/** Why an access that some rule could have refused was allowed. */
function allowedNotes(
  kind: AccessKind,
  ctl: PagingControl,
  rights: RightsReport | null,
): string[] {
  if (rights === null) return [];
  const notes: string[] = [];
  const user = ctl.isUserAccess(kind);
  if (!user && isWrite(kind) && !rights.writable && (ctl.cr0 & CR0_WP) === 0) {
    notes.push("a supervisor write to a read-only page is allowed because CR0.WP=0");
  }
  if (
    !user && !isFetch(kind) && !isImplicit(kind) && rights.user &&
    (ctl.cr4 & CR4_SMAP) !== 0 && (ctl.rflags & RFLAGS_AC) !== 0
  ) {
    notes.push("SMAP lets this supervisor access to a user page through because RFLAGS.AC=1");
  }
  if (!user && rights.user && !isFetch(kind) && (ctl.cr4 & CR4_SMAP) === 0) {
    notes.push("the kernel may touch this user page because CR4.SMAP=0 (try --smap)");
  }
  if (!user && isFetch(kind) && rights.user && (ctl.cr4 & CR4_SMEP) === 0) {
    notes.push("the kernel may execute this user page because CR4.SMEP=0 (try --smep)");
  }
  if (isFetch(kind) && (ctl.efer & EFER_NXE) === 0) {
    notes.push("EFER.NXE=0: nothing is execute-disabled (and XD=1 would be a reserved bit)");
  }
  return notes;
}

const ERROR_BITS: readonly (readonly [number, string, string])[] = [
  [PFEC_PRESENT, "P", "protection violation"],
  [PFEC_WRITE, "W", "write"],
  [PFEC_USER, "U", "user mode"],
  [PFEC_RSVD, "RSVD", "reserved bit set"],
  [PFEC_FETCH, "I", "instruction fetch"],
  [PFEC_PK, "PK", "protection key"],
];

/** The #PF error code in words (SDM 4.7): `0x7 = P (protection violation) | W ...`. */
function describeErrorCode(code: number): { bits: string[]; text: string } {
  const bits: string[] = [];
  const words: string[] = [];
  for (const [bit, name, meaning] of ERROR_BITS) {
    if ((code & bit) === 0) continue;
    bits.push(name);
    const said = bit === PFEC_PRESENT && (code & PFEC_RSVD) !== 0 ? "entry present" : meaning;
    words.push(`${name} (${said})`);
  }
  let text = `${formatHex(code)} = ${words.length > 0 ? words.join(" | ") : "no bits set"}`;
  if ((code & PFEC_PRESENT) === 0) text += "; P=0: the page is not present";
  return { bits, text };
}

function describePageFault(
  errorCode: number,
  va: number,
  kind: AccessKind,
  ctl: PagingControl,
  trace: WalkTrace | null,
  entry: TlbEntryReport | null,
): PageFaultResult {
  const { bits, text } = describeErrorCode(errorCode);
  const base = {
    outcome: "page-fault" as const,
    vector: VECTOR_PF,
    errorCode,
    errorCodeHex: formatHex(errorCode),
    errorBits: bits,
    errorCodeText: text,
    cr2: formatLinear(va),
  };
  if (trace === null) {
    // A TLB entry whose cached rights refuse the access: no walk (vcpu.ts translate()).
    const rights = entry === null ? 0 : rightsBits(entry.rights);
    const rules = protectionRules(kind, ctl, rights, entry?.pkey ?? 0, null);
    return {
      ...base,
      level: null,
      cause: "protection",
      rules,
      reason: "the TLB entry's cached rights refuse the access; no walk was needed",
    };
  }
  const level = trace.lastLevel;
  const lo = trace.entryLow[level]!;
  const hi = trace.entryHigh[level]!;
  if (trace.cause === "not-present") {
    const rest = lo !== 0 || hi !== 0
      ? `; the other bits (${formatEntry(lo, hi)}) are ignored by the MMU, so an OS may ` +
        "keep a swap location in them"
      : " and every other bit is 0: nothing was ever mapped here";
    return { ...base, level, cause: "not-present", rules: [], reason: `P=0${rest}` };
  }
  if (trace.cause === "reserved-bit") {
    const reserved = reservedBitsOf(lo, hi, level, ctl);
    const why = reserved.map((b) =>
      b === 63
        ? "bit 63 (XD) is reserved while EFER.NXE=0"
        : b >= 32
        ? `bit ${b} is reserved (bits 51..${ctl.maxPhyAddr} are, with MAXPHYADDR ` +
          `${ctl.maxPhyAddr})`
        : b === 7
        ? `bit 7 (PS) is reserved in an l${level}e`
        : `bit ${b} is reserved (between PAT and the frame of a large page)`
    );
    return {
      ...base,
      level,
      cause: "reserved-bit",
      rules: [],
      reason: `${why.join("; ")}. A reserved bit faults with P=1 and RSVD=1 whatever the ` +
        "access",
    };
  }
  const rights = trace.rightsAfter[level]!;
  const pkey = ptePkey(hi);
  const rules = protectionRules(kind, ctl, rights, pkey, trace);
  return {
    ...base,
    level,
    cause: "protection",
    rules,
    reason: "the walk reached the leaf, but its combined rights refuse the access",
  };
}

// ---------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------

/** How to print. */
export interface FormatOptions {
  /** ANSI colour (the CLI turns it off for NO_COLOR and when stdout is not a terminal). */
  color: boolean;
}

type Style = Parameters<typeof styleText>[0];
type Paint = (style: Style, text: string) => string;

function painter(color: boolean): Paint {
  return color
    ? (style, text) => styleText(style, text, { validateStream: false })
    : (_style, text) => text;
}

/** Text width the explanation wraps at. */
const WIDTH = 96;

/**
 * `body` word-wrapped to WIDTH after `label`; continuation lines are indented to where
 * the body starts. Returns the lines without the label.
 */
function wrapText(label: string, body: string): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of body.split(" ")) {
    if (line !== "" && label.length + line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = "";
    }
    line += (line === "" ? "" : " ") + word;
  }
  lines.push(line);
  return lines;
}

/** Appends `label` (painted with `style`, if any) and `body` wrapped by {@link wrapText}. */
function pushWrapped(
  out: string[],
  label: string,
  body: string,
  paint: Paint,
  style: Style | null,
): void {
  const hang = " ".repeat(label.length);
  wrapText(label, body).forEach((line, i) => {
    out.push(i > 0 ? hang + line : (style === null ? label : paint(style, label)) + line);
  });
}

/**
 * The report as text for a student: control state, then each access with its TLB
 * lookup, two lines per level read, the result and the counters that moved.
 *
 * @example
 * ```ts
 * import { formatExplainReport, run } from "./explain.ts";
 * import assert from "node:assert/strict";
 * const text = formatExplainReport(run({ address: "user-code", access: "write" }), {
 *   color: false,
 * });
 * assert.match(text, /#PF/);
 * assert.match(text, /0x7 = P \(protection violation\) \| W \(write\) \| U \(user mode\)/);
 * ```
 */
export function formatExplainReport(report: ExplainReport, options: FormatOptions): string {
  const paint = painter(options.color);
  const out: string[] = [];
  const r = report.request;
  const c = report.control;
  const where = r.page === null
    ? ""
    : r.pageOffset === "0x0"
    ? ` (${r.page})`
    : ` (${r.page} + ${r.pageOffset})`;
  out.push(paint("bold", `Explaining ${describeAccess(r)} at ${r.address}${where}`));
  if (r.page !== null) {
    const named = report.addressSpace.pages.find((p) => p.name === r.page)!;
    pushWrapped(out, `  ${named.name}: `, named.summary, paint, null);
  }
  for (const note of report.notes) pushWrapped(out, "  note: ", note, paint, "yellow");
  out.push("");
  out.push(paint("bold", "Control state"));
  out.push(`  CR0   ${c.cr0}  WP=${bit(c.wp)}`);
  out.push(
    `  CR3   ${c.cr3}  PML4 at ${c.pml4Address}` +
      (c.pcide ? `, PCID ${c.pcid}` : " (PCIDE=0: every TLB entry is PCID 0)"),
  );
  out.push(
    `  CR4   ${c.cr4}  PGE=${bit(c.pge)} PCIDE=${bit(c.pcide)} SMEP=${bit(c.smep)} ` +
      `SMAP=${bit(c.smap)} PKE=${bit(c.pke)}`,
  );
  out.push(`  EFER  ${c.efer}  NXE=${bit(c.nxe)}`);
  out.push(
    `  CPL ${c.cpl}   RFLAGS.AC=${bit(c.ac)}   PKRU ${c.pkru}   MAXPHYADDR ${c.maxPhyAddr}`,
  );
  out.push("");
  if (r.split !== null) {
    const s = r.split;
    out.push(
      `Linear address ${r.address} = l4 index ${s.l4}, l3 index ${s.l3}, l2 index ${s.l2}, ` +
        `l1 index ${s.l1}, offset ${formatHex(s.offset, 3)}`,
    );
    out.push("");
  }
  for (const access of report.accesses) {
    out.push(
      paint("bold", `Access ${access.ordinal} of ${report.accesses.length}: ${r.access}`),
    );
    formatAccess(out, access, report, paint);
    out.push("");
  }
  if (report.accesses.length > 1) {
    pushWrapped(out, "Counters, all accesses: ", formatCounters(report.counters), paint, "bold");
  }
  return out.join("\n").trimEnd() + "\n";
}

const CAUSE_WORDS = {
  "not-present": "not present",
  "reserved-bit": "reserved bit",
  "protection": "protection",
} as const;

function formatAccess(
  out: string[],
  access: AccessReport,
  report: ExplainReport,
  paint: Paint,
): void {
  const t = access.tlb;
  const label = "  TLB: ";
  if (t.outcome === "not-consulted") {
    out.push(label + "not consulted: the canonical check comes first");
  } else if (t.outcome === "hit") {
    const e = t.hitEntry;
    const walk = access.walk === null
      ? "no page walk"
      : "the entry's D flag is clear, so the write walks the tables to set it";
    pushWrapped(
      out,
      "  TLB: hit   ",
      (e === null ? "" : `${formatTlbEntry(e)}; `) + walk,
      paint,
      "green",
    );
  } else {
    pushWrapped(
      out,
      "  TLB: miss  ",
      `no entry for this page with PCID ${report.control.pcid}` +
        (access.ordinal > 1
          ? " (the access before faulted: a failed walk fills nothing, and delivering the " +
            "#PF drops any entry for the address)"
          : "") +
        ", so the MMU walks the tables from CR3",
      paint,
      "yellow",
    );
  }
  let walkWrote = false;
  for (const level of access.walk ?? []) {
    const head = `  l${level.level} ${`${level.table}[${level.index}]`.padEnd(10)}` +
      ` entry at ${level.entryAddress.padEnd(9)} = ${level.entry}  `;
    out.push(head + paint("cyan", level.flags));
    const parts: string[] = [];
    if (level.rightsAfter !== null) {
      parts.push(`rights so far: ${formatRights(level.rightsAfter)}`);
    }
    if (level.reservedBits.length > 0) {
      parts.push(paint("red", `reserved bits set: ${level.reservedBits.join(", ")}`));
    }
    if (level.next !== null) parts.push(`${level.isLeaf ? "page" : "next table"} at ${level.next}`);
    for (const change of level.adChanges) {
      walkWrote = true;
      parts.push(paint("yellow", `${change.flag} ${change.before} -> ${change.after}`));
    }
    if (level.rightsAfter === null) parts.push(paint("red", "the walk stops here"));
    out.push(`${" ".repeat(6)}${parts.join("; ")}`);
  }
  const result = access.result;
  if (result.outcome === "translated") {
    out.push(
      paint("green", `  Result: physical address ${result.physicalAddress}`) +
        ` (offset ${result.offset} in the ${result.pageSizeName} page at ${result.pageBase})`,
    );
    for (const note of result.notes) pushWrapped(out, "    note: ", note, paint, null);
    if (access.walk !== null && !walkWrote) {
      out.push("    A/D: already set, so the walk wrote nothing back");
    }
    if (t.filledEntry !== null) {
      pushWrapped(out, "  TLB: fill  ", formatTlbEntry(t.filledEntry), paint, null);
    }
  } else if (result.outcome === "page-fault") {
    out.push(paint(["red", "bold"], `  Result: #PF (page fault, vector ${result.vector})`));
    pushWrapped(out, "    error code  ", result.errorCodeText, paint, null);
    out.push(`    CR2         ${result.cr2} (the faulting linear address)`);
    const at = result.level === null
      ? "the TLB entry"
      : `l${result.level}e ${access.walk!.at(-1)!.table}[${access.walk!.at(-1)!.index}]`;
    pushWrapped(
      out,
      "    stopped at  ",
      `${at} (${CAUSE_WORDS[result.cause]}): ${result.reason}`,
      paint,
      null,
    );
    for (const rule of result.rules) {
      pushWrapped(out, `    ${`rule ${rule.rule}`.padEnd(12)}`, rule.explanation, paint, "red");
    }
    if (access.walk !== null) {
      out.push("    A/D         none set: the walker sets them only when the translation succeeds");
    }
  } else {
    out.push(paint(["red", "bold"], `  Result: #GP(${result.errorCode}) (general protection)`));
    pushWrapped(out, "    ", result.reason, paint, null);
  }
  pushWrapped(out, "  Counters: ", formatCounters(access.counters), paint, null);
}

function describeAccess(r: RequestReport): string {
  const what: Record<AccessName, string> = {
    read: "read",
    write: "write",
    fetch: "instruction fetch",
    "implicit-read": "implicit supervisor-mode read",
    "implicit-write": "implicit supervisor-mode write",
  };
  if (r.access === "implicit-read" || r.access === "implicit-write") {
    return `an ${what[r.access]} (CPL ${r.cpl})`;
  }
  const mode = r.isUserMode ? "user-mode" : "supervisor-mode";
  return `a ${mode} ${what[r.access]} (CPL ${r.cpl})`;
}

function formatRights(rights: RightsReport): string {
  return [
    rights.writable ? "writable" : "read-only",
    rights.user ? "user" : "supervisor",
    rights.executeDisable ? "XD" : "executable",
  ].join(", ");
}

function formatTlbEntry(e: TlbEntryReport): string {
  return `page ${e.page} -> ${e.pageBase} (${sizeName(e.pageSize)}, ` +
    `${e.isGlobal ? "global" : `PCID ${e.pcid}`}); cached rights: ${formatRights(e.rights)}` +
    `${e.pkey !== 0 ? `, key ${e.pkey}` : ""}, ${e.isDirty ? "dirty" : "clean"}`;
}

function formatCounters(counters: Record<string, number>): string {
  const moved = Object.entries(counters).filter(([, v]) => v !== 0);
  return moved.length === 0 ? "none moved" : moved.map(([k, v]) => `${k}=${v}`).join(", ");
}

function bit(value: boolean): string {
  return value ? "1" : "0";
}

function sizeName(bytes: number): string {
  if (bytes >= 2 ** 30) return `${bytes / 2 ** 30} GiB`;
  if (bytes >= 2 ** 20) return `${bytes / 2 ** 20} MiB`;
  return `${bytes / 2 ** 10} KiB`;
}

function formatEntry(lo: number, hi: number): string {
  return "0x" + (hi >>> 0).toString(16).padStart(8, "0") + (lo >>> 0).toString(16).padStart(8, "0");
}

function describeEntryFlags(lo: number, hi: number, level: number): string {
  if (lo === 0 && hi === 0) return "empty (not present)";
  if ((lo & PTE_PRESENT) === 0) {
    return `not present (other bits: ${describePteFlags(lo, hi, level)})`;
  }
  return describePteFlags(lo, hi, level);
}

/**
 * The example address space as text (`--list`).
 *
 * @example
 * ```ts
 * import { describeExampleAddressSpace, formatAddressSpace } from "./explain.ts";
 * import assert from "node:assert/strict";
 * assert.match(formatAddressSpace(describeExampleAddressSpace(), { color: false }), /kernel-text/);
 * ```
 */
export function formatAddressSpace(space: AddressSpaceReport, options: FormatOptions): string {
  const paint = painter(options.color);
  const out: string[] = [];
  out.push(paint("bold", "Named pages (use as --address NAME or NAME+OFFSET)"));
  for (const p of space.pages) {
    out.push(
      `  ${paint("cyan", p.name.padEnd(13))} ${p.address}  ${p.sizeName.padEnd(7)} -> ` +
        `${(p.physicalAddress ?? "none").padEnd(9)}  ${p.flags}`,
    );
    pushWrapped(out, " ".repeat(16), p.summary, paint, null);
  }
  out.push("");
  out.push(
    paint(
      "bold",
      `Page tables (${space.memoryBytes / 2 ** 20} MiB of machine memory; CR3 -> PML4 at ` +
        `${space.pml4Address})`,
    ),
  );
  for (const t of space.tables) {
    out.push(
      `  ${t.level} ${t.name.padEnd(4)} mfn ${t.mfn.padEnd(6)} at ${t.address.padEnd(9)} ` +
        `translates from ${t.covers}`,
    );
  }
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

/** What the command line asked for. */
export type ExplainCommand =
  | { command: "help" }
  | { command: "list"; json: boolean }
  | { command: "explain"; json: boolean; options: ExplainOptions };

const FLAGS = {
  address: { type: "string" },
  access: { type: "string" },
  cpl: { type: "string" },
  wp: { type: "boolean" },
  smep: { type: "boolean" },
  smap: { type: "boolean" },
  ac: { type: "boolean" },
  nxe: { type: "boolean" },
  pke: { type: "boolean" },
  pkru: { type: "string" },
  pcid: { type: "string" },
  maxphyaddr: { type: "string" },
  twice: { type: "boolean" },
  list: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * Parses the command line. Throws a RangeError that says what was wrong and what is
 * valid for an unknown option, a missing or malformed value, or a stray argument.
 *
 * @example
 * ```ts
 * import { parseExplainArgs } from "./explain.ts";
 * import assert from "node:assert/strict";
 * const parsed = parseExplainArgs(["--address", "user-data", "--access", "write", "--no-wp"]);
 * assert.deepEqual(parsed, {
 *   command: "explain",
 *   json: false,
 *   options: { address: "user-data", access: "write", wp: false },
 * });
 * assert.throws(() => parseExplainArgs(["--cpl", "4", "--address", "0"]), RangeError);
 * ```
 */
export function parseExplainArgs(args: readonly string[]): ExplainCommand {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: FLAGS,
      strict: true,
      allowPositionals: false,
      allowNegative: true,
    }));
  } catch (error) {
    if (error instanceof TypeError) {
      const valid = Object.keys(FLAGS).map((f) => `--${f}`).join(", ");
      throw new RangeError(`${error.message}. Valid options: ${valid}`);
    }
    throw error;
  }
  if (values.help) return { command: "help" };
  const json = values.json ?? false;
  if (values.list) return { command: "list", json };
  if (values.address === undefined) {
    throw new RangeError(
      "Missing --address: give a hex address (0x600010) or a named page (" +
        PAGES.map((p) => p.name).join(", ") + ")",
    );
  }
  const options: ExplainOptions = { address: values.address };
  if (values.access !== undefined) {
    if (!(ACCESS_NAMES as readonly string[]).includes(values.access)) {
      throw new RangeError(
        `Invalid --access "${values.access}": must be one of ${ACCESS_NAMES.join(", ")}`,
      );
    }
    options.access = values.access as AccessName;
  }
  if (values.cpl !== undefined) options.cpl = parseNumber("cpl", values.cpl, 0, 3);
  if (values.pkru !== undefined) options.pkru = parseNumber("pkru", values.pkru, 0, 0xffffffff);
  if (values.pcid !== undefined) options.pcid = parseNumber("pcid", values.pcid, 0, 0xfff);
  if (values.maxphyaddr !== undefined) {
    options.maxPhyAddr = parseNumber("maxphyaddr", values.maxphyaddr, 36, 52);
  }
  for (const flag of ["wp", "smep", "smap", "ac", "nxe", "pke", "twice"] as const) {
    const value = values[flag];
    if (value !== undefined) options[flag] = value;
  }
  // Check the address now, so a bad one is an argument error and not a failed run.
  resolveAddress(options.address);
  return { command: "explain", json, options };
}

function parseNumber(name: string, text: string, min: number, max: number): number {
  const value = parseBigInt(text);
  if (value === undefined || value < BigInt(min) || value > BigInt(max)) {
    const hint = {
      cpl: " (0 = kernel, 3 = user)",
      pkru: " (key k: AD = bit 2k, WD = bit 2k+1; 0x4 = AD1)",
      pcid: " (0..4095; it also sets CR4.PCIDE)",
      maxphyaddr: " (bits 51..MAXPHYADDR of an entry are reserved)",
    }[name] ?? "";
    throw new RangeError(
      `Invalid --${name} "${text}": must be a number ${formatRange(name, min, max)}${hint}`,
    );
  }
  return Number(value);
}

/**
 * The `--help` text, with the example address space listed.
 *
 * @example
 * ```ts
 * import { explainUsage } from "./explain.ts";
 * import assert from "node:assert/strict";
 * assert.match(explainUsage(), /--address <hex\|name>/);
 * ```
 */
export function explainUsage(): string {
  const pages = PAGES.map((p) => {
    const label = `  ${p.name.padEnd(13)} ${formatLinear(p.va)}  `;
    return wrapText(label, p.summary).map((line, i) =>
      (i === 0 ? label : " ".repeat(label.length)) + line
    ).join("\n");
  }).join("\n");
  return `Usage: deno task explain --address <hex|name> [options]
       deno run scenarios/explain.ts --address <hex|name> [options]

Explains what the x86 MMU does for one memory access in a small example address space:
the TLB lookup, each page-table entry read (l4 = PML4, l3 = PDPT, l2 = PD, l1 = PT), the
combined rights after each level, the Accessed/Dirty flags set, and the result: a
physical address, a #PF with its error code decoded, or #GP(0) for a non-canonical address.

Options:
  --address <hex|name>   linear address: hex (0x600010), decimal, a named page (user-data)
                         or a name plus an offset (user-data+0x10); required unless --list
  --access <kind>        read | write | fetch | implicit-read | implicit-write (default read)
  --cpl <0..3>           current privilege level (default 3 = user mode)
  --wp, --no-wp          CR0.WP: supervisor writes honour R/W (default on)
  --smep                 CR4.SMEP: no supervisor-mode fetches from user pages
  --smap                 CR4.SMAP: no supervisor-mode data accesses to user pages
  --ac                   RFLAGS.AC=1: explicit supervisor accesses pass SMAP (as after STAC)
  --nxe, --no-nxe        EFER.NXE: XD (bit 63) forbids fetches (default on; off: XD is reserved)
  --pke                  CR4.PKE: protection keys guard data accesses to user pages
  --pkru <hex>           PKRU (default 0); key k: AD = bit 2k, WD = bit 2k+1 (0x4 = AD1)
  --pcid <0..4095>       set CR4.PCIDE=1 and tag TLB entries with this PCID
  --maxphyaddr <36..52>  physical-address width (default 46); bits 51..it are reserved
  --twice                do the access twice: the second one can hit the TLB
  --list                 print the named pages and the page tables, then exit
  --json                 print the report as JSON (with --list: the address space)
  --help                 print this help

Example address space (64 MiB of machine memory, PML4 at 0x100000; all A/D flags clear):
${pages}
Any other address works too; 0x0000800000000000 is not canonical (#GP).

Examples:
  deno task explain --address user-code --access write
  deno task explain --address kernel-text --access write --cpl 0 --no-wp
  deno task explain --address user-data --cpl 0 --smap
  deno task explain --address user-pkey --pke --pkru 0x4
  deno task explain --address user-data --access write --twice

Exit status: 0 when the access was explained (a fault is a valid answer), 2 for bad
arguments.
`;
}

/** Runs the command line; returns the exit code. */
function main(args: readonly string[]): number {
  let command: ExplainCommand;
  try {
    command = parseExplainArgs(args);
  } catch (error) {
    if (error instanceof RangeError) {
      console.error(`explain: ${error.message}`);
      console.error("Run with --help for every option and the named pages.");
      return 2;
    }
    throw error;
  }
  const color = Deno.stdout.isTerminal() && !Deno.noColor;
  if (command.command === "help") {
    console.log(explainUsage());
  } else if (command.command === "list") {
    const space = describeExampleAddressSpace();
    console.log(
      command.json ? JSON.stringify(space, null, 2) : formatAddressSpace(space, { color }),
    );
  } else {
    const report = run(command.options);
    console.log(
      command.json
        ? JSON.stringify(report, null, 2)
        : formatExplainReport(report, { color }).trimEnd(),
    );
  }
  return 0;
}

if (import.meta.main) {
  Deno.exitCode = main(Deno.args);
}
