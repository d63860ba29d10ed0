// The broker dashboard: plain JavaScript over query-api's JSON API
// (/api/query/*) and the vendored uPlot. No build step.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const PALETTE = ['#3b6fd8', '#e07b39', '#2f9e6e', '#c2417f', '#7a5cc7', '#b59a1a', '#2b9bb5', '#d8463b'];
  const DEFAULT_METRICS = 4;
  const REFRESH_MS = 5000;

  const state = {
    view: 'hosts',
    hosts: [],
    host: null,          // selected host id
    selected: [],        // metrics charted for the host
    charts: new Map(),   // metric -> {el, plot}
    aggPlot: null,
    pending: 0,
    refreshing: false,
  };

  // ---- status, errors, requests -------------------------------------------

  function setStatus() {
    const s = $('status');
    if (state.pending > 0) {
      s.className = 'status loading';
      s.textContent = 'loading…';
    } else if (!$('error').hidden) {
      s.className = 'status';
      s.textContent = 'error';
    } else {
      s.className = 'status';
      s.textContent = 'updated ' + new Date().toLocaleTimeString();
    }
  }

  function showError(msg) {
    const e = $('error');
    e.textContent = msg;
    e.hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  // The query token, when the broker asks for one (security.tokens.query):
  // from the page's #token=... fragment (never sent to the server) or asked
  // for once on a 401; kept for this tab only.
  let token = new URLSearchParams(location.hash.slice(1)).get('token')
    || sessionStorage.getItem('broker-token') || '';
  if (location.hash.includes('token=')) {
    history.replaceState(null, '', location.pathname + location.search);
  }
  if (token) sessionStorage.setItem('broker-token', token);
  let asking = null;

  async function authFetch(url) {
    const headers = () => (token ? { Authorization: 'Bearer ' + token } : {});
    let r = await fetch(url, { headers: headers() });
    if (r.status === 401) {
      // One prompt for every request refused at the same time.
      asking = asking || Promise.resolve().then(() => {
        const t = window.prompt('This broker asks for a query token (security.tokens.query):');
        if (t) {
          token = t.trim();
          sessionStorage.setItem('broker-token', token);
        }
      });
      await asking;
      asking = null;
      if (token) r = await fetch(url, { headers: headers() });
    }
    return r;
  }

  async function api(path, params) {
    state.pending++;
    setStatus();
    try {
      const qs = params ? '?' + new URLSearchParams(params) : '';
      const r = await authFetch(path + qs);
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
      clearError();
      return body;
    } catch (e) {
      showError(`${path}: ${e.message}`);
      throw e;
    } finally {
      state.pending--;
      setStatus();
    }
  }

  const rangeSecs = () => Number($('range').value);

  function ago(ts) {
    if (!ts) return 'never';
    const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  // ---- hosts ---------------------------------------------------------------

  function matchesSearch(h, term) {
    if (!term) return true;
    const eq = term.indexOf('=');
    if (eq > 0) {
      const k = term.slice(0, eq).trim();
      const v = term.slice(eq + 1).trim();
      return h.labels[k] !== undefined && h.labels[k].includes(v);
    }
    return h.id.toLowerCase().includes(term.toLowerCase());
  }

  function renderHosts() {
    const term = $('search').value.trim();
    const shown = state.hosts.filter((h) => matchesSearch(h, term));
    $('host-count').textContent = `${shown.length} of ${state.hosts.length} hosts`;
    const ul = $('hosts');
    ul.replaceChildren(...shown.map((h) => {
      const li = document.createElement('li');
      li.dataset.host = h.id;
      if (h.id === state.host) li.className = 'selected';
      const id = document.createElement('div');
      id.className = 'id';
      id.textContent = h.id;
      const sub = document.createElement('div');
      sub.className = 'sub';
      const stale = Date.now() / 1000 - h.last_seen > 60;
      const labels = Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(' ');
      sub.innerHTML = '';
      const seen = document.createElement('span');
      seen.textContent = `seen ${ago(h.last_seen)}`;
      if (stale) seen.className = 'stale';
      sub.append(seen, ` · ${h.points} points · ${h.series} metrics${labels ? ' · ' + labels : ''}`);
      li.append(id, sub);
      li.addEventListener('click', () => selectHost(h.id));
      return li;
    }));
  }

  // The metric names of the fleet, for the aggregation form's suggestions.
  async function loadMetricNames() {
    const r = await api('/api/v1/label/__name__/values');
    $('metric-names').replaceChildren(...(r.data || []).map((m) => {
      const o = document.createElement('option');
      o.value = m;
      return o;
    }));
  }

  async function loadHosts() {
    const r = await api('/api/query/hosts');
    state.hosts = r.hosts;
    renderHosts();
  }

  // The list carries each host's series count; its names come with the host.
  async function selectHost(id) {
    state.host = id;
    const h = await api(`/api/query/hosts/${encodeURIComponent(id)}`).catch(() => null);
    if (state.host !== id) return; // another host was picked meanwhile
    const metrics = h ? h.metrics : [];
    const kept = state.selected.filter((m) => metrics.includes(m));
    state.selected = kept.length ? kept : metrics.slice(0, DEFAULT_METRICS);
    for (const { plot } of state.charts.values()) if (plot) plot.destroy();
    state.charts.clear();
    $('charts').replaceChildren();
    $('host-empty').hidden = true;
    $('host-detail').hidden = false;
    $('host-title').textContent = id;
    $('host-meta').textContent = h
      ? `last seen ${ago(h.last_seen)} · ${h.points} points stored` +
        Object.entries(h.labels).map(([k, v]) => ` · ${k}=${v}`).join('')
      : '';
    const picker = $('metric-picker');
    picker.replaceChildren(...metrics.map((m) => {
      const l = document.createElement('label');
      const c = document.createElement('input');
      c.type = 'checkbox';
      c.value = m;
      c.checked = state.selected.includes(m);
      c.addEventListener('change', () => {
        state.selected = [...picker.querySelectorAll('input:checked')].map((x) => x.value);
        loadCharts().catch(() => {});
      });
      l.append(c, ' ' + m);
      return l;
    }));
    renderHosts();
    loadCharts().catch(() => {});
  }

  function chartWidth(container) {
    return Math.max(300, (container.clientWidth || 480) - 4);
  }

  // The pixel width of one host chart, asked for as the range's max_points
  // so a long range comes back downsampled to about a row per pixel. Before
  // the first chart exists, the width of one column of the charts grid.
  function hostChartPixels() {
    const plot = document.querySelector('#charts .chart > div');
    if (plot) return chartWidth(plot);
    const grid = $('charts');
    const cols = getComputedStyle(grid).gridTemplateColumns.split(' ').filter(Boolean).length || 1;
    // padding and border of .chart: 8 + 1 px each side; gap 12 px
    const col = ((grid.clientWidth || 480) - 12 * (cols - 1)) / cols - 18;
    return chartWidth({ clientWidth: col });
  }

  function makePlot(title, series, data, container) {
    const opts = {
      width: chartWidth(container),
      height: 220,
      scales: { x: { time: true } },
      series: [{}].concat(series.map((s, i) => ({
        label: s,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        spanGaps: false,
      }))),
      axes: [{}, { size: 60 }],
      legend: { show: series.length > 1 },
    };
    return new uPlot(opts, data, container);
  }

  // A downsampled metric: the bucket averages as the line, and each
  // bucket's min and max as faint lines with a band filled between them,
  // so a spike shorter than a bucket still shows at its height.
  function makeBandPlot(metric, data, container) {
    const color = PALETTE[0];
    const faint = (alpha) => color + alpha;
    const opts = {
      width: chartWidth(container),
      height: 220,
      scales: { x: { time: true } },
      series: [
        {},
        { label: `${metric} (avg)`, stroke: color, width: 1.5, spanGaps: false },
        { label: 'min', stroke: faint('59'), width: 1, spanGaps: false },
        { label: 'max', stroke: faint('59'), width: 1, spanGaps: false },
      ],
      // fill from the max series (3) down to the min series (2)
      bands: [{ series: [3, 2], fill: faint('26') }],
      axes: [{}, { size: 60 }],
      legend: { show: true },
    };
    return new uPlot(opts, data, container);
  }

  function plural(n, unit) {
    return `${n} ${unit}${n === 1 ? '' : 's'}`;
  }

  function bucketText(secs) {
    if (secs % 86400 === 0) return plural(secs / 86400, 'day');
    if (secs % 3600 === 0) return plural(secs / 3600, 'hour');
    if (secs % 60 === 0) return `${secs / 60} min`;
    return `${secs} s`;
  }

  async function loadCharts() {
    if (!state.host) return;
    const host = state.host;
    const metrics = state.selected.slice();
    if (metrics.length === 0) {
      $('charts').replaceChildren();
      state.charts.clear();
      return;
    }
    const r = await api('/api/query/range', {
      host,
      start: `now-${rangeSecs()}s`,
      end: 'now',
      metrics: metrics.join(','),
      // one row per pixel at most: query-api downsamples longer ranges
      // (avg, min, max per bucket) and answers shorter ones raw
      max_points: String(Math.max(100, Math.round(hostChartPixels()))),
    });
    // bucket_secs, min and max come only with a downsampled answer
    const banded = Boolean(r.bucket_secs);
    if (host !== state.host) return;
    for (const [m, c] of state.charts) {
      if (!metrics.includes(m)) {
        if (c.plot) c.plot.destroy();
        c.el.remove();
        state.charts.delete(m);
      }
    }
    const col = (cols, m) => ((cols && cols[m]) || []).map((v) => (v === null ? null : v));
    for (const m of metrics) {
      const ys = col(r.metrics, m);
      const n = ys.filter((v) => v !== null).length;
      const data = banded ? [r.timestamps, ys, col(r.min, m), col(r.max, m)] : [r.timestamps, ys];
      let c = state.charts.get(m);
      if (c && c.banded !== banded) {
        // raw <-> downsampled: other series, a new plot in the same box
        c.plot.destroy();
        c.plot = null;
      }
      if (!c) {
        const el = document.createElement('div');
        el.className = 'chart';
        el.dataset.metric = m;
        const h = document.createElement('h3');
        const plotEl = document.createElement('div');
        el.append(h, plotEl);
        $('charts').append(el);
        c = { el, plotEl, plot: null };
        state.charts.set(m, c);
      }
      if (c.plot) {
        c.plot.setData(data);
      } else {
        c.plot = banded ? makeBandPlot(m, data, c.plotEl) : makePlot(m, [m], data, c.plotEl);
      }
      c.banded = banded;
      c.el.classList.toggle('downsampled', banded);
      c.el.dataset.points = String(n);
      c.el.dataset.bucketSecs = String(r.bucket_secs || 0);
      c.el.querySelector('h3').innerHTML = '';
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = banded
        ? ` (${n} buckets of ${bucketText(r.bucket_secs)}: avg, band min–max)`
        : ` (${n} points)`;
      c.el.querySelector('h3').append(m, count);
    }
  }

  // ---- aggregation -----------------------------------------------------------

  async function loadAggregate() {
    const metric = $('agg-metric').value.trim();
    if (!metric) return;
    const params = {
      metric,
      function: $('agg-function').value,
      step: $('agg-step').value,
      start: `now-${rangeSecs()}s`,
      end: 'now',
    };
    if ($('agg-prefix').value.trim()) params.prefix = $('agg-prefix').value.trim();
    if ($('agg-label').value.trim()) params.label = $('agg-label').value.trim();
    if ($('agg-per-host').checked) params.per_host = 'true';
    const r = await api('/api/query/aggregate', params);
    const xs = [...new Set(r.series.flatMap((s) => s.buckets.map((b) => b.timestamp)))].sort((a, b) => a - b);
    const names = r.series.map((s) => s.host || `${r.function}(${r.metric})`);
    const data = [xs].concat(r.series.map((s) => {
      const by = new Map(s.buckets.map((b) => [b.timestamp, b.value]));
      return xs.map((x) => (by.has(x) ? by.get(x) : null));
    }));
    $('agg-info').textContent = `${r.function}(${r.metric}) over ${r.hosts.length} hosts, ${xs.length} buckets`;
    const box = $('agg-chart');
    if (state.aggPlot) state.aggPlot.destroy();
    box.replaceChildren();
    const el = document.createElement('div');
    el.className = 'chart';
    el.dataset.points = String(xs.length);
    box.append(el);
    state.aggPlot = makePlot(r.metric, names, data, el);
  }

  // ---- cluster -----------------------------------------------------------------

  async function loadCluster() {
    const c = await api('/api/query/cluster');
    const items = [
      ['source', c.source + (c.endpoint ? ` (${c.endpoint})` : '')],
      ['ring epoch', c.epoch],
      ['ring', `${c.ring.hash}, ${c.ring.vnodes} vnodes`],
      ['members', c.members.length],
    ];
    if (c.raft) {
      items.push(['raft', `${c.raft.role}, term ${c.raft.term}, leader ${c.raft.leader || 'none'}`]);
      items.push(['commit / applied', `${c.raft.commit_index} / ${c.raft.applied_index}`]);
    }
    $('cluster-summary').replaceChildren(...items.map(([k, v]) => {
      const d = document.createElement('div');
      const b = document.createElement('b');
      b.textContent = String(v);
      d.append(b, k);
      return d;
    }));
    const tbody = $('cluster-table').querySelector('tbody');
    tbody.replaceChildren(...c.members.map((m) => {
      const tr = document.createElement('tr');
      const cells = [m.id, m.roles.join(', '), m.state, m.weight, '', m.addr];
      cells.forEach((v, i) => {
        const td = document.createElement('td');
        if (i === 2) td.className = `state-${m.state}`;
        if (i === 4) {
          const bar = document.createElement('span');
          bar.className = 'share';
          bar.style.width = `${Math.round(m.share * 200)}px`;
          td.append(bar, `${(m.share * 100).toFixed(1)} %`);
        } else {
          td.textContent = String(v);
        }
        tr.append(td);
      });
      return tr;
    }));
  }

  // ---- fleet (host-manager's /api/hosts and /api/alerts) ------------------------

  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = String(text);
    if (cls) td.className = cls;
    return td;
  }

  function when(ts) {
    return ts ? `${new Date(ts * 1000).toLocaleString()} (${ago(ts)})` : '-';
  }

  async function loadFleet() {
    // host-manager serves these on the admin port of the process that runs
    // it (broker up, or query-api's container in compose).
    const r = await authFetch('/api/hosts');
    const missing = $('fleet-missing');
    if (r.status === 404) {
      missing.textContent = 'host-manager does not run in this process: the fleet is served by the process that runs it (broker up runs both; or add --service host-manager).';
      missing.hidden = false;
      return;
    }
    missing.hidden = true;
    const inv = await api('/api/hosts');
    const alerts = (await api('/api/alerts')).alerts;
    const items = [['hosts', inv.total]];
    for (const s of ['up', 'stale', 'down', 'discovered']) items.push([s, inv.counts[s] || 0]);
    items.push(['alerts firing', alerts.filter((a) => a.state === 'firing').length]);
    $('fleet-summary').replaceChildren(...items.map(([k, v]) => {
      const d = document.createElement('div');
      d.dataset.count = k;
      const b = document.createElement('b');
      b.textContent = String(v);
      d.append(b, k);
      return d;
    }));
    $('fleet-alerts-empty').hidden = alerts.length > 0;
    $('fleet-alerts').hidden = alerts.length === 0;
    $('fleet-alerts').querySelector('tbody').replaceChildren(...alerts.map((a) => {
      const tr = document.createElement('tr');
      tr.append(cell(a.labels.alertname), cell(a.labels.host || ''), cell(a.state, `alert-${a.state}`),
        cell(a.labels.severity || ''), cell(when(a.fired_at || a.active_since)), cell(a.annotations.summary || ''));
      return tr;
    }));
    // down first, then stale, discovered, up; by id within a state
    const order = { down: 0, stale: 1, discovered: 2, up: 3 };
    const hosts = [...inv.hosts].sort((a, b) => (order[a.state] - order[b.state]) || a.id.localeCompare(b.id));
    $('fleet-table').querySelector('tbody').replaceChildren(...hosts.map((h) => {
      const tr = document.createElement('tr');
      tr.dataset.host = h.id;
      const labels = Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(', ');
      tr.append(cell(h.id), cell(h.state, `host-${h.state}`), cell(h.last_seen ? ago(h.last_seen) : 'never'),
        cell(h.down_since ? when(h.down_since) : '-'), cell(h.source), cell(h.addr || '-'), cell(labels || '-'));
      return tr;
    }));
  }

  // ---- views and refresh ---------------------------------------------------------

  function show(view) {
    state.view = view;
    document.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t.dataset.view === view));
    for (const v of ['hosts', 'aggregate', 'cluster', 'fleet']) $(`view-${v}`).hidden = v !== view;
    refresh();
  }

  async function refresh() {
    if (state.refreshing) return;
    state.refreshing = true;
    try {
      if (state.view === 'hosts') {
        await loadHosts();
        await loadCharts();
      } else if (state.view === 'aggregate') {
        if (state.hosts.length === 0) await loadHosts();
        if ($('metric-names').children.length === 0) await loadMetricNames();
        await loadAggregate();
      } else if (state.view === 'fleet') {
        await loadFleet();
      } else {
        await loadCluster();
      }
    } catch (_) {
      // shown in the error banner
    } finally {
      state.refreshing = false;
    }
  }

  document.querySelectorAll('.tab').forEach((t) => t.addEventListener('click', () => show(t.dataset.view)));
  $('search').addEventListener('input', renderHosts);
  $('range').addEventListener('change', refresh);
  $('agg-form').addEventListener('submit', (e) => {
    e.preventDefault();
    loadAggregate().catch(() => {});
  });
  setInterval(() => {
    if ($('auto').checked) refresh();
  }, REFRESH_MS);
  refresh();
})();
