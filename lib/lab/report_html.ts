/**
 * The comparison as a self-contained HTML page, readable offline: per scenario, a bar
 * chart (inline SVG) of the estimated overhead against native per platform, a grouped bar
 * chart of where the cost comes from (VM exits, hidden and genuine faults, emulated
 * page-table writes, hypercalls), and the full table.
 *
 * The SVG is written by hand: two bar charts do not need a charting library, and the page
 * stays a single file with no script.
 *
 * @module
 */

import { type ComparedScenario, type ComparisonResult, tableOf } from "./compare.ts";

const PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"];

/** Escapes text for HTML and SVG. */
function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

/**
 * A horizontal bar chart: one bar per label, its value printed at its end.
 *
 * @example
 * ```ts
 * import { barChartSvg } from "./report_html.ts";
 * import assert from "node:assert/strict";
 * const svg = barChartSvg("overhead", [["native", 1], ["hvm-shadow", 12.5]], (v) => `${v}x`);
 * assert.equal(svg.match(/<rect class="bar"/g)?.length, 2);
 * ```
 */
export function barChartSvg(
  title: string,
  bars: readonly (readonly [string, number])[],
  label: (value: number) => string,
): string {
  const rowHeight = 26;
  const left = 140;
  const width = 560;
  const plot = width - left - 90;
  const height = 34 + bars.length * rowHeight;
  const max = Math.max(1e-9, ...bars.map(([, v]) => (Number.isFinite(v) ? v : 0)));
  const rows = bars.map(([name, value], i) => {
    const y = 28 + i * rowHeight;
    const w = Number.isFinite(value) ? Math.max(1, (value / max) * plot) : 0;
    return `<text x="${left - 8}" y="${y + 15}" text-anchor="end">${escape(name)}</text>` +
      `<rect class="bar" x="${left}" y="${y}" width="${w.toFixed(1)}" height="${
        rowHeight - 8
      }" fill="${PALETTE[i % PALETTE.length]}"><title>${
        escape(`${name}: ${label(value)}`)
      }</title></rect>` +
      `<text x="${(left + w + 6).toFixed(1)}" y="${y + 15}">${escape(label(value))}</text>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" role="img" aria-label="${escape(title)}">` +
    `<text x="0" y="16" font-weight="bold">${escape(title)}</text>${rows.join("")}</svg>`;
}

/**
 * A grouped bar chart: for each series (a counter) one bar per group (a platform).
 *
 * @example
 * ```ts
 * import { groupedBarChartSvg } from "./report_html.ts";
 * import assert from "node:assert/strict";
 * const svg = groupedBarChartSvg("events", ["native", "pv"], [["exits", [0, 3]], ["faults", [5, 5]]]);
 * assert.equal(svg.match(/<rect class="bar"/g)?.length, 4);
 * ```
 */
export function groupedBarChartSvg(
  title: string,
  groups: readonly string[],
  series: readonly (readonly [string, readonly number[]])[],
): string {
  const barHeight = 12;
  const left = 140;
  const width = 560;
  const plot = width - left - 90;
  const groupHeight = series.length * barHeight + 14;
  const height = 40 + groups.length * groupHeight + 16;
  const max = Math.max(1, ...series.flatMap(([, values]) => values));
  const parts: string[] = [];
  groups.forEach((group, g) => {
    const y0 = 28 + g * groupHeight;
    parts.push(
      `<text x="${left - 8}" y="${y0 + (series.length * barHeight) / 2 + 4}" text-anchor="end">${
        escape(group)
      }</text>`,
    );
    series.forEach(([name, values], s) => {
      const value = values[g] ?? 0;
      const w = value === 0 ? 0 : Math.max(1, (value / max) * plot);
      const y = y0 + s * barHeight;
      parts.push(
        `<rect class="bar" x="${left}" y="${y}" width="${w.toFixed(1)}" height="${
          barHeight - 2
        }" fill="${PALETTE[s % PALETTE.length]}"><title>${
          escape(`${group} ${name}: ${value}`)
        }</title></rect>`,
        `<text x="${(left + w + 4).toFixed(1)}" y="${y + 9}" font-size="10">${
          value.toLocaleString("en-US")
        }</text>`,
      );
    });
  });
  const legendY = height - 8;
  series.forEach(([name], s) => {
    const x = left + s * 110;
    parts.push(
      `<rect x="${x}" y="${legendY - 9}" width="10" height="10" fill="${
        PALETTE[s % PALETTE.length]
      }"/>`,
      `<text x="${x + 14}" y="${legendY}" font-size="11">${escape(name)}</text>`,
    );
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" role="img" aria-label="${escape(title)}">` +
    `<text x="0" y="16" font-weight="bold">${escape(title)}</text>${parts.join("")}</svg>`;
}

/** The event counters the second chart of each scenario shows. */
const CAUSE_SERIES: readonly [string, (counters: Readonly<Record<string, number>>) => number][] = [
  ["VM exits", (c) => c["exit.total"] ?? 0],
  ["hidden faults", (c) => c["fault.hidden"] ?? 0],
  ["guest faults", (c) => c["guest.fault"] ?? 0],
  ["emulated PT writes", (c) => c["emulate.ptWrite"] ?? 0],
  [
    "hypercalls",
    (c) =>
      Object.entries(c).filter(([n]) =>
        /^hypercall\.[a-z_]+$/.test(n) && n !== "hypercall.entries" &&
        n !== "hypercall.rejected"
      ).reduce((sum, [, v]) => sum + v, 0),
  ],
];

function scenarioSection(result: ComparisonResult, scenario: ComparedScenario): string {
  const modes = result.modes.filter((m) => scenario.results[m] !== undefined);
  const overhead = barChartSvg(
    `${scenario.name}: estimated cycles per operation, relative to native (${result.profile})`,
    modes.map((m) => [m, scenario.results[m]!.overheadVsNative ?? NaN] as const),
    (v) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : "-"),
  );
  const causes = groupedBarChartSvg(
    `${scenario.name}: where the cost comes from (events in the measured part)`,
    modes,
    CAUSE_SERIES.map(([name, pick]) =>
      [name, modes.map((m) => pick(scenario.results[m]!.counters))] as const
    ),
  );
  const table = tableOf(result, scenario);
  const head = `<tr>${table[0]!.map((h) => `<th>${escape(h)}</th>`).join("")}</tr>`;
  const body = table.slice(1).map((row) =>
    `<tr>${
      row.map((cell, c) => (c === 0 ? `<th>${escape(cell)}</th>` : `<td>${escape(cell)}</td>`))
        .join("")
    }</tr>`
  ).join("\n");
  const knobs = Object.entries(scenario.knobs).map(([k, v]) => `${k} ${v}`).join(", ");
  return `<section id="${escape(scenario.name)}">
<h2>${escape(scenario.name)}</h2>
<p>${escape(scenario.title)}. ${
    escape(knobs)
  }; ${scenario.operations} operations; ${scenario.memoryMiB} MiB.</p>
<figure>${overhead}</figure>
<figure>${causes}</figure>
<table>
${head}
${body}
</table>
</section>`;
}

/**
 * The comparison as one HTML page.
 *
 * @example
 * ```ts
 * import { renderHtmlReport } from "./report_html.ts";
 * import assert from "node:assert/strict";
 * const html = renderHtmlReport({ schema: "vmlab.compare/1", profile: "p4_2006", seed: 1,
 *   modes: ["native"], scenarios: [] });
 * assert.match(html, /^<!DOCTYPE html>/);
 * ```
 */
export function renderHtmlReport(result: ComparisonResult): string {
  const sections = result.scenarios.map((s) => scenarioSection(result, s)).join("\n");
  const toc = result.scenarios.map((s) => `<a href="#${escape(s.name)}">${escape(s.name)}</a>`)
    .join(" · ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vmlab comparison</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }
svg text { font-family: system-ui, sans-serif; font-size: 12px; fill: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th { text-align: left; }
figure { margin: 1em 0; }
</style>
</head>
<body>
<h1>vmlab: the same guest on every platform</h1>
<p>Counts are exact; cycles are estimated from them with the <code>${escape(result.profile)}</code>
profile (see the README's cost model). Seed ${result.seed}. Platforms: ${
    escape(result.modes.join(", "))
  }.</p>
<p>${toc}</p>
${sections}
</body>
</html>
`;
}
