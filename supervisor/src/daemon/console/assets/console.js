// The Loom console: clusters, nodes, tasks and plugins of one daemon, live.
//
// Plain DOM, no framework, no build step. Sections, in order: DOM helpers, formatting,
// the API and the session, live events, dialogs, shared pieces (plans, charts), the
// views (login, clusters, a cluster, tasks, a task, plugins, health), the router.
//
// Escaping by construction: every value that comes from the daemon (and so from plugins,
// specs and scripts: hostnames, output, errors) reaches the page only as a text node
// (textContent) or an attribute value set with setAttribute/a property. Nothing here
// writes HTML (no innerHTML, outerHTML, insertAdjacentHTML, document.write), and no
// `style` attribute is ever set: sizes and positions go through el.style (CSSOM), which
// the Content-Security-Policy allows.
'use strict';

(() => {
  // Content-Security-Policy violations are counted where a test (or a person in the
  // developer tools) can read them: <html data-csp-violations="N">.
  document.documentElement.dataset.cspViolations = '0';
  document.addEventListener('securitypolicyviolation', (ev) => {
    const root = document.documentElement;
    root.dataset.cspViolations = String(Number(root.dataset.cspViolations || 0) + 1);
    root.dataset.cspLast = `${ev.violatedDirective} ${ev.blockedURI}`.slice(0, 200);
  });

  // ---------------------------------------------------------------- DOM helpers

  const SVG_NS = 'http://www.w3.org/2000/svg';
  // Set as properties, not attributes.
  const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'open', 'tabIndex']);

  function append(el, kids) {
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) append(el, kid);
      else if (kid instanceof Node) el.appendChild(kid);
      else el.appendChild(document.createTextNode(String(kid)));
    }
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'style' || /^on/i.test(k) || k === 'innerHTML' || k === 'srcdoc') {
        throw new Error(`h(): ${k} is not allowed`);
      } else if (k === 'class') {
        el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
      } else if (k === 'text') {
        el.textContent = String(v);
      } else if (k === 'events') {
        for (const [name, fn] of Object.entries(v)) el.addEventListener(name, fn);
      } else if (k === 'data') {
        for (const [dk, dv] of Object.entries(v)) if (dv !== undefined && dv !== null) el.dataset[dk] = String(dv);
      } else if (PROPS.has(k)) {
        el[k] = v;
      } else {
        el.setAttribute(k, v === true ? '' : String(v));
      }
    }
  }

  /** Replaces the children of `el` with `kids` (as for h(): nulls skipped, arrays flattened). */
  function fill(el, ...kids) {
    el.textContent = '';
    return append(el, kids);
  }

  /** An element: h('a', {href: '#/x', class: 'y'}, 'text', child, [more]). */
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    setProps(el, props);
    return append(el, kids);
  }

  /** An SVG element, the same way. */
  function svg(tag, props, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    setProps(el, props);
    return append(el, kids);
  }

  const $ = (sel, root) => (root || document).querySelector(sel);

  /** A link inside the console; path parts are encoded. */
  function route(...parts) {
    return '#/' + parts.map((p, i) => (i === 0 ? p : encodeURIComponent(p))).join('/');
  }

  /** An http(s) URL from untrusted text as a link, else the text. */
  function maybeLink(text) {
    try {
      const u = new URL(text);
      if (u.protocol === 'http:' || u.protocol === 'https:') {
        return h('a', { href: u.href, rel: 'noopener noreferrer', target: '_blank' }, text);
      }
    } catch (_) {
      /* not a URL */
    }
    return document.createTextNode(text);
  }

  function badge(text, kind) {
    const cls = String(kind || text || '').toLowerCase().replace(/[^a-z0-9]+/g, '-');
    return h('span', { class: ['badge', cls && `b-${cls}`] }, text);
  }

  /** A definition list from [term, value] pairs (null values are left out). */
  function facts(pairs) {
    const dl = h('dl', { class: 'facts' });
    for (const [term, value] of pairs) {
      if (value === null || value === undefined || value === '') continue;
      dl.append(h('dt', null, term), h('dd', null, value));
    }
    return dl;
  }

  /** A table in a horizontally scrolling box. */
  function table(headers, rows, props) {
    return h('div', { class: 'scroll' },
      h('table', props,
        h('thead', null, h('tr', null, headers.map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, rows)));
  }

  const MAX_OUTPUT = 64 * 1024;

  /** Output text in a scrolling <pre> (never more than its last 64 KiB). */
  function output(text, label, cls) {
    const t = String(text || '');
    return h('pre', { class: ['output', cls], tabindex: 0, 'aria-label': label },
      t.length > MAX_OUTPUT ? t.slice(-MAX_OUTPUT) : t);
  }

  function message(text, cls) {
    return h('p', { class: cls || 'muted' }, text);
  }

  function errorBox(err, what) {
    const box = h('div', { class: 'error', role: 'alert' },
      h('p', null, what ? `${what}: ${err.message}` : err.message));
    const problems = err.body && Array.isArray(err.body.problems) ? err.body.problems : [];
    if (problems.length) box.append(h('ul', null, problems.map((p) => h('li', null, typeof p === 'string' ? p : JSON.stringify(p)))));
    return box;
  }

  function debounce(fn, ms) {
    let timer = null;
    const d = (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => { timer = null; fn(...args); }, ms);
    };
    d.cancel = () => { clearTimeout(timer); timer = null; };
    return d;
  }

  /** Keeps focus on "the same" element (by a data key) across a re-render of `root`. */
  function keepFocus(root, key, render) {
    const active = document.activeElement;
    const id = active && root.contains(active) ? active.dataset[key] : undefined;
    render();
    if (id !== undefined) {
      for (const el of root.querySelectorAll(`[data-${key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}]`)) {
        if (el.dataset[key] === id) { el.focus(); break; }
      }
    }
  }

  // ---------------------------------------------------------------- formatting

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '';
    if (ms < 0) ms = 0;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr} h ${m - hr * 60} min`;
    return `${Math.floor(hr / 24)} d ${hr % 24} h`;
  }

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return isNaN(t) ? null : t;
  }

  /** A <time> element: local time (and date when not today), the exact time as a title. */
  function when(iso) {
    const t = parseTime(iso);
    if (t === null) return iso ? document.createTextNode(String(iso)) : null;
    const d = new Date(t);
    const today = new Date().toDateString() === d.toDateString();
    const text = today ? d.toLocaleTimeString() : d.toLocaleString();
    return h('time', { datetime: d.toISOString(), title: d.toISOString() }, text);
  }

  function relative(ms) {
    const diff = ms - Date.now();
    const text = fmtDuration(Math.abs(diff));
    return diff >= 0 ? `in ${text}` : `${text} ago`;
  }

  /** A step key as stored (`INSTALL local-demo-web-1 web`), in parts. */
  function parseStep(step) {
    const [task, node, service] = String(step || '').split(' ');
    return { task: task || '', node: node || '', service: service || null };
  }

  function stepText(step) {
    const p = parseStep(step);
    return p.service ? `${p.task} ${p.service} on ${p.node}` : `${p.task} ${p.node}`;
  }

  const SECRET_KEY = /pass(word|phrase)?|secret|token|credential|private.?key|api.?key|auth|cookie/i;

  /** A copy of a result with the values of secret-looking keys masked. */
  function redact(value) {
    if (Array.isArray(value)) return value.map(redact);
    if (value && typeof value === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEY.test(k) && v !== null && v !== '' ? '(hidden)' : redact(v);
      return out;
    }
    return value;
  }

  // ---------------------------------------------------------------- API and session

  class ApiError extends Error {
    constructor(status, msg, body) {
      super(msg);
      this.status = status;
      this.body = body;
    }
  }

  /**
   * One request to the daemon: the session cookie (never a token), the CSRF header on
   * every request, JSON both ways. A 401 takes the page back to the login form.
   */
  async function api(method, path, body, opts) {
    const headers = { 'X-Loom-CSRF': '1', Accept: 'application/json' };
    let payload;
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, `the daemon cannot be reached (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (res.status === 401 && !(opts && opts.noLogin)) {
      session.lost();
      throw new ApiError(401, 'signed out: sign in again', data);
    }
    if (!res.ok) {
      const why = data && typeof data === 'object' && data.error ? data.error : `${res.status} ${res.statusText}`;
      throw new ApiError(res.status, why, data);
    }
    return data;
  }

  /** A missing endpoint: this daemon is older than the console's feature. */
  const missing = (e) => e instanceof ApiError && (e.status === 404 || e.status === 405);

  const session = {
    authenticated: false,
    tokenRequired: false,
    supported: true,

    async check() {
      try {
        const s = await api('GET', '/v1/session', undefined, { noLogin: true });
        this.authenticated = !!s.authenticated;
        this.tokenRequired = !!s.tokenRequired;
      } catch (e) {
        if (!missing(e)) throw e;
        // A daemon without console sign-in: fine when it has no token.
        this.supported = false;
        try {
          await api('GET', '/v1/clusters', undefined, { noLogin: true });
          this.authenticated = true;
        } catch (e2) {
          if (e2.status !== 401) throw e2;
          this.authenticated = false;
          this.tokenRequired = true;
        }
      }
      $('#logout').hidden = !(this.tokenRequired && this.authenticated && this.supported);
    },

    async login(token) {
      await api('POST', '/v1/session', { token }, { noLogin: true });
      this.authenticated = true;
      $('#logout').hidden = !this.tokenRequired;
    },

    async logout() {
      try { await api('DELETE', '/v1/session', undefined, { noLogin: true }); } catch (_) { /* signed out anyway */ }
      this.lost();
    },

    lost() {
      if (!this.authenticated && current && current.isLogin) return;
      this.authenticated = false;
      $('#logout').hidden = true;
      live.stop();
      output_buffers.clear();
      closeDialog();
      router.render();
    },
  };

  // ---------------------------------------------------------------- live events

  const EVENTS = ['task.started', 'task.finished', 'op.started', 'op.finished', 'step.started', 'step.finished',
    'step.output', 'plugin.state', 'reset'];

  /**
   * One EventSource on /v1/events. The browser reconnects by itself and sends
   * Last-Event-ID, so the daemon resumes where it was; `reset` means events were lost and
   * the page reloads its data. When the stream is refused (an older daemon, signed out)
   * it is tried again later; meanwhile the open page polls.
   */
  const live = {
    es: null,
    connected: false,
    retry: null,
    delay: 2000,

    start() {
      if (this.es || !session.authenticated) return;
      clearTimeout(this.retry);
      let es;
      try {
        es = new EventSource('/v1/events');
      } catch (_) {
        this.status('offline', 'no live updates');
        return;
      }
      this.es = es;
      this.status('connecting', 'connecting…');
      es.addEventListener('open', () => {
        this.connected = true;
        this.delay = 2000;
        this.status('on', 'live');
      });
      es.addEventListener('error', () => {
        this.connected = false;
        if (es.readyState === EventSource.CLOSED) {
          this.es = null;
          this.status('offline', 'no live updates (polling)');
          this.retry = setTimeout(async () => {
            try { await session.check(); } catch (_) { /* tried again later */ }
            if (!session.authenticated) { session.lost(); return; }
            this.start();
          }, this.delay);
          this.delay = Math.min(this.delay * 2, 60000);
        } else {
          this.status('connecting', 'reconnecting…');
        }
      });
      for (const type of EVENTS) {
        es.addEventListener(type, (ev) => {
          let data = {};
          try { data = JSON.parse(ev.data); } catch (_) { return; }
          if (data === null || typeof data !== 'object') return;
          dispatch(type, data);
        });
      }
    },

    stop() {
      clearTimeout(this.retry);
      if (this.es) this.es.close();
      this.es = null;
      this.connected = false;
      this.status('offline', 'offline');
    },

    status(kind, text) {
      const el = $('#live');
      el.className = `live live-${kind}`;
      el.textContent = text;
    },
  };

  function dispatch(type, data) {
    if (type === 'step.output') output_buffers.add(data);
    else if ((type === 'step.finished' || type === 'task.finished') && typeof data.taskId === 'string') output_buffers.drop(data.taskId);
    if (!current || !current.onEvent) return;
    if (type === 'reset') {
      current.load();
      return;
    }
    current.onEvent(type, data);
  }

  /** What a step.output event says was left out before or of its piece. */
  function droppedMarker(ev) {
    const parts = [];
    if (Number(ev.droppedBytes) > 0 || Number(ev.dropped) > 0) {
      parts.push(Number(ev.droppedBytes) > 0 ? `${ev.droppedBytes} bytes dropped` : `${ev.dropped} piece(s) dropped`);
    }
    if (ev.truncated) parts.push('this piece was cut to 8 KiB');
    return parts.join('; ');
  }

  const MAX_BUFFERED_TASKS = 50;
  const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

  /**
   * The streamed output of running tasks, by task id (each to its last 64 KiB; at most
   * 50 tasks and 4 MiB in all, the oldest dropped first), so that a step opened after its
   * output started shows all of it. A task's buffer goes when it finishes (its record
   * has the output then), all of them when the session is lost.
   */
  const output_buffers = {
    byTask: new Map(),
    total: 0,
    add(ev) {
      if (typeof ev.taskId !== 'string' || typeof ev.data !== 'string') return;
      let chunks = this.byTask.get(ev.taskId);
      if (!chunks) {
        chunks = { parts: [], size: 0 };
        this.byTask.set(ev.taskId, chunks);
      }
      const stream = ev.stream === 'stderr' ? 'stderr' : 'stdout';
      const marker = droppedMarker(ev);
      chunks.parts.push([stream, ev.data, marker]);
      const added = ev.data.length + marker.length;
      chunks.size += added;
      this.total += added;
      while (chunks.size > MAX_OUTPUT && chunks.parts.length > 1) {
        const [, d, m] = chunks.parts.shift();
        chunks.size -= d.length + m.length;
        this.total -= d.length + m.length;
      }
      while (this.byTask.size > 1 && (this.byTask.size > MAX_BUFFERED_TASKS || this.total > MAX_BUFFERED_BYTES)) {
        this.drop(this.byTask.keys().next().value);
      }
      for (const pre of document.querySelectorAll('pre.live-output')) {
        if (pre.dataset.liveTask === ev.taskId) appendLive(pre, stream, ev.data, marker);
      }
    },
    get(taskId) {
      return this.byTask.get(taskId);
    },
    drop(taskId) {
      const chunks = this.byTask.get(taskId);
      if (!chunks) return;
      this.total -= chunks.size;
      this.byTask.delete(taskId);
    },
    clear() {
      this.byTask.clear();
      this.total = 0;
    },
  };

  /** A <pre> that shows a task's streamed output, and keeps showing it as it comes. */
  function liveOutput(taskId, label) {
    const pre = h('pre', { class: 'output live-output', tabindex: 0, 'aria-label': label, 'aria-live': 'off', data: { liveTask: taskId } });
    const chunks = output_buffers.get(taskId);
    if (chunks) for (const [stream, data, marker] of chunks.parts) appendLive(pre, stream, data, marker);
    else pre.append(h('span', { class: 'muted waiting' }, 'waiting for output…'));
    return pre;
  }

  /** Characters shown in each live box (its spans' text), kept as they change. */
  const liveSizes = new WeakMap();

  /**
   * Appends a piece of output to a live box: each span holds one Text node (pieces of
   * the same stream go into the last span while it is small); past 64 KiB whole spans
   * are dropped from the start, then the start of the first one is cut.
   */
  function appendLive(pre, stream, data, marker) {
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    const first = pre.firstChild;
    if (first && first.classList && first.classList.contains('waiting')) { first.remove(); liveSizes.set(pre, 0); }
    let size = liveSizes.get(pre) || 0;
    const add = (kind, text) => {
      if (!text) return;
      const last = pre.lastChild;
      if (last && last.dataset && last.dataset.stream === kind && last.firstChild && last.firstChild.length < 4096) {
        last.firstChild.appendData(text);
      } else {
        const span = h('span', { class: kind === 'stdout' ? null : kind, data: { stream: kind } });
        span.appendChild(document.createTextNode(text));
        pre.appendChild(span);
      }
      size += text.length;
    };
    if (marker) add('marker', `\n… ${marker}\n`);
    add(stream === 'stderr' ? 'stderr' : 'stdout', data);
    // Only the last 64 KiB stay.
    while (size > MAX_OUTPUT && pre.firstChild) {
      const span = pre.firstChild;
      const text = span.firstChild;
      const n = text ? text.length : 0;
      if (!text || size - n >= MAX_OUTPUT) {
        span.remove();
        size -= n;
      } else {
        text.deleteData(0, size - MAX_OUTPUT);
        size = MAX_OUTPUT;
      }
    }
    liveSizes.set(pre, size);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // ---------------------------------------------------------------- dialogs

  /**
   * A modal confirmation. `body` is filled by `prepare(bodyEl, setReady)`, which may load
   * things (a plan) and enables the confirm button with setReady(true). `action()` runs
   * on confirm; an error it throws is shown in the dialog, which stays open.
   */
  function confirmDialog({ title, okText, danger, prepare, action }) {
    const dialog = $('#dialog');
    const ok = $('#dialog-ok');
    const cancel = $('#dialog-cancel');
    const err = $('#dialog-error');
    $('#dialog-title').textContent = title;
    ok.textContent = okText || 'Confirm';
    ok.className = danger ? 'danger' : 'primary';
    err.hidden = true;
    const body = $('#dialog-body');
    fill(body);
    const setReady = (ready) => { ok.disabled = !ready; };
    setReady(false);
    const controller = new AbortController();
    const close = () => {
      controller.abort();
      if (dialog.open) dialog.close();
    };
    ok.addEventListener('click', async () => {
      setReady(false);
      err.hidden = true;
      try {
        await action();
        close();
      } catch (e) {
        err.textContent = e.message;
        const problems = e.body && Array.isArray(e.body.problems) ? e.body.problems : [];
        if (problems.length) err.textContent += ': ' + problems.map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join('; ');
        err.hidden = false;
        setReady(true);
      }
    }, { signal: controller.signal });
    cancel.addEventListener('click', close, { signal: controller.signal });
    dialog.addEventListener('close', () => controller.abort(), { signal: controller.signal });
    dialog.showModal();
    Promise.resolve(prepare(body, setReady)).catch((e) => body.append(errorBox(e)));
    cancel.focus();
  }

  /** Closes the confirmation dialog if it is open (its listeners go with it). */
  function closeDialog() {
    const dialog = $('#dialog');
    if (dialog && dialog.open) dialog.close();
  }

  function notice(text, kind) {
    const box = $('#notices');
    const p = h('p', { class: ['notice', kind], data: { at: Date.now() } }, text);
    box.append(p);
    setTimeout(() => p.remove(), 6000);
  }

  // ---------------------------------------------------------------- plans

  /** What an operation would do (POST .../plan): checks first, then nodes and steps. */
  function planView(plan) {
    const steps = Array.isArray(plan.steps) ? plan.steps : [];
    const nodes = Array.isArray(plan.nodes) ? plan.nodes : [];
    const checks = Array.isArray(plan.checks) ? plan.checks : [];
    const failed = checks.filter((c) => c.status === 'failed');
    const byStatus = (s) => nodes.filter((n) => n.status === s).length;
    const wrap = h('div', { class: 'plan' });
    wrap.append(h('p', { class: plan.ok ? 'ok-line' : 'error' },
      plan.ok ? 'The checks passed. ' : `${failed.length} check(s) failed: this cannot be applied. `,
      `${plan.operation || 'the operation'} on ${plan.cluster || '?'}: ${steps.length} step(s) in ${plan.waves || 0} wave(s) on ` +
      `${nodes.length} node(s)` +
      (nodes.length ? ` (${byStatus('new')} new, ${byStatus('existing')} existing${byStatus('removed') ? `, ${byStatus('removed')} removed` : ''})` : '') + '.'));
    const problems = Array.isArray(plan.problems) ? plan.problems : [];
    if (problems.length) wrap.append(h('ul', { class: 'problems' }, problems.map((p) => h('li', null, typeof p === 'string' ? p : JSON.stringify(p)))));
    if (checks.length) {
      wrap.append(h('h3', null, 'Checks'),
        h('ul', { class: 'checks' }, checks.map((c) => h('li', null, badge(c.status), ' ', h('strong', null, c.check), ': ', c.message))));
    }
    const ch = plan.changes || {};
    const changes = [];
    if (ch.nodesAdded && ch.nodesAdded.length) changes.push(`nodes added: ${ch.nodesAdded.join(', ')}`);
    if (ch.nodesRemoved && ch.nodesRemoved.length) changes.push(`nodes removed: ${ch.nodesRemoved.join(', ')}`);
    for (const c of ch.spec || []) changes.push(`${c.path} ${c.change}`);
    for (const n of ch.nodes || []) {
      const parts = [];
      if (n.servicesAdded && n.servicesAdded.length) parts.push(`+ ${n.servicesAdded.join(', ')}`);
      if (n.servicesRemoved && n.servicesRemoved.length) parts.push(`- ${n.servicesRemoved.join(', ')}`);
      for (const c of (n.config || []).concat(n.services || [])) parts.push(`${c.path} ${c.change}`);
      changes.push(`${n.node}: ${parts.join('; ')}`);
    }
    if (changes.length) wrap.append(h('h3', null, `Changes${ch.since ? ` since ${ch.since}` : ''}`), h('ul', null, changes.map((c) => h('li', null, c))));
    if (Array.isArray(plan.notes) && plan.notes.length) wrap.append(h('h3', null, 'Notes'), h('ul', null, plan.notes.map((n) => h('li', null, n))));
    if (steps.length) {
      const rows = steps.map((s, i) => h('tr', null,
        h('td', { class: 'num' }, String(s.wave)),
        h('td', null, stepText(s.step)),
        h('td', null, (s.after || []).map((j) => (steps[j] ? stepText(steps[j].step) : j)).join(', ') || '—'),
        h('td', null, s.tolerated || '')));
      wrap.append(h('details', { class: 'plan-steps' },
        h('summary', null, `${steps.length} steps`),
        table(['wave', 'step', 'after', 'may fail'], rows, { class: 'compact' })));
    }
    return wrap;
  }

  function planQuery(op, options) {
    const q = new URLSearchParams({ op });
    for (const [k, v] of Object.entries(options || {})) if (v) q.set(k, 'true');
    return q.toString();
  }

  // ---------------------------------------------------------------- charts

  /**
   * A small bar chart (inline SVG built with DOM calls) of `values` (oldest first), with
   * its largest value and the time axis; `label` names it for screen readers.
   */
  function barChart(values, label, cls) {
    const W = 300, H = 80, top = 12, bottom = 14;
    const max = Math.max(1, ...values.map((v) => (isFinite(v) ? v : 0)));
    const bw = W / Math.max(values.length, 1);
    const total = values.reduce((a, v) => a + (isFinite(v) ? v : 0), 0);
    const chart = svg('svg', {
      viewBox: `0 0 ${W} ${H}`, class: ['chart', cls], role: 'img',
      'aria-label': `${label}: ${values.length} minutes, peak ${fmtNum(max)}, total ${fmtNum(total)}`,
      preserveAspectRatio: 'none',
    });
    chart.append(svg('title', null, label));
    chart.append(svg('line', { x1: 0, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }));
    values.forEach((v, i) => {
      const val = isFinite(v) ? v : 0;
      const bh = ((H - top - bottom) * val) / max;
      if (bh <= 0) return;
      chart.append(svg('rect', { x: (i * bw + 0.5).toFixed(2), y: (H - bottom - bh).toFixed(2), width: Math.max(bw - 1, 0.5).toFixed(2), height: bh.toFixed(2), class: 'bar' },
        svg('title', null, `${values.length - i} min ago: ${fmtNum(val)}`)));
    });
    chart.append(svg('text', { x: 2, y: 10, class: 'label' }, `max ${fmtNum(max)}`));
    chart.append(svg('text', { x: 2, y: H - 2, class: 'label' }, `-${values.length} min`));
    chart.append(svg('text', { x: W - 2, y: H - 2, class: 'label end' }, 'now'));
    return chart;
  }

  function fmtNum(n) {
    if (!isFinite(n)) return '0';
    return Number.isInteger(n) ? String(n) : n.toFixed(n < 1 ? 3 : 2);
  }

  // ---------------------------------------------------------------- views

  /**
   * A view: `el` (mounted in <main>), `load()` (fetches and renders), `onEvent(type,
   * data)` (live events), `poll` (seconds between reloads while live events are off),
   * `destroy()`.
   */
  class View {
    constructor(title) {
      this.title = title;
      this.alive = true;
      this.timers = [];
      this.el = h('div', { class: 'view' });
    }
    every(ms, fn) {
      this.timers.push(setInterval(() => { if (this.alive) fn(); }, ms));
    }
    destroy() {
      this.alive = false;
      for (const t of this.timers) clearInterval(t);
      if (this.reload && this.reload.cancel) this.reload.cancel();
    }
    load() {}
  }

  // -- login

  class LoginView extends View {
    constructor(afterLogin) {
      super('Sign in');
      this.isLogin = true;
      // No name and no autocomplete: the token is not kept in the browser.
      const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
      const err = h('p', { class: 'error', role: 'alert', hidden: true });
      const button = h('button', { type: 'submit', class: 'primary', id: 'login' }, 'Sign in');
      const form = h('form', { class: 'login', method: 'post', action: '#', events: { submit: async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        button.disabled = true;
        const token = input.value.trim();
        try {
          await session.login(token);
          input.value = '';
          afterLogin();
        } catch (e) {
          err.textContent = e.status === 401 ? 'That token is not right.' : e.message;
          err.hidden = false;
          input.select();
        } finally {
          button.disabled = false;
        }
      } } },
      h('h1', null, 'Sign in'),
      session.supported
        ? h('p', null, 'This daemon needs its API token (the file named by token_file in its configuration). ' +
          'It is exchanged once for a session cookie the page cannot read; it is not stored in the browser.')
        : h('p', { class: 'error' }, 'This daemon needs a token but does not offer console sign-in (POST /v1/session is missing): update it.'),
      h('label', { for: 'token' }, 'Token'), input, button, err);
      this.el.append(form);
      this.focus = input;
    }
    load() {
      this.focus.focus();
    }
  }

  // -- clusters

  /** Whether the last operation of a cluster went well, from its view. */
  function outcomeOf(c) {
    if (c.busy) return ['running', 'running'];
    if (c.interrupted) return ['interrupted', 'interrupted'];
    if (c.report) return [`failed${c.report.operation ? ` (${c.report.operation})` : ''}`, 'failed'];
    if (!c.lastJob) return ['—', 'none'];
    return ['succeeded', 'ok'];
  }

  class ClustersView extends View {
    constructor(query) {
      super('Clusters');
      this.query = query;
      this.clusters = null;
      this.filter = h('input', { id: 'cluster-filter', type: 'search', placeholder: 'name, state, hostname', value: query.get('q') || '', events: { input: () => this.renderList() } });
      this.stateFilter = h('select', { id: 'cluster-state', events: { change: () => this.renderList() } }, h('option', { value: '' }, 'any state'));
      this.list = h('div', { class: 'cluster-list' }, message('Loading clusters…'));
      this.reload = debounce(() => this.load(), 400);
      this.poll = 5;
      this.el.append(
        h('div', { class: 'title-row' }, h('h1', null, 'Clusters')),
        this.upForm(),
        h('div', { class: 'toolbar', role: 'search' },
          h('label', { for: 'cluster-filter' }, 'Filter'), this.filter,
          h('label', { for: 'cluster-state' }, 'State'), this.stateFilter),
        this.list);
    }

    /** Bring up a cluster: paste or upload a spec, see its plan, apply it. */
    upForm() {
      const spec = h('textarea', { id: 'spec', rows: 12, spellcheck: 'false', placeholder: '{"name": "demo", "provider": {...}, "nodeGroups": [...], "services": {...}}' });
      const file = h('input', { id: 'spec-file', type: 'file', accept: '.json,application/json' });
      const planOut = h('div', { class: 'plan-out', 'aria-live': 'polite' });
      const planBtn = h('button', { type: 'submit', class: 'primary', id: 'show-plan' }, 'Show plan');
      const applyBtn = h('button', { type: 'button', class: 'danger', id: 'apply', disabled: true }, 'Apply');
      let planned = null;
      const invalidate = () => { planned = null; applyBtn.disabled = true; };
      spec.addEventListener('input', invalidate);
      file.addEventListener('change', async () => {
        const f = file.files && file.files[0];
        if (!f) return;
        if (f.size > 1024 * 1024) { fill(planOut, message('That file is larger than 1 MiB: not a cluster spec.', 'error')); return; }
        spec.value = await f.text();
        invalidate();
        fill(planOut, message(`Read ${f.name}. Show the plan next.`));
      });
      const parse = (text) => {
        let value;
        try { value = JSON.parse(text); } catch (e) { throw new ApiError(0, `The spec is not JSON: ${e.message}`); }
        if (!value || typeof value !== 'object' || Array.isArray(value) || typeof value.name !== 'string' || !value.name) {
          throw new ApiError(0, 'The spec must be a JSON object with a "name".');
        }
        return value;
      };
      const form = h('form', { class: 'up-form', action: '#', events: { submit: async (ev) => {
        ev.preventDefault();
        invalidate();
        planBtn.disabled = true;
        fill(planOut, message('Planning…'));
        // The text planned is the text applied: taken now, and Apply only while the
        // form still holds it.
        const text = spec.value;
        try {
          const value = parse(text);
          const plan = await api('POST', `/v1/clusters/${encodeURIComponent(value.name)}/plan?op=up`, text);
          fill(planOut, planView(plan));
          if (plan.ok && spec.value === text) { planned = { name: value.name, text }; applyBtn.disabled = false; }
        } catch (e) {
          fill(planOut, errorBox(e, 'No plan'));
        } finally {
          planBtn.disabled = false;
        }
      } } },
      h('label', { for: 'spec' }, 'Cluster spec (JSON)'), spec,
      h('div', { class: 'row' }, h('label', { for: 'spec-file' }, 'or upload a file'), file),
      h('div', { class: 'buttons' }, planBtn, applyBtn),
      planOut);
      applyBtn.addEventListener('click', async () => {
        if (!planned || planned.text !== spec.value) { invalidate(); return; }
        const { name, text } = planned;
        applyBtn.disabled = true;
        try {
          const r = await api('POST', '/v1/clusters', text);
          notice(`up started on ${name} (${r && r.jobId ? r.jobId : 'job started'})`, 'ok');
          location.hash = route('clusters', name);
        } catch (e) {
          planOut.prepend(errorBox(e, 'Not applied'));
          applyBtn.disabled = false;
        }
      });
      return h('details', { class: 'card', id: 'up', open: this.query.get('up') === '1' }, h('summary', null, 'Bring up a cluster'), form);
    }

    async load() {
      try {
        const data = await api('GET', '/v1/clusters');
        if (!this.alive) return;
        this.clusters = Array.isArray(data.clusters) ? data.clusters : [];
        const states = [...new Set(this.clusters.map((c) => c.state))].sort();
        const chosen = this.stateFilter.value;
        fill(this.stateFilter, h('option', { value: '' }, 'any state'), states.map((s) => h('option', { value: s, selected: s === chosen }, s)));
        this.renderList();
      } catch (e) {
        if (this.alive) fill(this.list, errorBox(e, 'Cannot list clusters'));
      }
    }

    renderList() {
      if (!this.clusters) return;
      const q = this.filter.value.trim().toLowerCase();
      const st = this.stateFilter.value;
      const shown = this.clusters.filter((c) => (!st || c.state === st) &&
        (!q || [c.name, c.state, ...(c.nodes || []).map((n) => n.hostname)].some((t) => String(t).toLowerCase().includes(q))));
      if (!this.clusters.length) {
        fill(this.list, message('No clusters yet. Bring one up from a spec above.'));
        return;
      }
      const rows = shown.map((c) => {
        const nodes = c.nodes || [];
        const services = nodes.reduce((n, node) => n + (node.services || []).length, 0);
        const [outcome, kind] = outcomeOf(c);
        return h('tr', { data: { cluster: c.name } },
          h('th', { scope: 'row' }, h('a', { href: route('clusters', c.name) }, c.name)),
          h('td', null, badge(c.state), c.busy ? [' ', badge('busy')] : null),
          h('td', { class: 'num' }, String(nodes.length)),
          h('td', { class: 'num' }, String(services)),
          h('td', null, c.lastJob || '—'),
          h('td', null, badge(outcome, kind)),
          h('td', null, when(c.updatedAt)));
      });
      fill(this.list, 
        table(['Cluster', 'State', 'Nodes', 'Services', 'Last operation', 'Outcome', 'Changed'], rows, { class: 'clusters' }),
        shown.length < this.clusters.length ? message(`${this.clusters.length - shown.length} hidden by the filter.`) : null);
    }

    onEvent(type) {
      if (type.startsWith('op.') || type === 'step.finished') this.reload();
    }
  }

  // -- one cluster

  const SERVICE_DONE = { INSTALL: 'installed', CONFIGURE: 'configured', INITIALIZE: 'initialized', START: 'running', STOP: 'stopped', REMOVE: 'removed' };
  const jobNumber = (job) => { const m = /\.j(\d+)$/.exec(job || ''); return m ? Number(m[1]) : 0; };
  const failedRow = (t) => t.state !== 'running' && typeof t.status === 'number' && t.status !== 0;

  /** Where a timeline of `rows` starts, how long it is (running rows end now). */
  function timelineSpan(rows) {
    const now = Date.now();
    const end = (t) => (t.finishedMs !== undefined && t.finishedMs !== null ? t.finishedMs : Math.max(now, t.startedMs));
    const t0 = Math.min(...rows.map((t) => t.startedMs));
    const t1 = Math.max(...rows.map(end));
    return { end, t0, span: Math.max(t1 - t0, 1000) };
  }

  /** A bar's title: the step, its attempt, how it went and for how long. */
  function barText(t, status, dur) {
    return `${stepText(t.step)}, attempt ${t.attempt}: ${status === 'running' ? 'running for' : status === 'ok' ? 'done in' : `failed (status ${t.status}) after`} ${fmtDuration(dur)}`;
  }

  class ClusterPage extends View {
    constructor(name) {
      super(name);
      this.name = name;
      this.cluster = null;
      this.tasks = [];
      this.job = null; // the operation shown in the timeline
      this.follow = true; // follow the newest operation
      this.selected = null; // {task: taskId} or {node: nodeId}
      this.poll = 3;
      this.reload = debounce(() => this.load(), 300);
      this.head = h('div', { class: 'cluster-head' }, h('h1', null, name), message('Loading…'));
      this.report = h('section', { class: 'report', 'aria-label': 'Last failure' });
      this.nodesBox = h('section', { class: 'nodes', 'aria-labelledby': 'nodes-h' });
      this.timeline = h('section', { class: 'timeline-box', 'aria-labelledby': 'timeline-h' });
      this.detail = h('section', { class: 'detail', id: 'detail', 'aria-live': 'polite' });
      this.running = h('section', { class: 'running', 'aria-labelledby': 'running-h' });
      this.el.append(h('p', { class: 'crumbs' }, h('a', { href: route('clusters') }, 'Clusters'), ' / ', name),
        this.head, this.report, this.timeline, this.running, this.detail, this.nodesBox);
      // Running bars grow with the clock: their sizes and titles change, nothing is rebuilt
      // (an open <select>, the focus and the scroll position stay).
      this.every(1000, () => { if (this.tasks.some((t) => t.state === 'running' && t.jobId === this.job)) this.tickTimeline(); });
    }

    async load() {
      let c;
      try {
        c = await api('GET', `/v1/clusters/${encodeURIComponent(this.name)}?tasks=true`);
      } catch (e) {
        if (!this.alive) return;
        if (e.status === 404) {
          fill(this.head, h('h1', null, this.name), message(`There is no cluster named "${this.name}" (any more).`, 'error'));
          for (const s of [this.report, this.nodesBox, this.timeline, this.detail, this.running]) fill(s);
        } else {
          fill(this.head, h('h1', null, this.name), errorBox(e, 'Cannot load the cluster'));
        }
        return;
      }
      if (!this.alive) return;
      this.cluster = c;
      this.tasks = Array.isArray(c.tasks) ? c.tasks : [];
      const jobs = this.jobs();
      if (this.follow || !jobs.includes(this.job)) this.job = jobs.includes(c.lastJob) ? c.lastJob : jobs[0] || null;
      this.render();
    }

    jobs() {
      return [...new Set(this.tasks.map((t) => t.jobId))].sort((a, b) => jobNumber(b) - jobNumber(a));
    }

    /** Re-renders parts whose data changed only (keeps scroll positions and focus). */
    render() {
      const c = this.cluster;
      const sel = JSON.stringify(this.selected);
      if (this.changed('head', [c.name, c.state, c.busy, c.interrupted, c.lastJob, c.stepsDone, c.stepsFailed, c.createdAt, c.updatedAt])) this.renderHead();
      if (this.changed('report', c.report || null)) this.renderReport();
      this.renderRunning();
      if (this.changed('timeline', [sel, this.job, c.lastJob, (c.nodes || []).map((n) => [n.id, n.hostname]), this.tasks.map((t) => [t.taskId, t.state, t.status, t.startedMs, t.finishedMs])])) this.renderTimeline();
      if (this.changed('detail', [sel, this.detailData()])) this.renderDetail();
      if (this.changed('nodes', [sel, c.nodes, this.tasks.map((t) => [t.taskId, t.state, t.status])])) this.renderNodes();
    }

    changed(part, data) {
      this.sigs = this.sigs || {};
      const sig = JSON.stringify(data);
      if (this.sigs[part] === sig) return false;
      this.sigs[part] = sig;
      return true;
    }

    /** What the detail panel shows, to tell whether it changed. */
    detailData() {
      const sel = this.selected;
      if (!sel) return null;
      if (sel.node) return [(this.cluster.nodes || []).find((n) => n.id === sel.node), this.tasks.filter((t) => parseStep(t.step).node === sel.node).map((t) => [t.taskId, t.state, t.status, t.finishedMs])];
      const t = this.tasks.find((x) => x.taskId === sel.task);
      return t ? this.tasks.filter((x) => x.step === t.step && x.jobId === t.jobId) : null;
    }

    renderHead() {
      const c = this.cluster;
      const [outcome, kind] = outcomeOf(c);
      const busy = c.busy;
      const action = (id, label, fn, danger) => h('button', { type: 'button', id, class: danger ? 'danger' : null, disabled: busy, title: busy ? 'an operation is running' : null, events: { click: fn } }, label);
      fill(this.head, 
        h('div', { class: 'title-row' }, h('h1', null, c.name), badge(c.state), busy ? badge('busy') : null),
        facts([
          ['Last operation', c.lastJob ? [c.lastJob, ' ', badge(outcome, kind)] : '—'],
          ['Steps', `${c.stepsDone} done, ${c.stepsFailed} not done`],
          ['Created', when(c.createdAt)],
          ['Changed', when(c.updatedAt)],
          ['Interrupted', c.interrupted ? 'yes: run the operation again to resume' : null],
        ]),
        h('div', { class: 'actions' },
          action('reconfigure', 'Reconfigure…', () => this.operate('reconfigure')),
          action('restart-services', 'Restart services…', () => this.operate('restart-services')),
          action('take-down', 'Take down…', () => this.operate('down'), true)));
    }

    renderReport() {
      const r = this.cluster.report;
      if (!r) { fill(this.report); return; }
      const failed = Array.isArray(r.failed) ? r.failed : [];
      fill(this.report, h('div', { class: 'error' },
        h('h2', null, `${r.operation || 'The operation'} ${r.job || ''} did not finish`),
        h('ul', null, failed.map((f) => h('li', null,
          h('button', { type: 'button', class: 'link', data: { taskId: f.taskId }, events: { click: () => this.select({ task: f.taskId }) } }, String(f.step || f.taskId)),
          ` failed after ${f.attempts} attempt(s), status ${f.status}`))),
        r.notRun ? h('p', null, `${r.notRun} step(s) were not started.`) : null,
        (r.notes || []).map((n) => h('p', null, 'Note: ', n)),
        r.next ? h('p', null, 'Next: ', r.next) : null));
    }

    /** Hostname of a node id (else the id). */
    hostname(nodeId) {
      const n = (this.cluster.nodes || []).find((x) => x.id === nodeId);
      return n ? n.hostname : nodeId;
    }

    /** Each service's state on each node, from the newest task of its steps. */
    serviceStates() {
      const latest = new Map();
      for (const t of this.tasks) {
        const p = parseStep(t.step);
        if (!p.service) continue;
        const key = `${p.node} ${p.service}`;
        const prev = latest.get(key);
        if (!prev || t.startedMs > prev.startedMs || (t.startedMs === prev.startedMs && t.attempt > prev.attempt)) latest.set(key, t);
      }
      const state = (node, service) => {
        const t = latest.get(`${node} ${service}`);
        if (!t) return ['not started', 'none'];
        const task = t.taskName;
        if (t.state === 'running') return [`${task.toLowerCase()} running`, 'running'];
        if (failedRow(t)) return [`${task.toLowerCase()} failed`, 'failed'];
        return [SERVICE_DONE[task] || `${task.toLowerCase()} done`, SERVICE_DONE[task] === 'running' ? 'ok' : 'done'];
      };
      return state;
    }

    renderNodes() {
      const nodes = this.cluster.nodes || [];
      const state = this.serviceStates();
      const rows = nodes.map((n) => h('tr', { data: { node: n.id }, class: this.selected && this.selected.node === n.id ? 'selected' : null },
        h('th', { scope: 'row' }, h('button', { type: 'button', class: 'link node-link', data: { node: n.id }, events: { click: () => this.select({ node: n.id }) } }, n.hostname)),
        h('td', null, n.id),
        h('td', null, n.address || '—'),
        h('td', { class: 'wrap' }, n.providerid || '—'),
        h('td', null, h('ul', { class: 'services' }, (n.services || []).map((s) => {
          const [text, kind] = state(n.id, s);
          return h('li', null, s, ' ', badge(text, kind));
        })))));
      fill(this.nodesBox, h('h2', { id: 'nodes-h' }, `Nodes (${nodes.length})`),
        nodes.length ? table(['Hostname', 'Node', 'Address', 'Provider id', 'Services'], rows, { class: 'node-table' }) : message('No node has been touched yet.'));
    }

    /** The operation's steps per node, each attempt a bar at when it ran (Gantt-like). */
    renderTimeline() {
      if (!this.cluster) return;
      const jobs = this.jobs();
      const rows = this.tasks.filter((t) => t.jobId === this.job);
      const select = h('select', { id: 'job', events: { change: () => {
        this.job = select.value;
        this.follow = this.job === jobs[0];
        this.renderTimeline();
        this.renderRunning();
      } } }, jobs.map((j) => h('option', { value: j, selected: j === this.job }, j)));
      const header = h('div', { class: 'title-row' }, h('h2', { id: 'timeline-h' }, 'Timeline'),
        jobs.length ? h('span', { class: 'field' }, h('label', { for: 'job' }, 'Operation'), select) : null);
      if (!rows.length) {
        fill(this.timeline, header, message('No step has run yet.'));
        return;
      }
      const last = this.cluster.lastJob;
      const idle = last && last !== this.job && !jobs.includes(last) && jobNumber(last) > jobNumber(this.job)
        ? message(`The last operation, ${last}, had no step to run; this is ${this.job}.`) : null;
      const { end, t0, span } = timelineSpan(rows);
      // A failed attempt that a later attempt of its step replaced.
      const lastAttempt = new Map();
      for (const t of rows) lastAttempt.set(t.step, Math.max(lastAttempt.get(t.step) || 0, t.attempt));
      const retried = new Set(rows.filter((t) => t.attempt < lastAttempt.get(t.step)).map((t) => t.taskId));
      // One row per node, in the cluster's order; lanes inside for steps that overlap.
      const order = (this.cluster.nodes || []).map((n) => n.id);
      const byNode = new Map();
      for (const t of rows.slice().sort((a, b) => a.startedMs - b.startedMs || a.attempt - b.attempt)) {
        const node = parseStep(t.step).node;
        if (!byNode.has(node)) byNode.set(node, []);
        byNode.get(node).push(t);
      }
      const nodes = [...byNode.keys()].sort((a, b) => (order.indexOf(a) + 1 || 1e9) - (order.indexOf(b) + 1 || 1e9) || a.localeCompare(b));
      const pct = (ms) => `${((100 * ms) / span).toFixed(3)}%`;
      const geo = { rows, t0, bars: [], ticks: [], total: null };
      const grid = h('div', { class: 'gantt', role: 'list', 'aria-label': `Steps of ${this.job} per node` });
      const ticks = h('div', { class: 'gantt-axis', 'aria-hidden': 'true' }, h('span', { class: 'gantt-label' }),
        h('div', { class: 'gantt-track' }, [0, 0.25, 0.5, 0.75, 1].map((f) => {
          const tick = h('span', { class: 'tick' }, `+${fmtDuration(f * span)}`);
          tick.style.left = `${f * 100}%`;
          geo.ticks.push([tick, f]);
          return tick;
        })));
      grid.append(ticks);
      for (const node of nodes) {
        const lanes = [];
        const track = h('div', { class: 'gantt-track' });
        for (const t of byNode.get(node)) {
          const s = t.startedMs - t0;
          const e = end(t) - t0;
          let lane = lanes.findIndex((last) => last <= s);
          if (lane < 0) { lane = lanes.length; lanes.push(e); } else lanes[lane] = e;
          const p = parseStep(t.step);
          const status = t.state === 'running' ? 'running' : failedRow(t) ? (retried.has(t.taskId) ? 'retried' : 'failed') : 'ok';
          const label = `${p.task}${p.service ? ' ' + p.service : ''}${t.attempt > 1 ? ` #${t.attempt}` : ''}`;
          const desc = barText(t, status, end(t) - t.startedMs);
          const bar = h('button', {
            type: 'button', class: ['bar', `bar-${status}`, this.selected && this.selected.task === t.taskId && 'selected'],
            title: desc, 'aria-label': desc, data: { taskId: t.taskId, status },
            events: { click: () => this.select({ task: t.taskId }) },
          }, h('span', null, label));
          bar.style.left = pct(s);
          bar.style.width = `max(${pct(Math.max(e - s, 0))}, 4px)`;
          bar.style.top = `${lane * 1.75}rem`;
          geo.bars.push([bar, t, status]);
          track.append(bar);
        }
        track.style.height = `${Math.max(lanes.length, 1) * 1.75}rem`;
        grid.append(h('div', { class: ['gantt-row', this.selected && this.selected.node === node && 'selected'], role: 'listitem', data: { node } },
          h('button', { type: 'button', class: 'gantt-label link', title: node, data: { nodeLabel: node }, events: { click: () => this.select({ node }) } }, this.hostname(node)),
          track));
      }
      const count = (st) => rows.filter((t) => (st === 'running' ? t.state === 'running' : st === 'failed' ? failedRow(t) : !failedRow(t) && t.state !== 'running')).length;
      keepFocus(this.timeline, 'taskId', () => {
        const scroller = this.timeline.querySelector('.gantt-scroll');
        const scroll = scroller ? scroller.scrollTop : 0;
        const box = h('div', { class: 'gantt-scroll' }, grid);
        geo.total = h('span', null, fmtDuration(span));
        fill(this.timeline, header, idle,
          h('p', { class: 'legend' }, `${rows.length} attempt(s) over `, geo.total, ': ',
            badge(`${count('ok')} done`, 'ok'), ' ', badge(`${count('running')} running`, 'running'), ' ', badge(`${count('failed')} failed`, 'failed'),
            retried.size ? [' ', badge(`${retried.size} retried`, 'retried')] : null),
          box);
        box.scrollTop = scroll;
      });
      this.geo = geo;
    }

    /** The clock moved: bars placed and sized again, running ones' titles, the axis. */
    tickTimeline() {
      const geo = this.geo;
      if (!geo || !geo.rows.length || !this.timeline.contains(geo.total)) return;
      const { end, t0, span } = timelineSpan(geo.rows);
      const pct = (ms) => `${((100 * ms) / span).toFixed(3)}%`;
      for (const [bar, t, status] of geo.bars) {
        const s = t.startedMs - t0;
        const e = end(t) - t0;
        bar.style.left = pct(s);
        bar.style.width = `max(${pct(Math.max(e - s, 0))}, 4px)`;
        if (status === 'running') {
          const desc = barText(t, status, end(t) - t.startedMs);
          bar.title = desc;
          bar.setAttribute('aria-label', desc);
        }
      }
      for (const [tick, f] of geo.ticks) tick.textContent = `+${fmtDuration(f * span)}`;
      geo.total.textContent = fmtDuration(span);
    }

    /** The output of the steps running now, as it streams. */
    renderRunning() {
      const running = this.tasks.filter((t) => t.state === 'running');
      const shown = new Set([...this.running.querySelectorAll('pre.live-output')].map((p) => p.dataset.liveTask));
      if (running.length === shown.size && running.every((t) => shown.has(t.taskId))) return;
      if (!running.length) { fill(this.running); return; }
      fill(this.running, h('h2', { id: 'running-h' }, `Running now (${running.length})`),
        h('div', { class: 'live-grid' }, running.map((t) => h('div', { class: 'live-box', data: { taskId: t.taskId } },
          h('h3', null, h('button', { type: 'button', class: 'link', events: { click: () => this.select({ task: t.taskId }) } }, stepText(t.step)),
            ' ', h('span', { class: 'muted' }, `on ${this.hostname(parseStep(t.step).node)}, attempt ${t.attempt}`)),
          liveOutput(t.taskId, `Output of ${stepText(t.step)}`)))));
    }

    select(sel) {
      this.selected = sel;
      this.renderDetail();
      this.renderTimeline();
      this.renderNodes();
      const heading = this.detail.querySelector('h2');
      if (heading) {
        heading.tabIndex = -1;
        heading.focus();
        this.detail.scrollIntoView({ block: 'nearest' });
      }
    }

    renderDetail() {
      const sel = this.selected;
      if (!sel || !this.cluster) { fill(this.detail); return; }
      const close = h('button', { type: 'button', class: 'quiet close', events: { click: () => { this.selected = null; this.renderDetail(); this.renderTimeline(); this.renderNodes(); } } }, 'Close');
      if (sel.node) {
        const n = (this.cluster.nodes || []).find((x) => x.id === sel.node) || { id: sel.node, hostname: sel.node, services: [], endpoints: [] };
        const state = this.serviceStates();
        const steps = this.tasks.filter((t) => parseStep(t.step).node === n.id).sort((a, b) => b.startedMs - a.startedMs);
        fill(this.detail, h('div', { class: 'card' },
          h('div', { class: 'title-row' }, h('h2', null, `Node ${n.hostname}`), close),
          facts([
            ['Node', n.id], ['Group', n.group], ['Hostname', n.hostname], ['Address', n.address], ['Provider id', n.providerid],
            ['Services', (n.services || []).length ? h('ul', { class: 'services' }, n.services.map((s) => { const [t, k] = state(n.id, s); return h('li', null, s, ' ', badge(t, k)); })) : '—'],
            ['Endpoints', (n.endpoints || []).length ? h('ul', null, n.endpoints.map((e) => h('li', null, `${e.service}: `, maybeLink(e.url)))) : null],
            ['Log in', n.ssh && n.address ? `ssh ${n.ssh.identityfile ? `-i ${n.ssh.identityfile} ` : ''}-p ${n.ssh.port} ${n.ssh.user}@${n.address}` : null],
          ]),
          h('h3', null, `Its steps (${steps.length})`),
          table(['Step', 'Operation', 'Attempt', 'State', 'Duration'], steps.map((t) => h('tr', null,
            h('td', null, h('button', { type: 'button', class: 'link', data: { taskId: t.taskId }, events: { click: () => this.select({ task: t.taskId }) } }, stepText(t.step))),
            h('td', null, t.jobId), h('td', { class: 'num' }, String(t.attempt)),
            h('td', null, this.stateBadge(t)),
            h('td', null, fmtDuration((t.finishedMs || Date.now()) - t.startedMs)))), { class: 'compact' })));
        return;
      }
      const t = this.tasks.find((x) => x.taskId === sel.task);
      if (!t) {
        fill(this.detail, h('div', { class: 'card' }, h('div', { class: 'title-row' }, h('h2', null, 'Step'), close), message(`Task ${sel.task} is not part of this cluster's record.`)));
        return;
      }
      const attempts = this.tasks.filter((x) => x.step === t.step && x.jobId === t.jobId).sort((a, b) => a.attempt - b.attempt);
      const p = parseStep(t.step);
      fill(this.detail, h('div', { class: 'card step-detail', data: { step: t.step } },
        h('div', { class: 'title-row' }, h('h2', null, `Step ${stepText(t.step)}`), close),
        facts([['Node', h('button', { type: 'button', class: 'link', events: { click: () => this.select({ node: p.node }) } }, this.hostname(p.node))],
          ['Service', p.service], ['Operation', t.jobId], ['Attempts', String(attempts.length)]]),
        attempts.map((a) => this.attemptView(a, a.taskId === t.taskId))));
    }

    stateBadge(t) {
      if (t.state === 'running') return badge('running');
      return failedRow(t) ? badge(`failed (${t.status})`, 'failed') : badge('done', 'ok');
    }

    attemptView(a, chosen) {
      const dur = (a.finishedMs || Date.now()) - a.startedMs;
      return h('section', { class: ['attempt', chosen && 'chosen'], data: { taskId: a.taskId } },
        h('h3', null, `Attempt ${a.attempt} `, this.stateBadge(a)),
        facts([['Task', a.taskId], ['Task name', a.taskName], ['Status', a.status !== undefined ? String(a.status) : null],
          ['Started', when(a.startedAt)], ['Finished', when(a.finishedAt)],
          ['Duration', `${fmtDuration(dur)}${a.state === 'running' ? ' so far' : ''}`],
          ['Sent', a.sends > 1 ? `${a.sends} times (resumed after an interruption)` : null]]),
        a.state === 'running' ? [h('h4', null, 'Live output'), liveOutput(a.taskId, `Live output of attempt ${a.attempt}`)] : null,
        a.stdout ? [h('h4', null, 'stdout (last part)'), output(a.stdout, `stdout of attempt ${a.attempt}`, 'stdout')] : null,
        a.stderr ? [h('h4', null, 'stderr (last part)'), output(a.stderr, `stderr of attempt ${a.attempt}`, 'stderr')] : null,
        a.state !== 'running' && !a.stdout && !a.stderr ? message('No output.') : null);
    }

    /** Reconfigure, restart services or take down: the plan first, then a confirmation. */
    operate(op) {
      const name = this.name;
      const titles = { reconfigure: `Reconfigure ${name}`, 'restart-services': `Restart the services of ${name}`, down: `Take ${name} down` };
      const oks = { reconfigure: 'Reconfigure', 'restart-services': 'Restart services', down: 'Take down' };
      const opts = { restart: false, force: false };
      let specText = '';
      // Plan requests are numbered: only the answer to the latest counts, and what is
      // confirmed is what that plan was made for.
      let seq = 0;
      let planned = null;
      confirmDialog({
        title: titles[op],
        okText: oks[op],
        danger: op !== 'reconfigure',
        prepare: (body, setReady) => {
          const out = h('div', { class: 'plan-out', 'aria-live': 'polite' });
          const plan = async () => {
            const n = ++seq;
            planned = null;
            setReady(false);
            fill(out, message('Planning…'));
            const want = { text: specText, restart: opts.restart, force: opts.force };
            try {
              const p = await api('POST', `/v1/clusters/${encodeURIComponent(name)}/plan?${planQuery(op, { restart: want.restart, force: want.force })}`, op === 'reconfigure' && want.text.trim() ? want.text : undefined);
              if (n !== seq) return;
              fill(out, planView(p));
              if (p.ok) planned = want;
              setReady(!!p.ok);
            } catch (e) {
              if (n === seq) fill(out, errorBox(e, 'No plan'));
            }
          };
          if (op === 'reconfigure') {
            const ta = h('textarea', { id: 'reconfigure-spec', rows: 8, spellcheck: 'false', placeholder: 'empty: the spec it last ran with', events: { input: () => { specText = ta.value; seq += 1; planned = null; setReady(false); fill(out, message('Changed: plan again.')); } } });
            const restart = h('input', { type: 'checkbox', id: 'reconfigure-restart', events: { change: () => { opts.restart = restart.checked; plan(); } } });
            body.append(h('p', null, 'Sends CONFIGURE to every service again (only to what changed, with a changed spec).'),
              h('label', { for: 'reconfigure-spec' }, 'Changed spec (optional, JSON)'), ta,
              h('div', { class: 'row' }, restart, h('label', { for: 'reconfigure-restart' }, 'then restart the services')),
              h('div', { class: 'buttons' }, h('button', { type: 'button', events: { click: plan } }, 'Plan again')));
          } else if (op === 'down') {
            const force = h('input', { type: 'checkbox', id: 'down-force', events: { change: () => { opts.force = force.checked; plan(); } } });
            body.append(h('p', null, 'Stops and removes every service, then deletes the machines.'),
              h('div', { class: 'row' }, force, h('label', { for: 'down-force' }, 'force: delete the machines without STOP and REMOVE')));
          } else {
            body.append(h('p', null, 'Stops every service, then starts them again.'));
          }
          body.append(out);
          return plan();
        },
        action: async () => {
          const want = planned;
          if (!want) throw new ApiError(0, 'plan first');
          let r;
          if (op === 'down') r = await api('DELETE', `/v1/clusters/${encodeURIComponent(name)}${want.force ? '?force=true' : ''}`);
          else if (op === 'reconfigure') r = await api('POST', `/v1/clusters/${encodeURIComponent(name)}/reconfigure${want.restart ? '?restart=true' : ''}`, want.text.trim() ? want.text : undefined);
          else r = await api('POST', `/v1/clusters/${encodeURIComponent(name)}/restart-services`);
          this.follow = true;
          notice(`${r && r.operation ? r.operation : op} started on ${name}${r && r.jobId ? ` (${r.jobId})` : ''}`, 'ok');
          this.load();
        },
      });
    }

    onEvent(type, d) {
      if (d.cluster !== undefined && d.cluster !== this.name) return;
      if (type === 'op.started') {
        this.follow = true;
        if (typeof d.jobId === 'string') this.job = d.jobId;
        this.reload();
      } else if (type === 'op.finished') {
        this.reload();
      } else if (type === 'step.started' && d.cluster === this.name && typeof d.taskId === 'string') {
        if (!this.tasks.some((t) => t.taskId === d.taskId)) {
          const step = typeof d.step === 'string' && d.step.split(' ').length >= 2 ? d.step : [String(d.action || d.step || '').toUpperCase(), d.node, d.service].filter(Boolean).join(' ');
          this.tasks.push({ taskId: d.taskId, jobId: d.jobId, step, taskName: parseStep(step).task, attempt: d.attempt || 1, state: 'running', sends: 1, startedMs: Date.now(), startedAt: new Date().toISOString() });
          if (this.follow && d.jobId) this.job = d.jobId;
          this.renderTimeline();
          this.renderRunning();
        }
        this.reload();
      } else if (type === 'step.finished' && d.cluster === this.name) {
        const t = this.tasks.find((x) => x.taskId === d.taskId);
        if (t && t.state === 'running') {
          t.state = 'done';
          if (typeof d.status === 'number') t.status = d.status;
          t.finishedMs = typeof d.durationMs === 'number' ? t.startedMs + d.durationMs : Date.now();
          this.renderTimeline();
        }
        this.reload();
      }
    }
  }

  // -- tasks

  const TASK_FILTERS = ['state', 'plugin', 'name', 'cluster'];

  class TasksView extends View {
    constructor(query) {
      super('Tasks');
      this.query = query;
      this.rows = [];
      this.next = null;
      this.poll = 10;
      this.reload = debounce(() => this.load(), 1000);
      this.body = h('div', null, message('Loading tasks…'));
      const field = (key, label, input) => h('span', { class: 'field' }, h('label', { for: `tf-${key}` }, label), input);
      const inputs = {
        state: h('select', { id: 'tf-state', name: 'state' }, ['', 'queued', 'running', 'done'].map((s) => h('option', { value: s, selected: query.get('state') === s }, s || 'any'))),
        plugin: h('input', { id: 'tf-plugin', name: 'plugin', value: query.get('plugin') || '', placeholder: 'shell' }),
        name: h('input', { id: 'tf-name', name: 'name', value: query.get('name') || '', placeholder: 'CONFIGURE' }),
        cluster: h('input', { id: 'tf-cluster', name: 'cluster', value: query.get('cluster') || '' }),
      };
      const form = h('form', { class: 'toolbar', role: 'search', action: '#', events: { submit: (ev) => {
        ev.preventDefault();
        const q = new URLSearchParams();
        for (const k of TASK_FILTERS) if (inputs[k].value.trim()) q.set(k, inputs[k].value.trim());
        const target = `#/tasks${q.toString() ? '?' + q : ''}`;
        if (location.hash === target) this.load(); else location.hash = target;
      } } },
      field('state', 'State', inputs.state), field('plugin', 'Plugin', inputs.plugin), field('name', 'Task name', inputs.name),
      field('cluster', 'Cluster', inputs.cluster), h('button', { type: 'submit', class: 'primary' }, 'Filter'));
      this.el.append(h('h1', null, 'Tasks'), form, this.body);
    }

    url(before) {
      const q = new URLSearchParams();
      for (const k of TASK_FILTERS) if (this.query.get(k)) q.set(k, this.query.get(k));
      q.set('limit', '50');
      if (before) q.set('before', before);
      return `/v1/tasks?${q}`;
    }

    async load() {
      try {
        const data = await api('GET', this.url());
        if (!this.alive) return;
        this.rows = Array.isArray(data.tasks) ? data.tasks : [];
        this.next = data.next || null;
        this.render();
      } catch (e) {
        if (!this.alive) return;
        if (missing(e)) fill(this.body, message('This daemon cannot list tasks yet (GET /v1/tasks is missing). Open one by its id:', 'error'), openById());
        else fill(this.body, errorBox(e, 'Cannot list tasks'));
      }
    }

    async more() {
      try {
        const data = await api('GET', this.url(this.next));
        if (!this.alive) return;
        this.rows = this.rows.concat(Array.isArray(data.tasks) ? data.tasks : []);
        this.next = data.next || null;
        this.render();
      } catch (e) {
        this.body.append(errorBox(e, 'Cannot load more'));
      }
    }

    render() {
      const rows = this.rows.map((t) => {
        const started = parseTime(t.startedAt);
        const finished = parseTime(t.finishedAt);
        return h('tr', { data: { taskId: t.taskId } },
          h('th', { scope: 'row', class: 'wrap' }, h('a', { href: route('tasks', t.taskId) }, t.taskId)),
          h('td', null, t.taskName),
          h('td', null, badge(t.state)),
          h('td', null, t.plugin || '—'),
          h('td', null, t.clusterId ? h('a', { href: route('clusters', t.clusterId) }, t.clusterId) : '—'),
          h('td', null, when(t.submittedAt)),
          h('td', null, started !== null ? fmtDuration((finished !== null ? finished : Date.now()) - started) : '—'),
          h('td', { class: 'num' }, String(t.attempts !== undefined ? t.attempts : '')),
          h('td', null, t.status === undefined || t.status === null ? '—' : badge(String(t.status), t.status === 0 ? 'ok' : 'failed')));
      });
      fill(this.body, 
        this.rows.length ? table(['Task', 'Name', 'State', 'Plugin', 'Cluster', 'Submitted', 'Duration', 'Attempts', 'Status'], rows, { class: 'tasks' }) : message('No tasks match.'),
        this.next ? h('div', { class: 'buttons' }, h('button', { type: 'button', id: 'older', events: { click: () => this.more() } }, 'Older tasks')) : null,
        h('details', null, h('summary', null, 'Open a task by its id'), openById()));
    }

    onEvent(type) {
      if (type === 'task.started' || type === 'task.finished') this.reload();
    }
  }

  function openById() {
    const input = h('input', { id: 'task-id', required: true });
    return h('form', { class: 'toolbar', action: '#', events: { submit: (ev) => { ev.preventDefault(); if (input.value.trim()) location.hash = route('tasks', input.value.trim()); } } },
      h('label', { for: 'task-id' }, 'Task id'), input, h('button', { type: 'submit' }, 'Open'));
  }

  class TaskView extends View {
    constructor(id) {
      super(`Task ${id}`);
      this.id = id;
      this.body = h('div', null, message('Loading…'));
      this.reload = debounce(() => this.load(), 300);
      this.poll = 5;
      this.el.append(h('p', { class: 'crumbs' }, h('a', { href: route('tasks') }, 'Tasks'), ' / ', id), h('h1', null, `Task ${id}`), this.body);
    }

    async load() {
      let t;
      try {
        t = await api('GET', `/v1/tasks/${encodeURIComponent(this.id)}`);
      } catch (e) {
        if (this.alive) fill(this.body, e.status === 404 ? message(`There is no task "${this.id}".`, 'error') : errorBox(e, 'Cannot load the task'));
        return;
      }
      if (!this.alive) return;
      const submitted = parseTime(t.submittedAt);
      const started = parseTime(t.startedAt);
      const finished = parseTime(t.finishedAt);
      const res = t.result && typeof t.result === 'object' ? t.result : null;
      const rest = res ? Object.fromEntries(Object.entries(res).filter(([k]) => !['stdout', 'stderr'].includes(k))) : null;
      fill(this.body, 
        facts([
          ['Name', t.taskName], ['State', badge(t.state)], ['Status', res && res.status !== undefined ? badge(String(res.status), res.status === 0 ? 'ok' : 'failed') : null],
          ['Plugin', t.plugin], ['Cluster', t.clusterId ? h('a', { href: route('clusters', t.clusterId) }, t.clusterId) : null],
          ['Attempts', t.attempts !== undefined ? String(t.attempts) : null], ['Waiting', t.waiting],
          ['Submitted', when(t.submittedAt)], ['Started', when(t.startedAt)], ['Finished', when(t.finishedAt)],
          ['Waited', submitted !== null && started !== null ? fmtDuration(started - submitted) : null],
          ['Ran', started !== null ? fmtDuration((finished !== null ? finished : Date.now()) - started) + (finished === null ? ' so far' : '') : null],
        ]),
        t.state === 'running' ? [h('h2', null, 'Live output'), liveOutput(t.taskId || this.id, 'Live output')] : null,
        res && res.stdout ? [h('h2', null, 'stdout'), output(res.stdout, 'stdout', 'stdout')] : null,
        res && res.stderr ? [h('h2', null, 'stderr'), output(res.stderr, 'stderr', 'stderr')] : null,
        rest ? [h('h2', null, 'Result'), h('p', { class: 'muted' }, 'Values of keys that look like credentials are hidden.'), output(JSON.stringify(redact(rest), null, 2), 'Result')] : null);
    }

    onEvent(type, d) {
      if ((type === 'task.finished' || type === 'task.started') && d.taskId === this.id) this.reload();
    }
  }

  // -- plugins

  class PluginsView extends View {
    constructor() {
      super('Plugins');
      this.body = h('div', null, message('Loading plugins…'));
      this.reload = debounce(() => this.load(), 300);
      this.poll = 5;
      this.el.append(h('h1', null, 'Plugins'), this.body);
      // "retried in 12 s" counts down.
      this.every(1000, () => {
        for (const el of this.el.querySelectorAll('[data-retry-at]')) {
          const t = parseTime(el.dataset.retryAt);
          if (t !== null) el.textContent = relative(t);
        }
      });
    }

    async load() {
      let data;
      try {
        data = await api('GET', '/v1/plugins');
      } catch (e) {
        if (this.alive) fill(this.body, errorBox(e, 'Cannot list plugins'));
        return;
      }
      if (!this.alive) return;
      const plugins = Array.isArray(data.plugins) ? data.plugins : [];
      const d = data.daemon || {};
      const daemons = Array.isArray(data.daemons) ? data.daemons.filter((x) => x && x.alive && !x.stopped) : [];
      keepFocus(this.body, 'plugin', () => fill(this.body, 
        h('p', { class: 'muted' }, `Daemon ${d.name || '?'} on ${d.host || '?'}`, daemons.length > 1 ? `, one of ${daemons.length} in the fleet` : ''),
        plugins.length ? h('div', { class: 'plugin-grid' }, plugins.map((p) => this.plugin(p))) : message('No plugins are registered.')));
    }

    plugin(p) {
      const instances = Array.isArray(p.instances) ? p.instances : [];
      const sum = (k) => instances.reduce((a, i) => a + (Number(i[k]) || 0), 0);
      const key = `${p.kind}:${p.name}`;
      const rows = instances.map((i, n) => h('tr', null,
        h('td', { class: 'num' }, String(n + 1)),
        h('td', { class: 'num' }, i.pid !== null && i.pid !== undefined ? String(i.pid) : '—'),
        h('td', null, badge(i.phase || '?'), i.reason ? h('span', { class: 'reason' }, `: ${i.reason}`) : null),
        h('td', { class: 'num' }, String(i.restarts || 0), i.requestedRestarts ? ` + ${i.requestedRestarts} asked` : ''),
        h('td', { class: 'num' }, String(i.inFlight || 0)),
        h('td', null, i.retryAt ? h('span', { data: { retryAt: i.retryAt }, title: i.retryAt }, parseTime(i.retryAt) !== null ? relative(parseTime(i.retryAt)) : i.retryAt) : '—'),
        h('td', { class: 'wrap' }, i.lastError || '—')));
      const stderr = instances.filter((i) => Array.isArray(i.lastStderr) && i.lastStderr.length);
      return h('section', { class: 'card plugin', data: { plugin: p.name, kind: p.kind }, 'aria-label': `${p.kind} ${p.name}` },
        h('div', { class: 'title-row' }, h('h2', null, p.name), badge(p.kind, 'kind'), p.runnable ? null : badge('not runnable', 'failed'),
          h('button', { type: 'button', class: 'restart', data: { plugin: key }, disabled: !p.runnable, events: { click: () => this.restart(p) } }, 'Restart…')),
        p.reason ? h('p', { class: 'error' }, p.reason) : null,
        facts([['Queued', String(p.queued || 0)], ['In flight', String(sum('inFlight'))], ['Restarts', h('span', null, h('span', { class: 'restarts' }, String(sum('restarts'))), ' after crashes, ', h('span', { class: 'requested-restarts' }, String(sum('requestedRestarts'))), ' asked for')],
          ['Executable', p.executable], ['Manifest', p.manifest]]),
        instances.length ? table(['#', 'pid', 'Phase', 'Restarts', 'In flight', 'Retry', 'Last error'], rows, { class: 'compact' }) : null,
        stderr.map((i) => [h('h3', null, `Last stderr of instance ${instances.indexOf(i) + 1} before its crash`), output(i.lastStderr.join('\n'), 'Last stderr', 'stderr')]));
    }

    restart(p) {
      confirmDialog({
        title: `Restart ${p.kind} ${p.name}`,
        okText: 'Restart',
        danger: true,
        prepare: (body, setReady) => {
          const inFlight = (p.instances || []).reduce((a, i) => a + (Number(i.inFlight) || 0), 0);
          body.append(h('p', null, `Its processes are stopped and started again.${inFlight ? ` ${inFlight} task(s) in flight are retried or fail.` : ''} A failed plugin is tried again at once.`));
          setReady(true);
        },
        action: async () => {
          await api('POST', `/v1/plugins/${encodeURIComponent(p.name)}/restart`);
          notice(`restarting ${p.name}`, 'ok');
          this.load();
        },
      });
    }

    onEvent(type) {
      if (type === 'plugin.state') this.reload();
    }
  }

  // -- health

  class HealthView extends View {
    constructor() {
      super('Health');
      this.body = h('div', null, message('Loading…'));
      this.reload = debounce(() => this.load(), 3000);
      this.poll = 15;
      this.started = null;
      this.el.append(h('h1', null, 'Health'), this.body);
      this.every(1000, () => {
        const up = this.el.querySelector('.uptime');
        if (up && this.started !== null) up.textContent = fmtDuration(Date.now() - this.started);
      });
      this.every(30000, () => this.load());
    }

    async load() {
      const [stats, health] = await Promise.all([
        api('GET', '/v1/stats').catch((e) => e),
        api('GET', '/healthz').catch((e) => e),
      ]);
      if (!this.alive) return;
      const parts = [];
      const hz = health instanceof ApiError ? health.body : health;
      parts.push(h('p', { class: 'health-line' }, 'Health check: ',
        hz && typeof hz === 'object' && hz.status ? badge(hz.status, hz.status === 'ok' ? 'ok' : 'failed') : badge('unknown'),
        hz && hz.summary ? ` ${hz.summary}` : '', hz && hz.journal ? ` ${hz.journal}` : ''));
      if (stats instanceof ApiError) {
        parts.push(missing(stats) ? message('This daemon has no statistics yet (GET /v1/stats is missing): update it for charts.', 'error') : errorBox(stats, 'Cannot load statistics'));
        fill(this.body, ...parts);
        return;
      }
      const s = stats || {};
      const j = s.journal || {};
      const q = s.queue || {};
      this.started = parseTime(s.startedAt);
      if (this.started === null && isFinite(s.uptimeSecs)) this.started = Date.now() - s.uptimeSecs * 1000;
      parts.push(facts([
        ['Version', `${s.version || '?'}${s.commit ? ` (${s.commit})` : ''}`],
        ['Started', when(s.startedAt)],
        ['Uptime', h('span', { class: 'uptime' }, this.started !== null ? fmtDuration(Date.now() - this.started) : '?')],
        ['Journal', [j.place || '?', ' ', j.ok === false ? badge('cannot write', 'failed') : badge('ok'), j.problem ? ` ${j.problem}` : '']],
        ['Queue', `${q.queued || 0} queued, ${q.running || 0} running, ${q.inFlight || 0} in flight`],
        ['Draining', s.draining ? badge('draining', 'failed') : null],
      ]));
      const minutes = Array.isArray(s.minutes) ? s.minutes : [];
      const col = (k) => minutes.map((m) => Number(m[k]) || 0);
      const finished = col('finished');
      const failed = col('failed');
      const lastHour = (xs) => xs.reduce((a, b) => a + b, 0);
      parts.push(h('div', { class: 'charts' },
        // A minute's `queued` is the most tasks in flight sampled in it.
        h('figure', { class: 'card' }, barChart(col('queued'), 'Tasks in flight (max per minute)', 'c-queue'), h('figcaption', null, `Tasks in flight (max per minute; now ${q.inFlight || 0})`)),
        h('figure', { class: 'card' }, barChart(finished.map((n) => n / 60), 'Tasks per second, per minute', 'c-rate'),
          h('figcaption', null, `Tasks per second (${lastHour(finished)} finished in the last hour)`)),
        h('figure', { class: 'card' }, barChart(failed, 'Failed tasks per minute', 'c-fail'), h('figcaption', null, `Failures (${lastHour(failed)} in the last hour)`))));
      fill(this.body, ...parts);
    }

    onEvent(type) {
      if (type === 'task.finished') this.reload();
    }
  }

  // ---------------------------------------------------------------- router

  let current = null;

  const router = {
    pending: null, // the page to open after signing in

    parse() {
      const raw = location.hash || '#/clusters';
      const [path, query] = raw.split('?');
      const parts = path.replace(/^#\/?/, '').split('/').filter(Boolean);
      let decoded;
      try { decoded = parts.map(decodeURIComponent); } catch (_) { decoded = parts; }
      return { parts: decoded, query: new URLSearchParams(query || '') };
    },

    view() {
      const { parts, query } = this.parse();
      const [section, arg] = parts;
      switch (section) {
        case undefined:
        case 'clusters': return arg ? new ClusterPage(arg) : new ClustersView(query);
        case 'tasks': return arg ? new TaskView(arg) : new TasksView(query);
        case 'plugins': return new PluginsView();
        case 'health': return new HealthView();
        default: return null;
      }
    },

    render() {
      if (current) current.destroy();
      closeDialog();
      // Notices stay across the page they lead to (an operation started, then its page),
      // not further.
      for (const n of document.querySelectorAll('#notices .notice')) if (Date.now() - Number(n.dataset.at) > 1500) n.remove();
      const main = $('#main');
      if (!session.authenticated) {
        current = new LoginView(() => { live.start(); this.render(); });
        this.mark(null);
      } else {
        current = this.view();
        if (!current) {
          current = new View('Not found');
          current.el.append(h('h1', null, 'Not found'), message('There is no such page here.'), h('a', { href: '#/clusters' }, 'Clusters'));
        }
        this.mark(this.parse().parts[0] || 'clusters');
      }
      document.title = `${current.title} · Loom`;
      fill(main, current.el);
      current.load();
    },

    mark(section) {
      for (const a of document.querySelectorAll('[data-nav]')) {
        if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
    },
  };

  async function start() {
    $('#logout').addEventListener('click', () => session.logout());
    window.addEventListener('hashchange', () => {
      router.render();
      $('#main').focus({ preventScroll: true });
    });
    // While live events are off, the open page reloads now and then.
    let ticks = 0;
    setInterval(() => {
      ticks += 1;
      if (!live.connected && session.authenticated && current && current.poll && ticks % current.poll === 0 && !$('#dialog').open) current.load();
    }, 1000);
    try {
      await session.check();
    } catch (e) {
      fill($('#main'), h('h1', null, 'Loom'), errorBox(e, 'The daemon does not answer'));
      return;
    }
    if (session.authenticated) live.start();
    router.render();
  }

  start();
})();
