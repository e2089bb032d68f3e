// connwarden's live page. Once a second it reads the admin API of the server that served it
// (never another origin: the Content-Security-Policy forbids it): /metrics for the figures and
// the histograms, one page of /connections, the latest /closed, and /readyz. Polling rather
// than server-sent events: EventSource cannot send the Authorization header, and a token in a
// URL ends up in logs and history.
//
// Every value from the server reaches the page through textContent or an SVG attribute, never
// through innerHTML: a peer address or a reason can never become markup.
'use strict';

(() => {
  const REFRESH_MS = 1000;
  const HISTORY_MS = 15 * 60 * 1000;
  const SAMPLES_MS = 60 * 1000; // /metrics samples kept: the fsync p99's window
  const RATE_WINDOW_MS = 5 * 1000; // headline rates: over the last 5 s, not one refresh
  const BIN_MS = 5 * 1000; // the closes chart: closes per second averaged over 5 s bins
  const CLOSED_ROWS = 15;
  const TOKEN_KEY = 'connwarden.admin.token';
  const SVG = 'http://www.w3.org/2000/svg';

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    sort: 'age',
    order: 'desc',
    offset: 0,
    limit: 50,
    peer: '',
    samples: [], // /metrics over the last minute: [{ t, figures }], oldest first
    bins: [], // closes by reason in 5 s bins over 15 minutes: [{ start, counts: { reason: n } }]
    paused: false,
    timer: null,
    kick: null, // the connection the dialog asks about
    refreshes: 0,
  };

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat();
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const tick = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const compact = new Intl.NumberFormat(undefined, { notation: 'compact' });

  // ---- the admin API ----

  class Unauthorized extends Error {}

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { ...options, headers, cache: 'no-store' });
    if (response.status === 401) throw new Unauthorized();
    return response;
  }

  async function json(path) {
    const response = await api(path);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new ApiError(response.status, body.error ? body.error.message : response.statusText);
    }
    return body;
  }

  /** /readyz: its body is the answer whether it says 200 or 503 (starting, draining, failing). */
  async function readiness() {
    const response = await api('readyz');
    return response.json();
  }

  async function text(path) {
    const response = await api(path);
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    return response.text();
  }

  // ---- the Prometheus text format ----

  const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  /** name → [{ labels, value }] */
  function parseExposition(exposition) {
    const samples = new Map();
    for (const line of exposition.split('\n')) {
      if (line === '' || line[0] === '#') continue;
      const match = SAMPLE.exec(line);
      if (!match) continue;
      const labels = {};
      for (const [, key, value] of (match[2] || '').matchAll(LABEL)) {
        labels[key] = value.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      const name = match[1].replace(/^connwarden_/, '');
      if (!samples.has(name)) samples.set(name, []);
      samples.get(name).push({ labels, value: Number(match[3]) });
    }
    return samples;
  }

  function total(samples, name) {
    return (samples.get(name) || []).reduce((sum, s) => sum + s.value, 0);
  }

  function byLabel(samples, name, label) {
    const out = {};
    for (const s of samples.get(name) || []) out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
    return out;
  }

  /** A histogram's cumulative buckets, sorted by bound, for each value of `label` (or one). */
  function histograms(samples, name, label) {
    const out = {};
    for (const s of samples.get(`${name}_bucket`) || []) {
      const key = label ? s.labels[label] : '';
      (out[key] = out[key] || { buckets: [], count: 0, sum: 0 }).buckets.push({ le: Number(s.labels.le), count: s.value });
    }
    for (const [suffix, field] of [['_count', 'count'], ['_sum', 'sum']]) {
      for (const s of samples.get(name + suffix) || []) {
        const key = label ? s.labels[label] : '';
        if (out[key]) out[key][field] = s.value;
      }
    }
    for (const h of Object.values(out)) h.buckets.sort((a, b) => a.le - b.le);
    return out;
  }

  function figuresOf(exposition) {
    const m = parseExposition(exposition);
    return {
      live: total(m, 'connections_live'),
      opened: total(m, 'connections_opened_total'),
      closed: byLabel(m, 'connections_closed_total', 'reason'),
      received: total(m, 'items_received_total'),
      refused: total(m, 'items_refused_total'),
      acked: total(m, 'items_acknowledged_total'),
      queue: total(m, 'queue_items'),
      capacity: total(m, 'queue_capacity_items'),
      probing: total(m, 'connections_probing'),
      probes: total(m, 'keepalive_probes'),
      storms: total(m, 'keepalive_storms_total'),
      drainPending: total(m, 'drain_pending_connections'),
      fsync: histograms(m, 'sink_fsync_duration_seconds')[''] || { buckets: [], count: 0, sum: 0 },
      bounds: byLabel(m, 'detection_bound_seconds', 'reason'),
      delays: histograms(m, 'detection_delay_seconds', 'reason'),
    };
  }

  // ---- formatting ----

  function seconds(s) {
    if (!Number.isFinite(s)) return '–';
    if (s < 0.001) return `${decimal.format(s * 1e6)} µs`;
    if (s < 1) return `${decimal.format(s * 1000)} ms`;
    if (s < 60) return `${decimal.format(s)} s`;
    const two = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
    if (s < 3600) return two(Math.floor(s / 60), 'min', Math.floor(s % 60), 's');
    if (s < 86400) return two(Math.floor(s / 3600), 'h', Math.floor((s % 3600) / 60), 'min');
    return two(Math.floor(s / 86400), 'd', Math.floor((s % 86400) / 3600), 'h');
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 ? n : decimal.format(n)} ${units[i]}`;
  }

  function rate(perSecond) {
    if (!Number.isFinite(perSecond)) return '–';
    return perSecond >= 100 ? number.format(Math.round(perSecond)) : decimal.format(perSecond);
  }

  // ---- headline figures ----

  /** Growth of a counter; a counter that went down (a restarted server) counts from 0. */
  function growth(now, before) {
    return now >= before ? now - before : now;
  }

  const sumOf = (byReason) => Object.values(byReason).reduce((a, b) => a + b, 0);

  /** Keeps the last minute of samples; the one to measure rates from (about 5 s old). */
  function keepSample(figures, t) {
    state.samples.push({ t, figures });
    while (state.samples[0].t < t - SAMPLES_MS) state.samples.shift();
    const recent = state.samples.find((s) => s.t >= t - RATE_WINDOW_MS);
    return recent.t < t ? recent : state.samples[state.samples.length - 2];
  }

  function renderHeadline(f, t, base) {
    $('live-count').textContent = number.format(f.live);
    // A paced drain (POST /drain) telling connections goaway: the count falls as it goes.
    $('drain').textContent = f.drainPending > 0 ? `drain under way: ${number.format(f.drainPending)} still to be told goaway` : '';
    $('queue').textContent = number.format(f.queue);
    $('queue-capacity').textContent = `of ${number.format(f.capacity)}`;
    $('queue-fill').style.width = `${f.capacity > 0 ? Math.min(100, (100 * f.queue) / f.capacity) : 0}%`;
    $('probing').textContent = number.format(f.probing);
    $('probes').textContent = `${number.format(f.probes)} keep-alive probes unanswered`;
    // Healthy peers closed because the kernel dropped their probes: named where it shows.
    $('storms').textContent = f.storms > 0 ? `${number.format(f.storms)} probe storms (healthy peers closed: the kernel dropped probes)` : '';
    $('fsync-p99').textContent = fsyncP99(f.fsync);
    if (!base) return;
    const dt = (t - base.t) / 1000;
    const b = base.figures;
    const perSecond = (now, before) => rate(growth(now, before) / dt);
    $('opened-rate').textContent = perSecond(f.opened, b.opened);
    $('closed-rate').textContent = perSecond(sumOf(f.closed), sumOf(b.closed));
    $('items-rate').textContent = perSecond(f.received, b.received);
    $('refused-rate').textContent = `${perSecond(f.refused, b.refused)} refused / s`;
    $('acked-rate').textContent = perSecond(f.acked, b.acked);
    const syncs = f.fsync.count - b.fsync.count;
    $('fsync').textContent = syncs > 0 ? seconds((f.fsync.sum - b.fsync.sum) / syncs) : 'idle';
  }

  /** The p99 of fsync durations over the last minute, as the bucket bound that holds it. */
  function fsyncP99(fsync) {
    const first = state.samples[0].figures.fsync.buckets;
    const delta = fsync.buckets.map((b, i) => ({ le: b.le, count: b.count - (first[i] ? first[i].count : 0) }));
    const all = delta.length ? delta[delta.length - 1].count : 0;
    if (all <= 0) return 'no fsync in the last minute';
    const p99 = delta.find((b) => b.count >= 0.99 * all);
    return `p99 ≤ ${Number.isFinite(p99.le) ? seconds(p99.le) : 'over the top bucket'} (last minute)`;
  }

  // ---- charts (plain SVG) ----

  const REASON_COLOURS = {
    peer_closed: '#6b7280', reset: '#f59e0b', kicked: '#8b5cf6', completed: '#10b981', keepalive_timeout: '#ef4444',
    user_timeout: '#dc2626', heartbeat_timeout: '#f97316', idle_timeout: '#0ea5e9',
    write_timeout: '#e11d48', protocol_error: '#a16207', frame_too_large: '#854d0e', frame_timeout: '#78350f', memory_pressure: '#7c2d12', handshake_timeout: '#9d174d', tls_error: '#be185d', unauthorized: '#4c1d95',
    server_full: '#1d4ed8', too_many_connections: '#1e3a8a', max_age: '#059669', shutdown: '#374151', internal_error: '#000000',
  };
  const colourOf = (reason) => REASON_COLOURS[reason] || '#64748b';

  function svg(tag, attributes, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function svgText(parent, x, y, content, attributes = {}) {
    const node = svg('text', { x, y, ...attributes }, parent);
    node.textContent = content;
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((s) => s * magnitude).find((s) => s >= value);
  }

  /** Adds the closes since the previous sample to the 5 s bin of now. */
  function recordCloses(f, previous, t) {
    if (!previous) return;
    const start = t - (t % BIN_MS);
    let bin = state.bins[state.bins.length - 1];
    if (!bin || bin.start !== start) {
      bin = { start, counts: {} };
      state.bins.push(bin);
    }
    for (const [reason, count] of Object.entries(f.closed)) {
      const n = growth(count, previous.figures.closed[reason] || 0);
      if (n > 0) bin.counts[reason] = (bin.counts[reason] || 0) + n;
    }
    while (state.bins[0].start < t - HISTORY_MS) state.bins.shift();
  }

  function renderClosesChart(t) {
    const box = $('closes-chart');
    const width = Math.max(320, box.clientWidth);
    const height = 180;
    const pad = { left: 44, right: 8, top: 8, bottom: 22 };
    const bins = state.bins;
    // The bin in progress is averaged over the part of it that has passed.
    const perSecond = (bin, reason) => (bin.counts[reason] || 0) / (Math.max(1000, Math.min(BIN_MS, t - bin.start)) / 1000);
    const reasons = [...new Set(bins.flatMap((b) => Object.keys(b.counts)))].sort();
    const top = niceMax(Math.max(0, ...bins.flatMap((b) => reasons.map((r) => perSecond(b, r)))));
    const x = (time) => pad.left + ((time - (t - HISTORY_MS)) / HISTORY_MS) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
    const chart = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'closes per second by reason' });
    for (const v of [0, top / 2, top]) {
      svg('line', { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: 'grid' }, chart);
      svgText(chart, pad.left - 6, y(v) + 4, v >= 1000 ? compact.format(v) : tick.format(v), { class: 'axis', 'text-anchor': 'end' });
    }
    for (const minutes of [15, 10, 5, 0]) {
      svgText(chart, x(t - minutes * 60000), height - 6, minutes ? `−${minutes} min` : 'now', { class: 'axis', 'text-anchor': minutes ? 'middle' : 'end' });
    }
    // A step line per reason, at 0 where a bin is missing (no refresh then: paused or asleep).
    let points = 0;
    for (const reason of reasons) {
      const coordinates = [];
      for (const [i, bin] of bins.entries()) {
        const next = bins[i + 1];
        const end = Math.min(t, bin.start + BIN_MS);
        const v = y(perSecond(bin, reason));
        if (i === 0 || bins[i - 1].start + BIN_MS < bin.start) coordinates.push([x(bin.start), y(0)]);
        coordinates.push([x(bin.start), v], [x(end), v]);
        if (next && end < next.start) coordinates.push([x(end), y(0)]);
      }
      svg('polyline', { points: coordinates.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' '), class: 'series', stroke: colourOf(reason), 'data-reason': reason }, chart);
      points += coordinates.length;
    }
    if (!reasons.length) svgText(chart, width / 2, height / 2, 'no closes in the last 15 minutes', { class: 'empty', 'text-anchor': 'middle' });
    box.replaceChildren(chart);
    box.dataset.series = String(reasons.length);
    box.dataset.points = String(points);

    const legend = $('closes-legend');
    legend.replaceChildren(...reasons.map((reason) => {
      const closes = bins.reduce((sum, b) => sum + (b.counts[reason] || 0), 0);
      const item = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.style.background = colourOf(reason);
      item.append(swatch, `${reason} · ${number.format(closes)}`);
      return item;
    }));
  }

  /** One small bar chart per reason: closes per delay bucket, the bound as a dashed line. */
  function renderDelayCharts(f) {
    const reasons = Object.keys(f.delays)
      .filter((reason) => f.bounds[reason] !== undefined || f.delays[reason].count > 0)
      .sort((a, b) => (f.bounds[b] !== undefined) - (f.bounds[a] !== undefined) || a.localeCompare(b));
    const box = $('delay-charts');
    // Redrawn only when a count or a bound changed: most seconds, none did.
    const signature = JSON.stringify(reasons.map((r) => [r, f.bounds[r], f.delays[r].count, f.delays[r].sum]));
    if (signature === box.dataset.signature) return;
    box.dataset.signature = signature;
    box.replaceChildren(...reasons.map((reason) => delayChart(reason, f.delays[reason], f.bounds[reason])));
    box.dataset.closes = String(reasons.reduce((sum, r) => sum + f.delays[r].count, 0));
  }

  function delayChart(reason, histogram, bound) {
    const figure = document.createElement('figure');
    figure.className = 'delay';
    figure.dataset.reason = reason;
    const width = 340;
    const height = 130;
    const pad = { left: 30, right: 6, top: 14, bottom: 22 };
    const bars = histogram.buckets.map((b, i) => ({ le: b.le, count: b.count - (i ? histogram.buckets[i - 1].count : 0) }));
    const top = niceMax(Math.max(0, ...bars.map((b) => b.count)));
    const step = (width - pad.left - pad.right) / Math.max(1, bars.length);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
    const chart = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `detection delay, ${reason}` });
    svg('line', { x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0), class: 'grid' }, chart);
    svgText(chart, pad.left - 4, y(top) + 4, compact.format(top), { class: 'axis', 'text-anchor': 'end' });
    // Within the bound; in the bucket just past it (up to bound + 10 %: a timer's slack, a
    // probe's round trip); or later.
    let within = 0;
    let nearly = 0;
    bars.forEach((bar, i) => {
      const past = bound !== undefined && bar.le > bound + 1e-9;
      const late = past && bar.le > bound * 1.1 + 1e-9;
      if (!past) within += bar.count;
      else if (!late) nearly += bar.count;
      const label = Number.isFinite(bar.le) ? `≤ ${seconds(bar.le)}` : `> ${seconds(bars[i - 1] ? bars[i - 1].le : 0)}`;
      if (bar.count > 0) {
        const kind = late ? 'bar late' : past ? 'bar slack' : 'bar';
        const rect = svg('rect', { x: pad.left + i * step + 1, y: y(bar.count), width: Math.max(1, step - 2), height: y(0) - y(bar.count), class: kind }, chart);
        svg('title', {}, rect).textContent = `${label}: ${number.format(bar.count)}`;
      }
      if (i === 0 || i === bars.length - 1 || (bound !== undefined && Math.abs(bar.le - bound) < 1e-9)) {
        svgText(chart, pad.left + (i + 0.5) * step, height - 8, Number.isFinite(bar.le) ? seconds(bar.le) : '+∞', { class: 'axis', 'text-anchor': 'middle' });
      }
    });
    if (bound !== undefined) {
      const index = bars.findIndex((b) => b.le >= bound - 1e-9);
      const bx = pad.left + (index + 1) * step;
      svg('line', { x1: bx, x2: bx, y1: pad.top - 6, y2: y(0), class: 'bound' }, chart);
      const right = bx < width - 80;
      svgText(chart, right ? bx + 3 : bx - 3, pad.top - 2, `bound ${seconds(bound)}`, { class: 'bound-label', 'text-anchor': right ? 'start' : 'end' });
    }
    const caption = document.createElement('figcaption');
    const name = document.createElement('strong');
    name.textContent = reason;
    name.style.color = colourOf(reason);
    const count = histogram.count;
    const mean = count > 0 ? ` · mean ${seconds(histogram.sum / count)}` : '';
    const percent = (n) => `${decimal.format((100 * n) / count)} %`;
    const share = bound !== undefined && count > 0
      ? ` · ${percent(within)} within bound, ${percent(within + nearly)} within bound + 10 %`
      : '';
    caption.append(name, ` ${number.format(count)} close${count === 1 ? '' : 's'}${mean}${share}${bound === undefined ? ' · no bound' : ''}`);
    figure.dataset.count = String(count);
    figure.dataset.late = String(count - within - nearly);
    figure.append(caption, chart);
    return figure;
  }

  // ---- tables ----

  function cell(row, content, className) {
    const td = row.insertCell();
    td.textContent = content;
    if (className) td.className = className;
    return td;
  }

  function renderConnections(page) {
    const body = $('conn-table').tBodies[0];
    const rows = page.items.map((c) => {
      const row = document.createElement('tr');
      row.dataset.id = String(c.id);
      cell(row, String(c.id), 'num');
      cell(row, c.peer, 'mono');
      cell(row, seconds(c.age_s), 'num');
      cell(row, seconds(c.idle_in_s), 'num');
      cell(row, bytes(c.bytes_in), 'num');
      cell(row, bytes(c.bytes_out), 'num');
      cell(row, number.format(c.items), 'num');
      cell(row, number.format(c.errors), 'num');
      cell(row, c.tcp ? seconds(c.tcp.rtt_us / 1e6) : '–', 'num');
      cell(row, c.tcp ? String(c.tcp.probes) : '–', c.tcp && c.tcp.probes > 0 ? 'num warn' : 'num');
      cell(row, c.tcp ? c.tcp.state : '–');
      cell(row, c.heartbeat.negotiated ? `on${c.heartbeat.pings_outstanding ? `, ${c.heartbeat.pings_outstanding} unanswered` : ''}` : 'off');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'kick danger';
      button.textContent = 'Kick';
      button.dataset.id = String(c.id);
      button.dataset.peer = c.peer;
      row.insertCell().appendChild(button);
      return row;
    });
    if (!rows.length) {
      const row = document.createElement('tr');
      const td = cell(row, state.peer ? 'no live connection matches the filter' : 'no live connections', 'empty');
      td.colSpan = 13;
      rows.push(row);
    }
    body.replaceChildren(...rows);
    const first = page.total ? page.offset + 1 : 0;
    const last = Math.min(page.total, page.offset + page.items.length);
    $('conn-total').textContent = `· ${number.format(page.total)}${state.peer ? ` matching ${state.peer}` : ''}`;
    $('page-range').textContent = `${number.format(first)}–${number.format(last)} of ${number.format(page.total)}`;
    $('prev-page').disabled = page.offset === 0;
    $('next-page').disabled = last >= page.total;
    $('conn-table').dataset.total = String(page.total);
    for (const th of $('conn-table').tHead.rows[0].cells) {
      th.classList.toggle('sorted', th.dataset.sort === state.sort);
      th.dataset.order = th.dataset.sort === state.sort ? state.order : '';
    }
  }

  function renderClosed(page) {
    const rows = page.items.map((c) => {
      const row = document.createElement('tr');
      row.dataset.id = String(c.id);
      row.dataset.reason = c.reason;
      cell(row, new Date(c.closed_at).toLocaleTimeString());
      cell(row, String(c.id), 'num');
      cell(row, c.peer, 'mono');
      const reason = cell(row, c.reason, 'reason');
      reason.style.borderColor = colourOf(c.reason);
      cell(row, seconds(c.lifetime_s), 'num');
      cell(row, seconds(c.detection_delay_s), 'num');
      cell(row, bytes(c.bytes_in), 'num');
      cell(row, number.format(c.items), 'num');
      return row;
    });
    if (!rows.length) {
      const row = document.createElement('tr');
      cell(row, 'nothing closed yet', 'empty').colSpan = 8;
      rows.push(row);
    }
    $('closed-table').tBodies[0].replaceChildren(...rows);
    $('closed-total').textContent = `· ${number.format(page.total)} kept`;
  }

  function renderFlapping(flapping) {
    const rows = flapping.items.map((f) => {
      const row = document.createElement('tr');
      row.dataset.client = f.client_id || f.address;
      cell(row, f.client_id || `${f.address} (no client_id)`, 'mono');
      cell(row, number.format(f.closes), 'num');
      cell(row, new Date(f.last_close_at).toLocaleTimeString());
      cell(row, f.last_peer, 'mono');
      cell(row, f.last_reasons.join(', '));
      return row;
    });
    if (!rows.length) {
      const row = document.createElement('tr');
      cell(row, flapping.threshold === 'off' ? 'not counted (flap_threshold = off)' : 'none', 'empty').colSpan = 5;
      rows.push(row);
    }
    $('flapping-table').tBodies[0].replaceChildren(...rows);
    $('flapping-threshold').textContent = flapping.threshold === 'off' ? '' : `· ${flapping.threshold.replace('/', ' closes within ')}`;
  }

  function renderStatus(ready) {
    const status = $('status');
    const word = !ready.sink_healthy ? 'sink failing' : ready.state;
    status.textContent = word;
    status.dataset.status = ready.ready ? 'ready' : ready.sink_healthy ? ready.state : 'failing';
  }

  // ---- the refresh loop ----

  function connectionsPath() {
    const query = new URLSearchParams({ sort: state.sort, order: state.order, limit: state.limit, offset: state.offset });
    if (state.peer) query.set('peer', state.peer);
    return `connections?${query}`;
  }

  /** Times a request, for the page's own report of where a refresh goes (body data-timings). */
  function timed(timings, name, request) {
    const start = performance.now();
    return request.finally(() => { timings[name] = Math.round(performance.now() - start); });
  }

  async function refresh() {
    const started = performance.now();
    const timings = {};
    try {
      const connections = timed(timings, 'connections', json(connectionsPath())).then(
        (page) => ({ page }),
        (error) => {
          if (error instanceof ApiError && error.status === 400) return { error };
          throw error;
        },
      );
      const [exposition, ready, listing, closed, flapping] = await Promise.all([
        timed(timings, 'metrics', text('metrics')),
        timed(timings, 'readyz', readiness()),
        connections,
        timed(timings, 'closed', json(`closed?limit=${CLOSED_ROWS}`)),
        timed(timings, 'flapping', json('flapping')),
      ]);
      const rendering = performance.now();
      const t = Date.now();
      const figures = figuresOf(exposition);
      const previous = state.samples[state.samples.length - 1];
      const base = keepSample(figures, t);
      showMain();
      renderStatus(ready);
      renderHeadline(figures, t, base);
      recordCloses(figures, previous, t);
      renderClosesChart(t);
      renderDelayCharts(figures);
      if (listing.error) {
        $('filter-error').textContent = listing.error.message;
      } else {
        $('filter-error').textContent = '';
        renderConnections(listing.page);
      }
      renderClosed(closed);
      renderFlapping(flapping);
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      const done = performance.now();
      timings.render = Math.round(done - rendering);
      document.body.dataset.refreshMs = String(Math.round(done - started));
      document.body.dataset.timings = JSON.stringify(timings);
      $('refreshed').textContent = `updated ${new Date(t).toLocaleTimeString()}`;
    } catch (error) {
      if (error instanceof Unauthorized) {
        showLogin(state.token ? 'that token was refused' : '');
        return; // no polling until a token is given
      }
      document.body.dataset.state = 'error';
      const status = $('status');
      status.textContent = `admin API unreachable (${error.message}); retrying`;
      status.dataset.status = 'failing';
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.paused) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function refreshNow() {
    clearTimeout(state.timer);
    refresh();
  }

  function showMain() {
    document.body.dataset.state = 'ok';
    $('login').hidden = true;
    $('main').hidden = false;
    $('forget-token').hidden = !state.token;
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    document.body.dataset.state = 'login';
    $('main').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message;
    $('token').focus();
  }

  function toast(message, isError) {
    const box = $('toast');
    box.textContent = message;
    box.className = isError ? 'error' : '';
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  // ---- kicking ----

  function askKick(id, peer) {
    state.kick = { id, peer };
    $('kick-question').textContent = `Close connection ${id} from ${peer}? It is closed with reason "kicked"; a client that reconnects gets a new connection.`;
    $('kick-dialog').showModal();
  }

  async function kick() {
    const target = state.kick;
    $('kick-dialog').close();
    state.kick = null;
    if (!target) return;
    try {
      const response = await api(`connections/${encodeURIComponent(target.id)}`, { method: 'DELETE' });
      if (response.ok) {
        toast(`kicked connection ${target.id} (${target.peer})${response.status === 202 ? '; its close is not recorded yet' : ''}`);
      } else {
        const body = await response.json().catch(() => ({}));
        toast(`kick ${target.id}: ${body.error ? body.error.message : response.statusText}`, true);
      }
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin('that token was refused');
      toast(`kick ${target.id}: ${error.message}`, true);
    }
    refreshNow();
  }

  // ---- wiring ----

  function wire() {
    $('host').textContent = location.host;
    $('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      refreshNow();
    });
    $('forget-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin('');
    });
    $('pause').addEventListener('click', () => {
      state.paused = !state.paused;
      $('pause').textContent = state.paused ? 'Resume' : 'Pause';
      if (state.paused) clearTimeout(state.timer);
      else refreshNow();
    });
    $('filter-form').addEventListener('submit', (event) => {
      event.preventDefault();
      state.peer = $('peer-filter').value.trim();
      state.offset = 0;
      refreshNow();
    });
    $('page-size').addEventListener('change', () => {
      state.limit = Number($('page-size').value);
      state.offset = 0;
      refreshNow();
    });
    $('prev-page').addEventListener('click', () => {
      state.offset = Math.max(0, state.offset - state.limit);
      refreshNow();
    });
    $('next-page').addEventListener('click', () => {
      state.offset += state.limit;
      refreshNow();
    });
    $('conn-table').tHead.addEventListener('click', (event) => {
      const key = event.target.closest('th') && event.target.closest('th').dataset.sort;
      if (!key) return;
      if (state.sort === key) state.order = state.order === 'desc' ? 'asc' : 'desc';
      else [state.sort, state.order] = [key, key === 'id' ? 'asc' : 'desc'];
      state.offset = 0;
      refreshNow();
    });
    $('conn-table').tBodies[0].addEventListener('click', (event) => {
      const button = event.target.closest('button.kick');
      if (button) askKick(button.dataset.id, button.dataset.peer);
    });
    $('kick-confirm').addEventListener('click', kick);
    $('kick-cancel').addEventListener('click', () => {
      state.kick = null;
      $('kick-dialog').close();
    });
    refresh();
  }

  wire();
})();
