/**
 * PagingControl's permission table against a small reference model of SDM Vol. 3A 4.6
 * (access rights and protection keys) and 4.7 (error code), enumerated over every
 * combination as kvm-unit-tests' x86/access.c does.
 */

import assert from "node:assert/strict";
import {
  ACCESS_FETCH,
  ACCESS_IMPLICIT_READ,
  ACCESS_IMPLICIT_WRITE,
  ACCESS_READ,
  ACCESS_WRITE,
  type AccessKind,
  accessKindName,
} from "../../lib/x86/access.ts";
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_PKE,
  CR4_SMAP,
  CR4_SMEP,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  PagingControl,
  PFEC_FETCH,
  PFEC_PK,
  PFEC_PRESENT,
  PFEC_RSVD,
  PFEC_USER,
  PFEC_WRITE,
  RFLAGS_AC,
  RIGHTS_USER,
  RIGHTS_WRITABLE,
  RIGHTS_XD,
} from "../../lib/x86/paging_control.ts";

/** One point of the enumeration. */
interface Combination {
  cpl: number;
  kind: AccessKind;
  /** Combined rights: RIGHTS_WRITABLE | RIGHTS_USER | RIGHTS_XD. */
  rights: number;
  wp: boolean;
  smep: boolean;
  smap: boolean;
  ac: boolean;
  nxe: boolean;
  pke: boolean;
  pkru: number;
  pkey: number;
}

const KINDS: readonly AccessKind[] = [
  ACCESS_READ,
  ACCESS_WRITE,
  ACCESS_FETCH,
  ACCESS_IMPLICIT_READ,
  ACCESS_IMPLICIT_WRITE,
];

/** PKRU values: none, all AD, all WD, all both, key 5 only, and a mixed pattern. */
const PKRUS = [0, 0x55555555, 0xaaaaaaaa, 0xffffffff, 0x00000c00, 0x9c3a61e4];

/**
 * The #PF error code the SDM gives for an access, or 0 when it is allowed. Written from
 * the text of 4.6.1, 4.6.2 and 4.7, one rule per line, without looking at the library.
 */
function referenceErrorCode(c: Combination): number {
  const write = c.kind === ACCESS_WRITE || c.kind === ACCESS_IMPLICIT_WRITE;
  const fetch = c.kind === ACCESS_FETCH;
  const implicit = c.kind === ACCESS_IMPLICIT_READ || c.kind === ACCESS_IMPLICIT_WRITE;
  // 4.6: accesses at CPL 3 are user-mode accesses, except implicit supervisor-mode ones.
  const userMode = c.cpl === 3 && !implicit;
  // 4.6: a user-mode address has U/S=1 in every paging-structure entry.
  const userAddress = (c.rights & RIGHTS_USER) !== 0;
  // R/W=1 in every entry.
  const writable = (c.rights & RIGHTS_WRITABLE) !== 0;
  // 4.6.1: with NXE=1, XD=1 in any entry disallows fetches.
  const executeDisabled = c.nxe && (c.rights & RIGHTS_XD) !== 0;

  let allowed: boolean;
  if (userMode) {
    if (!userAddress) allowed = false; // user-mode accesses to supervisor addresses: never
    else if (fetch) allowed = !executeDisabled;
    else if (write) allowed = writable; // CR0.WP does not matter for user-mode writes
    else allowed = true;
  } else if (fetch) {
    // Supervisor fetches: from user-mode addresses only if SMEP=0; XD applies to both.
    allowed = !executeDisabled && !(userAddress && c.smep);
  } else {
    // Supervisor data accesses. SMAP: no access to a user-mode address when AC=0 or the
    // access is implicit.
    if (userAddress && c.smap && (!c.ac || implicit)) allowed = false;
    else if (write) allowed = !c.wp || writable; // WP=0: any address is writable
    else allowed = true;
  }

  // 4.6.2: keys guard data accesses to user-mode addresses when CR4.PKE=1 (IA-32e).
  let keyViolation = false;
  if (c.pke && userAddress && !fetch) {
    const accessDisable = (c.pkru >>> (2 * c.pkey) & 1) === 1;
    const writeDisable = (c.pkru >>> (2 * c.pkey + 1) & 1) === 1;
    if (accessDisable) keyViolation = true;
    else if (writeDisable && write && (userMode || c.wp)) keyViolation = true;
  }

  if (allowed && !keyViolation) return 0;
  // 4.7: P=1 (a protection violation), W/R, U/S, I/D only when SMEP=1 or NXE=1, PK.
  let code = PFEC_PRESENT;
  if (write) code |= PFEC_WRITE;
  if (userMode) code |= PFEC_USER;
  if (fetch && (c.smep || c.nxe)) code |= PFEC_FETCH;
  if (keyViolation) code |= PFEC_PK;
  return code;
}

