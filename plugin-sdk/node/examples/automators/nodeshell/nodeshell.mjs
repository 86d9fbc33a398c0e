#!/usr/bin/env node
// nodeshell: a Loom automator that runs each service action's script on this host with /bin/sh.
//
// - The action, in Loom's form {type, script, data} (data passed as one argument, $1) or
//   Coopr's {type, fields: {script, args}} (args: shell words, split by /bin/sh, or a list).
// - `script` names a file in the scripts folder (settings.scripts, relative to this folder;
//   default scripts/) or an absolute path, run with /bin/sh; anything else is shell text run
//   with `/bin/sh -c`.
// - Scripts run in the work folder (settings.workDir, default $TMPDIR/loom-<name>), which
//   BOOTSTRAP makes (running it again changes nothing), with $LOOM_TASK_ID set. Their output
//   is streamed as it comes; their exit code is the task's status. A cancel kills the
//   script's process group.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Plugin, TaskFailed } from "../../../loom-plugin.mjs";

const here = path.dirname(fs.realpathSync(fileURLToPath(import.meta.url)));
const name = process.env.LOOM_PLUGIN_NAME ?? "nodeshell";
const plugin = new Plugin({ name: "nodeshell", version: "1.0.0", kind: "automator", maxConcurrency: 4,
  idempotentTasks: ["BOOTSTRAP"] });

function workDir(ctx) {
  const work = ctx.settings.workDir ?? path.join(os.tmpdir(), `loom-${name}`);
  if (typeof work !== "string") throw new TaskFailed("settings.workDir must be a string");
  fs.mkdirSync(work, { recursive: true });
  return work;
}

plugin.task("BOOTSTRAP", async (task, ctx) => {
  const work = workDir(ctx);
  ctx.info(`work folder ${work} is ready`);
  return { nodeshell_workdir: work };
});

/** The argv that runs the task's action, and what to call it in the log. */
function command(task) {
  const action = task.config.service?.action ?? {};
  const fields = action.fields && typeof action.fields === "object" ? action.fields : {};
  let script, args = [], words = null;
  if (typeof action.script === "string" && action.script) {
    script = action.script;
    if (action.data !== undefined && action.data !== null && action.data !== "") {
      args = [typeof action.data === "string" ? action.data : JSON.stringify(action.data)];
    }
  } else if (typeof fields.script === "string" && fields.script) {
    script = fields.script;
    if (Array.isArray(fields.args)) args = fields.args.map(String);
    else if (typeof fields.args === "string") words = fields.args;
  } else {
    throw new TaskFailed(`${task.taskName}: the action has no script (service.action.script or .fields.script)`);
  }
  const scripts = typeof plugin.settings.scripts === "string" ? plugin.settings.scripts : "scripts";
  const file = path.isAbsolute(script) ? script : path.join(here, scripts, script);
  const isFile = fs.statSync(file, { throwIfNoEntry: false })?.isFile() ?? false;
  const body = isFile ? 'exec /bin/sh "$0" "$@"' : script;
  // Coopr's args are shell words: the shell splits them into $1, $2...
  const text = words === null ? body : `set -- ${words}\n${body}`;
  return [["/bin/sh", "-c", text, isFile ? file : name, ...args], isFile ? `script ${path.basename(file)}` : "shell text"];
}

plugin.task(async (task, ctx) => {
  const [argv, what] = command(task);
  ctx.info(`${task.taskName}: running ${what}`);
  const run = await ctx.run(argv, { cwd: workDir(ctx), env: { ...process.env, LOOM_TASK_ID: task.taskId } });
  if (run.status !== 0 && ctx.cancelled) run.stderr += "cancelled: the script was killed\n";
  return { ...run, result: {} };
});

plugin.serve();
