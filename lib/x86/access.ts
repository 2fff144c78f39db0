/**
 * Kinds of memory access, as paging distinguishes them (SDM Vol. 3A 4.6): data read,
 * data write, instruction fetch, each by the current privilege level, plus implicit
 * supervisor-mode reads and writes (descriptor tables, the TSS, shadow stacks), which are
 * supervisor accesses whatever the CPL.
 *
 * @module
 */

/** An access kind: one of the `ACCESS_*` constants. */
export type AccessKind = 0 | 1 | 2 | 3 | 4;

/** Data read at the current privilege level. */
export const ACCESS_READ: AccessKind = 0;
/** Data write at the current privilege level. */
export const ACCESS_WRITE: AccessKind = 1;
/** Instruction fetch at the current privilege level. */
export const ACCESS_FETCH: AccessKind = 2;
/** Implicit supervisor-mode data read (e.g. of the GDT, IDT or TSS), at any CPL. */
export const ACCESS_IMPLICIT_READ: AccessKind = 3;
/** Implicit supervisor-mode data write, at any CPL. */
export const ACCESS_IMPLICIT_WRITE: AccessKind = 4;
/** Number of access kinds. */
export const ACCESS_KINDS = 5;

/** Whether the access writes. */
export function isWrite(kind: AccessKind): boolean {
  return kind === ACCESS_WRITE || kind === ACCESS_IMPLICIT_WRITE;
}

/** Whether the access is an instruction fetch. */
export function isFetch(kind: AccessKind): boolean {
  return kind === ACCESS_FETCH;
}

/** Whether the access is an implicit supervisor-mode access. */
export function isImplicit(kind: AccessKind): boolean {
  return kind === ACCESS_IMPLICIT_READ || kind === ACCESS_IMPLICIT_WRITE;
}

/** A short name for an access kind: `read`, `write`, `fetch`, `implicit-read`, `implicit-write`. */
export function accessKindName(kind: AccessKind): string {
  return ["read", "write", "fetch", "implicit-read", "implicit-write"][kind]!;
}

/** The access kind for a name as {@link accessKindName} prints it, or undefined. */
export function parseAccessKind(name: string): AccessKind | undefined {
  const i = ["read", "write", "fetch", "implicit-read", "implicit-write"].indexOf(name);
  return i < 0 ? undefined : i as AccessKind;
}