/** The register values a combination stands for. */
function registers(c: Combination) {
  return {
    cr0: CR0_PE | CR0_PG | (c.wp ? CR0_WP : 0),
    cr4: CR4_PAE | CR4_PGE | (c.smep ? CR4_SMEP : 0) | (c.smap ? CR4_SMAP : 0) |
      (c.pke ? CR4_PKE : 0),
    efer: EFER_LME | EFER_LMA | (c.nxe ? EFER_NXE : 0),
    rflags: 0x2 | (c.ac ? RFLAGS_AC : 0),
    cpl: c.cpl,
    pkru: c.pkru,
  };
}

function describe(c: Combination, actual: number, expected: number): string {
  const on = (name: string, value: boolean) => `${name}=${value ? 1 : 0}`;
  const rights = `${c.rights & RIGHTS_WRITABLE ? "RW" : "RO"}|${
    c.rights & RIGHTS_USER ? "U" : "S"
  }${c.rights & RIGHTS_XD ? "|XD" : ""}`;
  return `cpl=${c.cpl} ${accessKindName(c.kind)} rights=${rights} ` +
    [
      on("WP", c.wp),
      on("SMEP", c.smep),
      on("SMAP", c.smap),
      on("AC", c.ac),
      on("NXE", c.nxe),
      on("PKE", c.pke),
    ].join(" ") +
    ` PKRU=0x${c.pkru.toString(16)} pkey=${c.pkey}: ` +
    `got 0x${actual.toString(16)}, want 0x${expected.toString(16)}`;
}

/** Calls `visit` once per control-register setting, with the combinations it covers. */
function forEachControl(visit: (base: Combination) => void): void {
  for (const cpl of [0, 3]) {
    for (let flags = 0; flags < 64; flags++) {
      for (const pkru of PKRUS) {
        visit({
          cpl,
          kind: ACCESS_READ,
          rights: 0,
          wp: (flags & 1) !== 0,
          smep: (flags & 2) !== 0,
          smap: (flags & 4) !== 0,
          ac: (flags & 8) !== 0,
          nxe: (flags & 16) !== 0,
          pke: (flags & 32) !== 0,
          pkru,
          pkey: 0,
        });
      }
    }
  }
}

/** Compares every kind x rights x pkey under `ctl`; returns the mismatches. */
function compareAll(ctl: PagingControl, base: Combination, failures: string[]): number {
  let checked = 0;
  for (const kind of KINDS) {
    for (let rights = 0; rights < 8; rights++) {
      for (let pkey = 0; pkey < 16; pkey++) {
        const c = { ...base, kind, rights, pkey };
        const expected = referenceErrorCode(c);
        const actual = ctl.protectionFault(kind, pkey, rights);
        if (actual !== expected && failures.length < 20) {
          failures.push(describe(c, actual, expected));
        }
        checked++;
      }
    }
  }
  return checked;
}

Deno.test("protectionFault() matches SDM 4.6-4.7 for every combination (fresh control)", () => {
  const failures: string[] = [];
  let checked = 0;
  forEachControl((base) => {
    checked += compareAll(new PagingControl(registers(base)), base, failures);
  });
  assert.equal(checked, 2 * 64 * PKRUS.length * 5 * 8 * 16);
  assert.deepEqual(failures, [], failures.join("\n"));
});

Deno.test("protectionFault() matches SDM 4.6-4.7 for every combination (registers set in turn)", () => {
  // One long-lived control whose registers change one at a time, so a setter that forgets
  // to rebuild the table shows up as a stale entry.
  const ctl = new PagingControl();
  const failures: string[] = [];
  forEachControl((base) => {
    const r = registers(base);
    ctl.rflags = r.rflags;
    ctl.pkru = r.pkru;
    ctl.cpl = r.cpl;
    ctl.efer = r.efer;
    ctl.cr4 = r.cr4;
    ctl.cr0 = r.cr0;
    compareAll(ctl, base, failures);
  });
  assert.deepEqual(failures, [], failures.join("\n"));
});

