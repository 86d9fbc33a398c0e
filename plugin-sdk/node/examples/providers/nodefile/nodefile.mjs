#!/usr/bin/env node
// nodefile: a Loom provider whose machines are files in $TMPDIR/loom-<name>-machines.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Plugin, TaskFailed } from "../../../loom-plugin.mjs";

const plugin = new Plugin({ name: "nodefile", version: "1.0.0", kind: "provider", maxConcurrency: 4,
  idempotentTasks: ["CONFIRM", "DELETE"] });
const machines = path.join(os.tmpdir(), `loom-${process.env.LOOM_PLUGIN_NAME ?? "nodefile"}-machines`);
// The file of the task's machine; null for an id this plugin never made.
const machine = (task) => {
  const id = String(task.config.providerid);
  return /^nodefile-[0-9a-f]{12}$/.test(id) ? path.join(machines, id) : null;
};

plugin.task("CREATE", async (task, ctx) => {
  fs.mkdirSync(machines, { recursive: true });
  const id = `nodefile-${randomBytes(6).toString("hex")}`;
  fs.writeFileSync(path.join(machines, id), String(task.config.hostname ?? id), { flag: "wx" });
  ctx.info(`created ${id}`);
  return { providerid: id };
});

plugin.task("CONFIRM", async (task) => {
  const file = machine(task);
  if (!file || !fs.existsSync(file)) throw new TaskFailed(`no machine ${task.config.providerid}`);
  return { status: 0, result: { ipaddress: "127.0.0.1" }, hostname: fs.readFileSync(file, "utf8") };
});

// An unknown machine, or one already gone: success all the same.
plugin.task("DELETE", async (task) => {
  const file = machine(task);
  if (file) fs.rmSync(file, { force: true });
});

plugin.serve();
