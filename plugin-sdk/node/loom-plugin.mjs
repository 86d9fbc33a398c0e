/**
 * loom-plugin.mjs: write a Loom provisioner plugin in Node.js (18+, no dependencies).
 *
 * One file: copy it beside your plugin, or import it by a path relative to your
 * executable (a manifest cannot set NODE_OPTIONS). A whole provider:
 *
 *     #!/usr/bin/env node
 *     import { Plugin, TaskFailed } from "../../../loom-plugin.mjs";
 *
 *     const plugin = new Plugin({ name: "nodefile", version: "1.0.0", kind: "provider",
 *       maxConcurrency: 4, idempotentTasks: ["CONFIRM", "DELETE"] });
 *
 *     plugin.task("CREATE", async (task, ctx) => {
 *       ctx.info(`creating ${task.config.hostname}`);
 *       return { providerid: "m-1" };            // result keys: status 0
 *     });
 *     plugin.task("CONFIRM", async (task, ctx) => {
 *       if (task.config.providerid !== "m-1") throw new TaskFailed("no such machine");
 *       return { status: 0, result: { ipaddress: "127.0.0.1" }, hostname: "m-1.local" };
 *     });
 *     plugin.task("DELETE", async () => undefined); // success, no result keys
 *
 *     plugin.serve();
 *
 * API
 * - `new Plugin({name, version, kind, tasks, maxConcurrency, idempotentTasks})`: `kind` is
 *   "provider" or "automator"; `tasks` the task names it declares (default: those with a
 *   handler, or every task of its kind when one handler takes all); `maxConcurrency` is
 *   declared in the handshake (the manifest's may be lower); `idempotentTasks` are tasks
 *   safe to run twice.
 * - `plugin.task("CREATE", fn)` registers a handler for a task name; `plugin.task(fn)` one
 *   for every declared task without its own. `plugin.setup(fn)` registers
 *   `fn(settings)`, awaited at the handshake; throwing there refuses it (error -32603).
 * - `plugin.serve()` speaks the protocol until stdin closes, then exits with code 0.
 * - A handler `async (task, ctx)` gets the task (the `task` params: `taskId`,
 *   `taskName`, `config`...) and a context, runs as an async task of its own (at most
 *   `maxConcurrency` at once; more wait for a slot), and resolves to:
 *   - `undefined`/`null`: success, no result keys;
 *   - an object with an integer `status`: the answer itself (`status`, `result`,
 *     `stdout`, `stderr`, `hostname`, `ipaddresses`, other members kept);
 *   - any other object: result keys of a success (`{providerid: "m-1"}` answers
 *     `{"status": 0, "result": {"providerid": "m-1"}}`). A result key named `status`
 *     needs the full form.
 *   Throwing `new TaskFailed(message, {status, result})` fails the task with those; any
 *   other throw or rejection fails it with status 1 and the error's message in `stderr`
 *   (the plugin keeps serving). A task answered non-zero after its cancel carries
 *   `"cancelled": true`; `throw new Cancelled()` answers that at once.
 * - The context: `taskId`; `settings` (the manifest's, from the handshake); `signal` (an
 *   AbortSignal, aborted when the supervisor cancels the task or stdin closes) and
 *   `cancelled` (its state); `log(level, message, fields)` and `debug/info/warn/error
 *   (message, fields)`; `progress(message, percent)`; `output(stream, data)` ("stdout"
 *   or "stderr", live command output); `run(argv, {cwd, env})`: runs a command in its
 *   own process group, streams its output, kills the group on cancel, resolves to
 *   `{status, stdout, stderr}` (the last 64 KiB of each; a signal gives 128 + its number).
 *
 * What the SDK does for you: the handshake (error -32001 without protocol 1), `ping` and
 * `shutdown` answered at once while tasks run, `cancel` delivered to the task, -32004
 * before the handshake, -32002 for undeclared tasks, -32602 for unreadable task params,
 * -32003 after `shutdown`, -32601 for unknown methods; unknown notifications, unknown
 * members and lines that are not JSON are ignored. On end of stdin it cancels the tasks
 * in flight, answers them and exits 0. Each message is written whole, in order, on a
 * private description of stdout. Log lines go to fd 3 when `LOOM_LOG_FD=3` names a
 * writable pipe whose read end is not this process's own (else stdout). `console.log`
 * and `process.stdout.write` are safe: they go to stderr. (A command started with
 * `stdio: "inherit"` would still write on the protocol's pipe: use `ctx.run`, or
 * pipes.) The SDK never logs task contents. Under `LOOM_CHECK=1` (`loom-provisioner check` only), a task whose config
 * holds `"loom-check": {"waitSecs": N}` is answered by the SDK (PROTOCOL.md, the check
 * protocol): it waits N seconds, or answers cancelled at once on `cancel`.
 */