Deno.test("protectionFault() tracks each register setter on its own", () => {
  const ctl = new PagingControl({ cpl: 0, cr4: CR4_PAE | CR4_SMAP });
  const userRead = RIGHTS_USER | RIGHTS_WRITABLE;
  assert.equal(ctl.protectionFault(ACCESS_READ, 0, userRead), PFEC_PRESENT);
  ctl.rflags = 0x2 | RFLAGS_AC;
  assert.equal(ctl.protectionFault(ACCESS_READ, 0, userRead), 0);
  ctl.rflags = 0x2 | RFLAGS_AC | 0x1; // a change of another flag keeps AC
  assert.equal(ctl.protectionFault(ACCESS_READ, 0, userRead), 0);
  ctl.rflags = 0x2;
  assert.equal(ctl.protectionFault(ACCESS_READ, 0, userRead), PFEC_PRESENT);
  ctl.cr4 = CR4_PAE | CR4_PKE;
  assert.equal(ctl.protectionFault(ACCESS_READ, 3, userRead), 0);
  ctl.pkru = 1 << 6; // AD for key 3
  assert.equal(ctl.protectionFault(ACCESS_READ, 3, userRead), PFEC_PRESENT | PFEC_PK);
  ctl.cpl = 3;
  assert.equal(ctl.protectionFault(ACCESS_READ, 3, userRead), PFEC_PRESENT | PFEC_USER | PFEC_PK);
  ctl.efer = EFER_LME | EFER_LMA;
  assert.equal(ctl.protectionFault(ACCESS_FETCH, 0, RIGHTS_USER | RIGHTS_XD), 0);
  ctl.efer = EFER_LME | EFER_LMA | EFER_NXE;
  assert.equal(
    ctl.protectionFault(ACCESS_FETCH, 0, RIGHTS_USER | RIGHTS_XD),
    PFEC_PRESENT | PFEC_USER | PFEC_FETCH,
  );
});

/** A hand-written row: the SDM's wording, the state, and the error code it gives. */
interface Row {
  says: string;
  cpl: number;
  kind: AccessKind;
  rights: number;
  cr0?: number;
  cr4?: number;
  efer?: number;
  rflags?: number;
  pkru?: number;
  pkey?: number;
  want: number;
}

const WP_ON = CR0_PE | CR0_PG | CR0_WP;
const WP_OFF = CR0_PE | CR0_PG;
const NXE_ON = EFER_LME | EFER_LMA | EFER_NXE;
const NXE_OFF = EFER_LME | EFER_LMA;
const RO = 0;
const RW = RIGHTS_WRITABLE;
const U = RIGHTS_USER;
const XD = RIGHTS_XD;

