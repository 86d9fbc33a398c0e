#!/usr/bin/env node
// An automator on the Node SDK that misbehaves on request (config.probe), for tests/tests/script_sdks.rs.
import { Plugin } from "../../../plugin-sdk/node/loom-plugin.mjs";

const plugin = new Plugin({ name: "probe", version: "1.0.0", kind: "automator", maxConcurrency: 4 });

plugin.task(async (task, ctx) => {
  const what = task.config.probe;
  if (what === "raise") throw new Error("probe failed on purpose");
  if (what === "reject") return Promise.reject(new Error("probe rejected on purpose"));
  if (what === "print") {
    console.log("a stray print from a handler");
    process.stdout.write("a stray write on process.stdout\n");
    return { pid: process.pid };
  }
  if (what === "wait-cancel") {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 300_000);
      ctx.signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
    });
    return { status: 7, result: { partial: true }, stderr: `stopped: cancelled=${ctx.cancelled ? "True" : "False"}` };
  }
  if (what === "run-cancel") {
    return ctx.run(["/bin/sh", "-c", "echo started; sleep 300"]);
  }
  ctx.info("a log line from the probe");
  return { pid: process.pid };
});

plugin.serve();
