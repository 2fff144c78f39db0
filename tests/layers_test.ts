/**
 * Imports point only toward the hardware (STYLE.md): a module in one layer may import its
 * own layer and the layers below it, never one above. Read from `deno info --json`.
 */

import assert from "node:assert/strict";

/** Layers bottom-up, as folders. */
const LAYERS = [
  "lib/x86",
  "lib/memory",
  "lib/shadow",
  "hypercalls",
  "lib/platform",
  "lib/guest",
  "lib/lab",
  "scenarios",
];

const root = new URL("../", import.meta.url).pathname;

function layerOf(specifier: string): number {
  if (!specifier.startsWith("file://")) return -1;
  const path = decodeURIComponent(new URL(specifier).pathname).slice(root.length);
  return LAYERS.findIndex((layer) => path.startsWith(layer + "/"));
}

interface DenoInfo {
  modules: { specifier: string; dependencies?: { code?: { specifier: string } }[] }[];
}

async function moduleGraph(entry: string): Promise<DenoInfo> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout)) as DenoInfo;
}

Deno.test("modules import only their own layer and the layers below it", async () => {
  const entries = ["mod.ts"];
  for await (const e of Deno.readDir(root + "scenarios")) {
    if (e.isFile && e.name.endsWith(".ts")) entries.push("scenarios/" + e.name);
  }
  const upward: string[] = [];
  let checked = 0;
  for (const entry of entries) {
    for (const m of (await moduleGraph(entry)).modules) {
      const from = layerOf(m.specifier);
      if (from < 0) continue;
      for (const d of m.dependencies ?? []) {
        const target = d.code?.specifier;
        if (target === undefined) continue;
        checked++;
        const to = layerOf(target);
        if (to > from) upward.push(`${m.specifier} -> ${target}`);
      }
    }
  }
  assert.ok(checked > 10, `expected to check the import graph, checked ${checked} edges`);
  assert.deepEqual(upward, [], "upward imports found");
});