const ROWS: readonly Row[] = [
  {
    says: "supervisor write to a read-only user page with WP=0 and SMAP=0 is allowed",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RO | U,
    cr0: WP_OFF,
    want: 0,
  },
  {
    says: "supervisor write to a read-only supervisor page with WP=1 is not allowed",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RO,
    cr0: WP_ON,
    want: PFEC_PRESENT | PFEC_WRITE,
  },
  {
    says: "user-mode data may be read from user-mode addresses only",
    cpl: 3,
    kind: ACCESS_READ,
    rights: RW,
    want: PFEC_PRESENT | PFEC_USER,
  },
  {
    says: "user-mode writes to a read-only user page fault whatever CR0.WP is",
    cpl: 3,
    kind: ACCESS_WRITE,
    rights: RO | U,
    cr0: WP_OFF,
    want: PFEC_PRESENT | PFEC_WRITE | PFEC_USER,
  },
  {
    says: "with SMEP=1, instructions may not be fetched from any user-mode address",
    cpl: 0,
    kind: ACCESS_FETCH,
    rights: RW | U,
    cr4: CR4_PAE | CR4_SMEP,
    efer: NXE_OFF,
    want: PFEC_PRESENT | PFEC_FETCH,
  },
  {
    says: "with SMEP=0 and NXE=0, a supervisor fetch from a user page is allowed",
    cpl: 0,
    kind: ACCESS_FETCH,
    rights: RW | U,
    cr4: CR4_PAE,
    efer: NXE_OFF,
    want: 0,
  },
  {
    says: "with NXE=1, no fetch from a page with XD=1, and I/D is reported",
    cpl: 0,
    kind: ACCESS_FETCH,
    rights: RW | XD,
    efer: NXE_ON,
    want: PFEC_PRESENT | PFEC_FETCH,
  },
  {
    says: "with NXE=0, XD has no effect on rights",
    cpl: 3,
    kind: ACCESS_FETCH,
    rights: U | XD,
    efer: NXE_OFF,
    want: 0,
  },
  {
    says: "with SMAP=1 and AC=0, supervisor data may not be read from user-mode addresses",
    cpl: 0,
    kind: ACCESS_READ,
    rights: RW | U,
    cr4: CR4_PAE | CR4_SMAP,
    want: PFEC_PRESENT,
  },
  {
    says: "with SMAP=1 and AC=1, an explicit supervisor read of a user page is allowed",
    cpl: 0,
    kind: ACCESS_READ,
    rights: RW | U,
    cr4: CR4_PAE | CR4_SMAP,
    rflags: 0x2 | RFLAGS_AC,
    want: 0,
  },
  {
    says: "with SMAP=1, an implicit supervisor read of a user page faults even with AC=1",
    cpl: 3,
    kind: ACCESS_IMPLICIT_READ,
    rights: RW | U,
    cr4: CR4_PAE | CR4_SMAP,
    rflags: 0x2 | RFLAGS_AC,
    want: PFEC_PRESENT,
  },
  {
    says: "an implicit supervisor access at CPL 3 reports U/S=0",
    cpl: 3,
    kind: ACCESS_IMPLICIT_WRITE,
    rights: RO,
    cr0: WP_ON,
    want: PFEC_PRESENT | PFEC_WRITE,
  },
  {
    says: "an implicit supervisor write at CPL 3 to a supervisor page is allowed when writable",
    cpl: 3,
    kind: ACCESS_IMPLICIT_WRITE,
    rights: RW,
    want: 0,
  },
  {
    says: "with SMAP=1, AC=1 and WP=1, a supervisor write to a read-only user page faults",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RO | U,
    cr4: CR4_PAE | CR4_SMAP,
    rflags: 0x2 | RFLAGS_AC,
    want: PFEC_PRESENT | PFEC_WRITE,
  },
  {
    says: "if ADi=1, no data accesses are permitted to user addresses with key i",
    cpl: 3,
    kind: ACCESS_READ,
    rights: RW | U,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 1 << 10,
    pkey: 5,
    want: PFEC_PRESENT | PFEC_USER | PFEC_PK,
  },
  {
    says: "protection keys do not apply to instruction fetches",
    cpl: 3,
    kind: ACCESS_FETCH,
    rights: RW | U,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 0xffffffff,
    pkey: 5,
    want: 0,
  },
  {
    says: "protection keys do not apply to supervisor-mode addresses",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RW,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 0xffffffff,
    pkey: 5,
    want: 0,
  },
  {
    says: "if WDi=1, supervisor writes to user addresses with key i fault only when WP=1",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RW | U,
    cr0: WP_ON,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 1 << 11,
    pkey: 5,
    want: PFEC_PRESENT | PFEC_WRITE | PFEC_PK,
  },
  {
    says: "if WDi=1 and WP=0, supervisor writes to user addresses with key i are allowed",
    cpl: 0,
    kind: ACCESS_WRITE,
    rights: RW | U,
    cr0: WP_OFF,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 1 << 11,
    pkey: 5,
    want: 0,
  },
  {
    says: "if WDi=1, user-mode writes fault whatever WP is, and reads are allowed",
    cpl: 3,
    kind: ACCESS_WRITE,
    rights: RW | U,
    cr0: WP_OFF,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 1 << 11,
    pkey: 5,
    want: PFEC_PRESENT | PFEC_WRITE | PFEC_USER | PFEC_PK,
  },
  {
    says: "PK is set alongside a rights violation when the key also denies the access",
    cpl: 3,
    kind: ACCESS_WRITE,
    rights: RO | U,
    cr4: CR4_PAE | CR4_PKE,
    pkru: 1 << 11,
    pkey: 5,
    want: PFEC_PRESENT | PFEC_WRITE | PFEC_USER | PFEC_PK,
  },
  {
    says: "with PKE=0 the key is ignored",
    cpl: 3,
    kind: ACCESS_READ,
    rights: RW | U,
    cr4: CR4_PAE,
    pkru: 0xffffffff,
    pkey: 5,
    want: 0,
  },
];

for (const row of ROWS) {
  Deno.test(`protectionFault(): ${row.says}`, () => {
    const init = {
      cpl: row.cpl,
      cr0: row.cr0 ?? WP_ON,
      cr4: row.cr4 ?? CR4_PAE,
      efer: row.efer ?? NXE_ON,
      rflags: row.rflags ?? 0x2,
      pkru: row.pkru ?? 0,
    };
    const ctl = new PagingControl(init);
    const pkey = row.pkey ?? 0;
    assert.equal(ctl.protectionFault(row.kind, pkey, row.rights), row.want);
    // The reference model agrees with the hand-written row.
    const c: Combination = {
      cpl: row.cpl,
      kind: row.kind,
      rights: row.rights,
      wp: (init.cr0 & CR0_WP) !== 0,
      smep: (init.cr4 & CR4_SMEP) !== 0,
      smap: (init.cr4 & CR4_SMAP) !== 0,
      ac: (init.rflags & RFLAGS_AC) !== 0,
      nxe: (init.efer & EFER_NXE) !== 0,
      pke: (init.cr4 & CR4_PKE) !== 0,
      pkru: init.pkru,
      pkey,
    };
    assert.equal(referenceErrorCode(c), row.want, "reference model");
  });
}

