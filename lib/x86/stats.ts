/**
 * The counter registry and the per-run {@link Stats}.
 *
 * Every counter is declared once, with a description and a unit, by the layer that
 * increments it (Xen's perfc_defn.h and gem5's ADD_STAT do the same). A declaration
 * returns a small integer; the hot path increments `stats.counts[index]`, a plain
 * typed-array slot, so counting costs one add and no lookup. Reports iterate the
 * registry ({@link counterDefinitions}), never a second list of names.
 *
 * The registry lives in the hardware layer because it is the bottom of the import
 * graph: every layer above may declare counters here.
 *
 * @module
 */

/** One declared counter: its dotted name, what it counts and in what unit. */
export interface CounterDefinition {
  /** Dotted name by layer, e.g. `tlb.miss`, `walk.refs`, `exit.pf`. */
  readonly name: string;
  /** One sentence saying what is counted. */
  readonly description: string;
  /** Unit of the count: `events`, `references`, `bytes`, ... */
  readonly unit: string;
  /**
   * "count" (only grows; a phase reports its increase) or "gauge" (a level that goes up
   * and down, like shadow pages in use; a phase reports its value at the end).
   */
  readonly kind: "count" | "gauge";
  /** Slot in {@link Stats.counts}. */
  readonly index: number;
}

/** Upper bound on declared counters; a Stats made early still has room for late ones. */
export const MAX_COUNTERS = 512;

const definitions: CounterDefinition[] = [];
const byName = new Map<string, CounterDefinition>();

/**
 * Declares a counter once and returns its slot index.
 *
 * Declaring the same name again with the same description and unit returns the same
 * index (modules may be loaded through several paths); a clash throws.
 *
 * @example Declare and count
 * ```ts
 * import { declareCounter, Stats } from "./stats.ts";
 * import assert from "node:assert/strict";
 * const DEMO = declareCounter("demo.example", "events the example makes", "events");
 * const stats = new Stats();
 * stats.counts[DEMO]++;
 * assert.equal(stats.get("demo.example"), 1);
 * ```
 */
export function declareCounter(
  name: string,
  description: string,
  unit = "events",
  kind: "count" | "gauge" = "count",
): number {
  const known = byName.get(name);
  if (known !== undefined) {
    if (known.description !== description || known.unit !== unit || known.kind !== kind) {
      throw new TypeError(`Cannot declare counter "${name}": declared before with another meaning`);
    }
    return known.index;
  }
  if (!/^[a-z][a-zA-Z0-9_]*(\.[a-zA-Z0-9_]+)+$/.test(name)) {
    throw new TypeError(`Cannot declare counter "${name}": name must be dotted, like "tlb.miss"`);
  }
  if (definitions.length >= MAX_COUNTERS) {
    throw new RangeError(`Cannot declare counter "${name}": registry full (${MAX_COUNTERS})`);
  }
  const definition = Object.freeze({ name, description, unit, kind, index: definitions.length });
  definitions.push(definition);
  byName.set(name, definition);
  return definition.index;
}

/** All counters declared so far, in declaration order. */
export function counterDefinitions(): readonly CounterDefinition[] {
  return definitions;
}

/** Looks up a counter by name; undefined when no layer declared it. */
export function findCounter(name: string): CounterDefinition | undefined {
  return byName.get(name);
}

/**
 * Receives a traced event: its name (a counter name, e.g. `exit.pf`), an address (a
 * linear address, GPA or frame, as the event says) and a detail (an error code, a reason).
 */
export type TraceSink = (event: string, address: number, detail: number | string) => void;

/** A frozen copy of every declared counter's value, keyed by name. */
export type StatsSnapshot = Readonly<Record<string, number>>;

/**
 * The counters of one run. Components that count hold a reference to the same Stats.
 *
 * @example Per-phase deltas
 * ```ts
 * import { declareCounter, Stats } from "./stats.ts";
 * import assert from "node:assert/strict";
 * const HIT = declareCounter("demo.hit", "example hits", "events");
 * const stats = new Stats();
 * stats.counts[HIT] += 3;
 * const before = stats.snapshot();
 * stats.counts[HIT] += 2;
 * assert.equal(Stats.diff(before, stats.snapshot())["demo.hit"], 2);
 * ```
 */
export class Stats {
  /** Raw counts by slot index; increment `counts[INDEX]` on hot paths. */
  readonly counts: Float64Array = new Float64Array(MAX_COUNTERS);
  /**
   * Where events go when a run is traced (`--trace`), or null. Layers call it at their
   * decisions (an exit, a hidden or genuine fault, an emulation, a resync, a hypercall)
   * with the event's name, an address and a detail; never on the access hot path.
   */
  trace: TraceSink | null = null;

  /** The value of a counter by name; throws a RangeError for an undeclared name. */
  get(name: string): number {
    const definition = byName.get(name);
    if (definition === undefined) {
      throw new RangeError(`Cannot read counter "${name}": no such counter`);
    }
    return this.counts[definition.index]!;
  }

  /** Sets every counter to zero. */
  reset(): void {
    this.counts.fill(0);
  }

  /** Every declared counter's current value, keyed by name, frozen. */
  snapshot(): StatsSnapshot {
    const out: Record<string, number> = {};
    for (const d of definitions) out[d.name] = this.counts[d.index]!;
    return Object.freeze(out);
  }

  /** The counters that are not zero, keyed by name, in declaration order. */
  nonZero(): StatsSnapshot {
    const out: Record<string, number> = {};
    for (const d of definitions) {
      const v = this.counts[d.index]!;
      if (v !== 0) out[d.name] = v;
    }
    return Object.freeze(out);
  }

  /**
   * `after - before` for every counter in either snapshot; a gauge gives its value in
   * `after` (a level, not an increase).
   */
  static diff(before: StatsSnapshot, after: StatsSnapshot): StatsSnapshot {
    const out: Record<string, number> = {};
    for (const name of Object.keys(after)) {
      out[name] = byName.get(name)?.kind === "gauge"
        ? after[name]!
        : after[name]! - (before[name] ?? 0);
    }
    return Object.freeze(out);
  }
}