import fs from "node:fs";
import os from "node:os";
import { spawn } from "node:child_process";

const PROTOCOL_VERSION = 1;
const KIND_TASKS = {
  provider: ["CREATE", "CONFIRM", "DELETE"],
  automator: ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"],
};
const LEVELS = ["trace", "debug", "info", "warn", "error"];
const TAIL_CHARS = 64 * 1024;
const MAX_WAIT_SECS = 300;

/** Fails the task with `message` in `stderr`, `status` (never 0) and `result` keys. */
export class TaskFailed extends Error {
  constructor(message, { status = 1, result = {} } = {}) {
    super(String(message));
    this.name = "TaskFailed";
    this.status = Number.isInteger(status) && status !== 0 ? status : 1;
    this.result = { ...result };
  }
}

/** Thrown by a handler that stops because its task was cancelled. */
export class Cancelled extends Error {
  constructor(message = "cancelled") {
    super(message);
    this.name = "Cancelled";
  }
}

/** One output descriptor: whole messages, in order (a single stream never interleaves). */
class Channel {
  constructor(fd) {
    this.broken = false;
    this.stream = fs.createWriteStream(null, { fd, autoClose: false });
    // The supervisor is gone (EPIPE): nobody reads; stdin's end will follow.
    this.stream.on("error", () => {
      this.broken = true;
    });
  }

  /** Throws (before writing anything) when `msg` is not JSON. */
  send(msg) {
    // JSON.stringify escapes lone surrogates: the line is valid UTF-8.
    const line = JSON.stringify(msg) + "\n";
    if (!this.broken) this.stream.write(line);
  }

  end() {
    return new Promise((resolve) => {
      if (this.broken) return resolve();
      this.stream.end(resolve);
    });
  }
}

/** A private description of fd 1 for the protocol (a reopened pipe, when it is one, so the
 * O_NONBLOCK that Node sets on process.stdout's description does not reach it). */
function protocolOut() {
  try {
    if (fs.fstatSync(1).isFIFO()) return fs.openSync("/proc/self/fd/1", fs.constants.O_WRONLY);
  } catch {
    // fall through: use fd 1 itself
  }
  return 1;
}

/** Points process.stdout and console's stdout methods at stderr. */
function guardStdout() {
  const stderr = process.stderr;
  process.stdout.write = (chunk, encoding, cb) => stderr.write(chunk, encoding, cb);
  for (const m of ["log", "info", "debug"]) console[m] = (...args) => console.error(...args);
}

/** The log channel (fd 3) when LOOM_LOG_FD names it and it is an inherited, writable pipe:
 * a private description, and fd 3 closed so that commands do not hold it. Else null (logs
 * share stdout); a descriptor that is not the channel is left alone. */
function takeLogFd() {
  const value = process.env.LOOM_LOG_FD;
  if (value === undefined) return null;
  if (value !== "3") {
    process.stderr.write("loom-plugin: LOOM_LOG_FD does not name fd 3; log lines go to stdout\n");
    return null;
  }
  let why;
  try {
    // Node marks inherited descriptors close-on-exec at startup, so that flag cannot tell
    // the supervisor's pipe from Node's own (when fd 3 was not inherited, Node's internal
    // descriptors take the number). Node's own pipes have their read end in this
    // process; the log channel's read end is the supervisor's.
    if (!fs.fstatSync(3).isFIFO()) why = "which is not a pipe";
    else if (![1, 2].includes(accessMode(3))) why = "which is not open for writing";
    else if (holdsReadEnd(3)) why = "a pipe whose read end this process holds (its own, not inherited)";
    else {
      const fd = fs.openSync("/proc/self/fd/3", fs.constants.O_WRONLY);
      fs.closeSync(3);
      return fd;
    }
  } catch {
    why = "which is not open";
  }
  process.stderr.write(`loom-plugin: LOOM_LOG_FD names fd 3, ${why}; log lines go to stdout\n`);
  return null;
}