Deno.test("protectionFault() never reports RSVD", () => {
  forEachControl((base) => {
    const ctl = new PagingControl(registers(base));
    for (const code of ctl.permissions) assert.equal(code & PFEC_RSVD, 0);
  });
});

Deno.test("accessErrorBits() sets I/D for fetches only when SMEP=1 or NXE=1", () => {
  for (const smep of [false, true]) {
    for (const nxe of [false, true]) {
      const ctl = new PagingControl({
        cpl: 3,
        cr4: CR4_PAE | (smep ? CR4_SMEP : 0),
        efer: EFER_LME | EFER_LMA | (nxe ? EFER_NXE : 0),
      });
      const id = smep || nxe ? PFEC_FETCH : 0;
      assert.equal(ctl.accessErrorBits(ACCESS_FETCH), PFEC_USER | id, `SMEP=${smep} NXE=${nxe}`);
      assert.equal(ctl.accessErrorBits(ACCESS_READ), PFEC_USER);
      assert.equal(ctl.accessErrorBits(ACCESS_WRITE), PFEC_USER | PFEC_WRITE);
      assert.equal(ctl.accessErrorBits(ACCESS_IMPLICIT_READ), 0);
      assert.equal(ctl.accessErrorBits(ACCESS_IMPLICIT_WRITE), PFEC_WRITE);
    }
  }
});

Deno.test("isUserAccess() is CPL 3 and not implicit", () => {
  for (const cpl of [0, 1, 2, 3]) {
    const ctl = new PagingControl({ cpl });
    for (const kind of KINDS) {
      const implicit = kind === ACCESS_IMPLICIT_READ || kind === ACCESS_IMPLICIT_WRITE;
      assert.equal(ctl.isUserAccess(kind), cpl === 3 && !implicit, `cpl ${cpl} ${kind}`);
    }
  }
});

Deno.test("PagingControl derives paging, PCID and the CR3 table address", () => {
  const ctl = new PagingControl({ cr3: 0x12_3456_7000 + 0x5a5, cr4: CR4_PAE | CR4_PCIDE });
  assert.equal(ctl.isPaging, true);
  assert.equal(ctl.pcid, 0x5a5);
  assert.equal(ctl.cr3TableAddress, 0x12_3456_7000);
  ctl.cr4 = CR4_PAE;
  assert.equal(ctl.pcid, 0, "PCIDE=0: CR3 bits 11..0 are PWT/PCD, not a PCID");
  ctl.cr4 = CR4_PAE | CR4_PCIDE;
  ctl.cr3 = 0x5000 | 0x7;
  assert.equal(ctl.pcid, 7);
  assert.equal(ctl.cr3TableAddress, 0x5000);
  ctl.cr0 = CR0_PE;
  assert.equal(ctl.isPaging, false);
  ctl.cr0 = CR0_PE | CR0_PG;
  assert.equal(ctl.isPaging, true);
});

Deno.test("PagingControl throws a RangeError for MAXPHYADDR or CPL out of range", () => {
  assert.throws(() => new PagingControl({ maxPhyAddr: 35 }), RangeError);
  assert.throws(() => new PagingControl({ maxPhyAddr: 53 }), RangeError);
  assert.throws(() => new PagingControl({ maxPhyAddr: 40.5 }), RangeError);
  assert.throws(() => new PagingControl({ cpl: 4 }), RangeError);
  assert.throws(() => new PagingControl({ cpl: -1 }), RangeError);
  const ctl = new PagingControl();
  assert.throws(() => {
    ctl.cpl = 1.5;
  }, RangeError);
  for (const maxPhyAddr of [36, 39, 46, 52]) {
    assert.equal(new PagingControl({ maxPhyAddr }).maxPhyAddr, maxPhyAddr);
  }
});

Deno.test("PagingControl: a CPL change selects a table equal to one built at that CPL", () => {
  const init = { cr4: CR4_PAE | CR4_PGE | CR4_SMEP | CR4_SMAP | CR4_PKE, pkru: 0x1c };
  for (const [from, to] of [[0, 3], [3, 0], [1, 3], [3, 2]]) {
    const ctl = new PagingControl({ ...init, cpl: from });
    ctl.cpl = to!;
    assert.deepEqual(ctl.permissions, new PagingControl({ ...init, cpl: to }).permissions);
  }
});
