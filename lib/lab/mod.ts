/**
 * The lab: a guest kernel booted on a platform, the scenario API, scenario definitions and
 * runs, the comparison of platforms, its reports, and the cost model.
 *
 * @module
 */

export * from "./compare.ts";
export * from "./cost_model.ts";
export * from "./lab.ts";
export * from "./report_html.ts";
export * from "./scenario.ts";