/** The access mode (0 read, 1 write, 2 both) of descriptor `fd`, from its fdinfo. */
function accessMode(fd) {
  const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, "utf8");
  const flags = parseInt((/^flags:\s*([0-7]+)/m.exec(info) ?? [])[1] ?? "", 8);
  return Number.isNaN(flags) ? -1 : flags & 3;
}

/** Whether another descriptor of this process reads the pipe `fd` writes to. */
function holdsReadEnd(fd) {
  const pipe = fs.readlinkSync(`/proc/self/fd/${fd}`);
  return fs.readdirSync("/proc/self/fd").some((n) => {
    if (n === String(fd)) return false;
    try {
      return fs.readlinkSync(`/proc/self/fd/${n}`) === pipe && accessMode(n) === 0;
    } catch {
      return false; // closed meanwhile (the listing's own descriptor)
    }
  });
}

/** The last TAIL_CHARS of a stream's text. */
class Tail {
  constructor() {
    this.text = "";
  }
  add(text) {
    this.text = (this.text + text).slice(-TAIL_CHARS);
  }
}

/** What a handler can do besides computing its result; see the file's doc. */
export class Context {
  #plugin;
  #controller = new AbortController();
  #done = false;

  constructor(plugin, taskId) {
    this.#plugin = plugin;
    this.taskId = taskId;
    this.settings = plugin.settings;
    this.signal = this.#controller.signal;
  }

  get cancelled() {
    return this.signal.aborted;
  }

  /** @internal */
  cancel() {
    this.#controller.abort(new Cancelled());
  }

  /** @internal */
  finish() {
    this.#done = true;
  }

  log(level, message, fields) {
    const lvl = LEVELS.includes(level) ? level : "info";
    if (LEVELS.indexOf(lvl) < LEVELS.indexOf(this.#plugin.logLevel)) return;
    const params = { level: lvl, message: String(message), taskId: this.taskId };
    if (fields && typeof fields === "object") params.fields = fields;
    this.#plugin.log({ jsonrpc: "2.0", method: "log", params });
  }
  debug(message, fields) {
    this.log("debug", message, fields);
  }
  info(message, fields) {
    this.log("info", message, fields);
  }
  warn(message, fields) {
    this.log("warn", message, fields);
  }
  error(message, fields) {
    this.log("error", message, fields);
  }

  progress(message, percent) {
    const params = { taskId: this.taskId, message: String(message) };
    if (typeof percent === "number" && Number.isFinite(percent)) params.percent = Math.max(0, Math.min(100, percent));
    this.#plugin.log({ jsonrpc: "2.0", method: "progress", params });
  }

  /** Streams command output; dropped once the task has answered (the protocol ignores
   * output for a task that is not running). */
  output(stream, data) {
    if (stream !== "stdout" && stream !== "stderr") throw new TypeError("stream must be 'stdout' or 'stderr'");
    if (this.#done) return;
    this.#plugin.out.send({ jsonrpc: "2.0", method: "output", params: { taskId: this.taskId, stream, data: String(data) } });
  }

  /** Runs `argv` (stdin /dev/null) in a process group of its own, streaming its output; on
   * cancel the group is killed. Resolves to `{status, stdout, stderr}`; rejects when the
   * command cannot start. */
  run(argv, { cwd, env } = {}) {
    return new Promise((resolve, reject) => {
      const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
      const tails = { stdout: new Tail(), stderr: new Tail() };
      let closed = false;
      // Until its pipes close the group may hold what the command left running; the
      // group's id stays reserved while any member lives.
      const kill = () => {
        if (!closed && child.pid) {
          try {
            process.kill(-child.pid, "SIGKILL");
          } catch {
            // already gone
          }
        }
      };
      const settle = (fn) => {
        if (closed) return;
        closed = true;
        this.signal.removeEventListener("abort", kill);
        fn();
      };
      for (const stream of ["stdout", "stderr"]) {
        child[stream].setEncoding("utf8"); // a character split between reads stays whole
        child[stream].on("data", (text) => {
          tails[stream].add(text);
          this.output(stream, text);
        });
      }
      child.on("error", (e) => settle(() => reject(e)));
      child.on("close", (code, sig) =>
        settle(() =>
          resolve({
            status: code ?? 128 + (os.constants.signals[sig] ?? 0),
            stdout: tails.stdout.text,
            stderr: tails.stderr.text,
          }),
        ),
      );
      this.signal.addEventListener("abort", kill, { once: true });
      if (this.signal.aborted) kill();
    });
  }
}

/** A plugin's identity, its handlers, and the protocol loop; see the file's doc. */
export class Plugin {
  #handlers = new Map();
  #default = null;
  #setup = null;
  #ready = false;
  #shuttingDown = false;
  #active = 0;
  #waiting = []; // [ctx, resolve] waiting for a slot
  #running = new Map(); // taskId -> Set<Context>
  #inflight = new Set(); // promises of tasks not yet answered

  constructor({ name, version, kind, tasks, maxConcurrency, idempotentTasks = [] }) {
    if (!(kind in KIND_TASKS)) throw new TypeError("kind must be 'provider' or 'automator'");
    for (const t of [...(tasks ?? []), ...idempotentTasks]) {
      if (!KIND_TASKS[kind].includes(t)) throw new TypeError(`${t} is not a ${kind} task`);
    }
    if (maxConcurrency !== undefined && !(Number.isInteger(maxConcurrency) && maxConcurrency >= 1)) {
      throw new TypeError("maxConcurrency must be an integer of at least 1");
    }
    this.name = String(name);
    this.version = String(version);
    this.kind = kind;
    this.tasks = tasks ? [...tasks] : null;
    this.maxConcurrency = maxConcurrency;
    this.idempotentTasks = [...idempotentTasks];
    this.settings = {};
    this.logLevel = "info";
    this.out = null;
    this.logs = null;
  }

  /** `task(name, fn)` handles task `name`; `task(fn)` every task without its own. */
  task(name, fn) {
    if (typeof name === "function") {
      this.#default = name;
      return this;
    }
    if (!KIND_TASKS[this.kind].includes(name)) throw new TypeError(`${name} is not a ${this.kind} task`);
    if (typeof fn !== "function") throw new TypeError("a handler must be a function");
    this.#handlers.set(name, fn);
    return this;
  }

  /** `fn(settings)` runs at the handshake. */
  setup(fn) {
    this.#setup = fn;
    return this;
  }

  declared() {
    if (this.tasks) return this.tasks;
    if (this.#default) return [...KIND_TASKS[this.kind]];
    return KIND_TASKS[this.kind].filter((t) => this.#handlers.has(t));
  }

  #answer(id, result) {
    this.out.send({ jsonrpc: "2.0", id, result });
  }

  #error(id, code, message) {
    this.out.send({ jsonrpc: "2.0", id, error: { code, message } });
  }

  /** @internal */
  log(msg) {
    (this.logs ?? this.out).send(msg);
  }

  /** Serves until stdin closes, then exits the process with code 0. */
  serve() {
    const logFd = takeLogFd(); // first: fd 3 is only the channel if it came through exec
    this.out = new Channel(protocolOut());
    this.logs = logFd === null ? null : new Channel(logFd);
    guardStdout();
    process.on("unhandledRejection", (e) => {
      // A promise a handler left behind: say so, keep serving.
      process.stderr.write(`loom-plugin: an unhandled rejection: ${describe(e)}\n`);
    });
    let pending = Buffer.alloc(0);
    let queue = Promise.resolve(); // lines are handled one at a time, in order
    process.stdin.on("data", (chunk) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let nl;
      while ((nl = pending.indexOf(10)) >= 0) {
        const line = pending.subarray(0, nl);
        pending = pending.subarray(nl + 1);
        queue = queue.then(() => this.#handleLine(line)).catch(stray);
      }
    });
    process.stdin.on("end", () => {
      const last = pending;
      queue = queue.then(() => this.#handleLine(last)).catch(stray).then(() => this.#finish());
    });
  }

  async #finish() {
    // End of stdin: the supervisor is done. Cancel what runs, let it answer, exit.
    for (const contexts of this.#running.values()) for (const ctx of contexts) ctx.cancel();
    this.#wake();
    await Promise.allSettled([...this.#inflight]);
    await this.out.end();
    if (this.logs) await this.logs.end();
    process.exit(0);
  }

  async #handleLine(line) {
    const text = line.toString("utf8").trim();
    if (!text) return;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      process.stderr.write("loom-plugin: skipped a line on stdin that is not JSON\n");
      return;
    }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg) || typeof msg.method !== "string") return;
    const { method, params } = msg;
    if (!("id" in msg)) {
      if (method === "cancel" && params && typeof params === "object") this.#cancel(params.taskId);
      return; // other notifications: ignored
    }
    const id = msg.id;
    if (method === "handshake") await this.#handshake(id, params);
    else if (method === "task") this.#start(id, params);
    else if (method === "ping") this.#answer(id, {});
    else if (method === "shutdown") {
      this.#shuttingDown = true;
      this.#answer(id, {});
    } else this.#error(id, -32601, `unknown method ${JSON.stringify(method.slice(0, 100))}`);
  }

  async #handshake(id, params) {
    if (this.#shuttingDown) return this.#error(id, -32003, "shutting down");
    if (!params || typeof params !== "object" || !Array.isArray(params.protocolVersions)) {
      return this.#error(id, -32602, "handshake params need a protocolVersions list");
    }
    if (!params.protocolVersions.includes(PROTOCOL_VERSION)) {
      return this.#error(id, -32001, "this plugin speaks protocol version 1 only");
    }
    const settings = params.settings && typeof params.settings === "object" && !Array.isArray(params.settings) ? params.settings : {};
    if (!this.#ready) {
      if (this.#setup) {
        try {
          await this.#setup(settings);
        } catch (e) {
          return this.#error(id, -32603, `setup failed: ${describe(e)}`);
        }
      }
      this.settings = settings;
    }
    this.logLevel = LEVELS.includes(params.logLevel) ? params.logLevel : "info";
    this.#ready = true;
    const result = { protocolVersion: PROTOCOL_VERSION, name: this.name, version: this.version, tasks: this.declared() };
    if (this.maxConcurrency !== undefined) result.maxConcurrency = this.maxConcurrency;
    if (this.idempotentTasks.length) result.idempotentTasks = this.idempotentTasks;
    this.#answer(id, result);
  }

  #start(id, task) {
    if (!this.#ready) return this.#error(id, -32004, "task before the handshake");
    if (this.#shuttingDown) return this.#error(id, -32003, "shutting down: no new tasks");
    const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
    if (!isObject(task) || typeof task.taskId !== "string" || typeof task.taskName !== "string" ||
        (task.config !== undefined && !isObject(task.config))) {
      return this.#error(id, -32602, "task params need taskId and taskName strings and a config object");
    }
    const name = task.taskName;
    if (!this.declared().includes(name)) {
      const known = [...KIND_TASKS.provider, ...KIND_TASKS.automator].includes(name) ? name : "this task name";
      return this.#error(id, -32002, `this plugin does not handle ${known}`);
    }
    task.config ??= {};
    const ctx = new Context(this, task.taskId);
    if (!this.#running.has(ctx.taskId)) this.#running.set(ctx.taskId, new Set());
    this.#running.get(ctx.taskId).add(ctx);
    const done = this.#run(id, task, ctx).catch(stray);
    this.#inflight.add(done);
    done.finally(() => this.#inflight.delete(done));
  }

  async #run(id, task, ctx) {
    const gotSlot = await this.#acquire(ctx);
    let result;
    try {
      result = gotSlot ? await this.#execute(task, ctx) : cancelledResult();
    } finally {
      if (gotSlot) this.#release();
      const contexts = this.#running.get(ctx.taskId);
      contexts?.delete(ctx);
      if (contexts && contexts.size === 0) this.#running.delete(ctx.taskId);
    }
    ctx.finish();
    try {
      this.#answer(id, result);
    } catch (e) {
      // not JSON (a BigInt, a cycle): a result the handler made
      this.#answer(id, { status: 1, result: {}, stderr: `the task's result is not JSON: ${describe(e)}` });
    }
  }

  /** Waits for a slot (maxConcurrency); false when the task was cancelled first. */
  #acquire(ctx) {
    if (this.maxConcurrency === undefined || this.#active < this.maxConcurrency) {
      this.#active += 1;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => this.#waiting.push([ctx, resolve]));
  }

  #release() {
    this.#active -= 1;
    this.#wake();
  }

  /** Hands free slots to waiting tasks; a cancelled one gives up its place. */
  #wake() {
    this.#waiting = this.#waiting.filter(([ctx, resolve]) => {
      if (ctx.cancelled) {
        resolve(false);
        return false;
      }
      return true;
    });
    while (this.#waiting.length && (this.maxConcurrency === undefined || this.#active < this.maxConcurrency)) {
      const [, resolve] = this.#waiting.shift();
      this.#active += 1;
      resolve(true);
    }
  }

  async #execute(task, ctx) {
    const wait = checkWait(task);
    if (wait !== null) return typeof wait === "object" ? wait : waitTask(wait, ctx);
    const handler = this.#handlers.get(task.taskName) ?? this.#default;
    let result;
    try {
      if (!handler) throw new TaskFailed(`this plugin has no handler for ${task.taskName}`);
      result = normalise(await handler(task, ctx));
    } catch (e) {
      if (e instanceof Cancelled) return cancelledResult();
      if (e instanceof TaskFailed) result = { status: e.status, result: e.result, stderr: e.message };
      else result = { status: 1, result: {}, stderr: describe(e) };
    }
    if (ctx.cancelled && result.status !== 0) result.cancelled = true;
    return result;
  }

  #cancel(taskId) {
    if (typeof taskId !== "string") return;
    for (const ctx of this.#running.get(taskId) ?? []) ctx.cancel(); // unknown ids: nothing
    this.#wake(); // a task waiting for a slot gives up
  }
}

/** A failure of the SDK's own (a bug): said on stderr; the plugin keeps serving. */
function stray(e) {
  process.stderr.write(`loom-plugin: ${describe(e)}\n`);
}

function describe(e) {
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}

function cancelledResult() {
  return { status: 1, result: {}, cancelled: true, stderr: "cancelled" };
}

/** A handler's return value as an answer (see the file's doc). */
function normalise(value) {
  if (value === undefined || value === null) return { status: 0, result: {} };
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new TaskFailed(`the handler returned ${Array.isArray(value) ? "an array" : `a ${typeof value}`}; return an object or nothing`);
  }
  if (!("status" in value)) return { status: 0, result: { ...value } };
  if (!Number.isInteger(value.status)) throw new TaskFailed("the handler's status is not an integer");
  const answer = { ...value, result: value.result ?? {} };
  if (typeof answer.result !== "object" || Array.isArray(answer.result)) throw new TaskFailed("the handler's result is not an object");
  for (const key of ["stdout", "stderr", "hostname"]) {
    if (key in answer && typeof answer[key] !== "string") throw new TaskFailed(`the handler's ${key} is not a string`);
  }
  return answer;
}

/** Under LOOM_CHECK=1, a task with config["loom-check"]: the seconds to wait, or a failed
 * answer when the key is malformed. null otherwise. */
function checkWait(task) {
  if (process.env.LOOM_CHECK !== "1" || !("loom-check" in task.config)) return null;
  const spec = task.config["loom-check"];
  const secs = spec && typeof spec === "object" ? spec.waitSecs : undefined;
  if (typeof secs !== "number" || !(secs > 0 && secs <= MAX_WAIT_SECS)) {
    return { status: 1, result: {}, stderr: "loom-check.waitSecs must be a number above 0, at most 300" };
  }
  return secs;
}

function waitTask(secs, ctx) {
  return new Promise((resolve) => {
    if (ctx.cancelled) return resolve(cancelledResult());
    const onAbort = () => {
      clearTimeout(timer);
      resolve(cancelledResult());
    };
    const timer = setTimeout(() => {
      ctx.signal.removeEventListener("abort", onAbort);
      resolve({ status: 0, result: {} });
    }, secs * 1000);
    ctx.signal.addEventListener("abort", onAbort, { once: true });
  });
}
