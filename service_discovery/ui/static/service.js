// One service: attributes, named ports, endpoints with their leases, the records DNS serves
// for it (from the daemon's resolver, GET /service/{name}/dns) and commands to try. Live
// through one blocking query on /service/{name}; the DNS records are read again after each
// change.

import {ApiError, apiUrl, getJson, token, watch} from './api.js';
import {confirmAction} from './dialogs.js';
import {command, fill, h, keepFocus, pager, shellWord, sr} from './dom.js';
import {count, duration, expiresIn, secondsLeft} from './format.js';

const PAGE = 100;

export function serviceView(main, name, ctx) {
  const stop = new AbortController();
  const path = `/service/${encodeURIComponent(name)}`;
  let svc = null; // the last answer; null while absent
  let page = 0;
  let filterText = '';

  const title = h('h1', {id: 'service-title', tabindex: '-1'}, name);
  const index = h('span', {class: 'muted'});
  const remove = h('button', {type: 'button', class: 'danger', disabled: true}, 'Delete service…');
  const status = h('p', {class: 'muted', role: 'status'}, 'Loading…');
  const attributes = h('div');
  const ports = h('div');
  const endpointsCount = h('span', {class: 'muted'});
  const filter = h('input', {id: 'endpoint-filter', type: 'search', autocomplete: 'off',
    placeholder: 'address or tag', 'aria-controls': 'endpoints-table'});
  const endpoints = h('div');
  const records = h('div', {class: 'records'}, h('p', {class: 'muted'}, 'Loading…'));
  const commands = h('div');
  const details = h('div', {class: 'details'},
    h('div', {class: 'columns'},
      h('section', {'aria-labelledby': 'attributes-title'},
        h('h2', {id: 'attributes-title'}, 'Attributes'), attributes),
      h('section', {'aria-labelledby': 'ports-title'},
        h('h2', {id: 'ports-title'}, 'Named ports'), ports)),
    h('section', {'aria-labelledby': 'endpoints-title'},
      h('div', {class: 'bar'},
        h('h2', {id: 'endpoints-title'}, 'Endpoints ', endpointsCount),
        h('div', {class: 'search'}, h('label', {for: 'endpoint-filter'}, 'Filter'), filter)),
      endpoints),
    h('section', {'aria-labelledby': 'dns-title'},
      h('h2', {id: 'dns-title'}, 'DNS'),
      h('p', {class: 'muted'}, 'What the daemon\'s DNS server answers for this service, ' +
        'as dig prints it.'),
      records),
    h('section', {'aria-labelledby': 'commands-title'},
      h('h2', {id: 'commands-title'}, 'Commands'), commands));
  details.hidden = true;
  fill(main, h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'},
    h('a', {href: '#/'}, 'Services'), ' / ', h('span', {'aria-current': 'page'}, name)),
  h('section', {class: 'service', 'aria-labelledby': 'service-title'},
    h('div', {class: 'bar'}, h('div', {}, title, ' ', index), remove), status, details));
  document.title = `${name} · service-discovery`;
  title.focus();

  // ---- rendering -----------------------------------------------------------------------
  function render() {
    keepFocus(main, show);
  }

  function show() {
    details.hidden = svc === null;
    remove.disabled = svc === null;
    if (svc === null) return;
    status.hidden = true;
    index.textContent = `index ${svc.index.toLocaleString('en')}`;
    const attrs = Object.entries(svc.attributes);
    fill(attributes, attrs.length
      ? h('dl', {class: 'attributes'}, attrs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))
      : h('p', {class: 'muted'}, 'None.'));
    const named = Object.entries(svc.named_ports).sort(([a], [b]) => a.localeCompare(b));
    fill(ports, named.length
      ? h('table', {class: 'rows'},
        h('thead', {}, h('tr', {}, ['Name', 'Protocol', 'Port', 'Priority', 'Weight'].map(
          (t, i) => h('th', {scope: 'col', class: i > 1 ? 'num' : null}, t)))),
        h('tbody', {}, named.map(([n, p]) => h('tr', {},
          h('th', {scope: 'row', 'data-label': 'Name'}, n),
          h('td', {'data-label': 'Protocol'}, p.protocol),
          h('td', {class: 'num', 'data-label': 'Port'}, p.port),
          h('td', {class: 'num', 'data-label': 'Priority'}, p.priority),
          h('td', {class: 'num', 'data-label': 'Weight'}, p.weight)))))
      : h('p', {class: 'muted'}, 'None.'));
    renderEndpoints();
    renderCommands();
  }

  function renderEndpoints() {
    const words = filterText.toLowerCase().split(/\s+/).filter(Boolean);
    const all = svc.endpoints;
    const shown = words.length
      ? all.filter((e) => words.every((w) => [e.ip, ...e.tags].join('\n').toLowerCase()
        .includes(w)))
      : all;
    endpointsCount.textContent = words.length
      ? `(${shown.length.toLocaleString('en')} of ${all.length.toLocaleString('en')})`
      : `(${all.length.toLocaleString('en')})`;
    page = Math.min(page, Math.max(0, Math.ceil(shown.length / PAGE) - 1));
    if (!shown.length) {
      fill(endpoints, h('p', {class: 'muted'}, all.length
        ? 'No endpoint matches the filter.'
        : 'No live endpoint: DNS answers this name with no address.'));
      return;
    }
    const rows = shown.slice(page * PAGE, (page + 1) * PAGE).map(endpointRow);
    fill(endpoints,
      h('table', {id: 'endpoints-table', class: 'rows endpoints'},
        h('thead', {}, h('tr', {},
          h('th', {scope: 'col'}, 'Address'), h('th', {scope: 'col'}, 'Family'),
          h('th', {scope: 'col'}, 'Tags'), h('th', {scope: 'col'}, 'Lease'),
          h('th', {scope: 'col'}, sr('Actions')))),
        h('tbody', {}, rows)),
      pager('Pages of endpoints', shown.length, page, PAGE, (p) => {
        page = p;
        keepFocus(endpoints, renderEndpoints);
      }));
    tick();
  }

  function endpointRow(e) {
    const lease = e.expires_at === undefined
      ? h('span', {class: 'muted'}, 'no lease')
      : h('span', {}, `ttl ${duration(e.ttl_seconds)} · expires `,
        h('span', {class: 'countdown', dataset: {expires: e.expires_at}},
          expiresIn(e.expires_at)));
    const button = h('button', {type: 'button', class: 'small',
      'aria-label': `Deregister ${e.ip}`}, 'Deregister…');
    button.addEventListener('click', () => deregister(e.ip));
    return h('tr', {dataset: {ip: e.ip, key: e.ip}},
      h('th', {scope: 'row', 'data-label': 'Address'}, h('code', {}, e.ip)),
      h('td', {'data-label': 'Family'}, e.ip.includes(':') ? 'IPv6' : 'IPv4'),
      h('td', {'data-label': 'Tags'}, e.tags.length
        ? h('ul', {class: 'chips'}, e.tags.map((t) => h('li', {}, t)))
        : h('span', {class: 'muted'}, '–')),
      h('td', {'data-label': 'Lease'}, lease),
      h('td', {class: 'actions'}, button));
  }

  // Lease countdowns move every second; the rows themselves change only with the registry.
  function tick() {
    for (const el of endpoints.querySelectorAll('.countdown')) {
      const at = Number(el.dataset.expires);
      el.textContent = expiresIn(at);
      el.closest('tr').dataset.lapsed = secondsLeft(at) <= 0;
    }
  }
  const ticker = setInterval(tick, 1000);

  function renderCommands() {
    const auth = token.get() ? ['-H', '"Authorization: Bearer $TOKEN"'] : [];
    const url = apiUrl(path);
    const curl = (...words) => ['curl', '-s', ...auth, ...words].join(' ');
    fill(commands,
      command(curl(shellWord(url)), 'the curl command that reads this service'),
      command(curl(shellWord(`${url}?index=${svc.index}&wait=30s`)),
        'the curl command that waits for the next change'),
      command(curl(shellWord(`${url}/dns`)), 'the curl command that reads these DNS records'));
  }

  // ---- DNS: asked again after each change, one request at a time -----------------------
  let dnsBusy = false;
  let dnsAgain = false;

  async function refreshDns() {
    if (dnsBusy) {
      dnsAgain = true;
      return;
    }
    dnsBusy = true;
    try {
      const {body} = await getJson(`${path}/dns`, {signal: stop.signal});
      keepFocus(records, () => renderRecords(body));
    } catch (err) {
      if (stop.signal.aborted || !(err instanceof ApiError)) return;
      if (err.status !== 404) fill(records, h('p', {class: 'muted'}, err.describe()));
    } finally {
      dnsBusy = false;
    }
    if (dnsAgain && !stop.signal.aborted) {
      dnsAgain = false;
      setTimeout(refreshDns, 250);
    }
  }

  function renderRecords(dns) {
    const server = location.hostname.replace(/^\[|\]$/g, '');
    const dig = (n, type) => ['dig', ...(dns.dns_port === 53 ? [] : [`-p${dns.dns_port}`]),
      `@${server}`, shellWord(n), type].join(' ');
    fill(records, dns.records.map((set) => h('article', {class: 'rrset',
      dataset: {name: set.name, type: set.type, status: set.status,
        key: `${set.name} ${set.type}`}},
    h('h3', {}, h('code', {}, `${set.name} ${set.type}`), ' ',
      h('span', {class: 'badge', dataset: {tone: set.status === 'NOERROR' ? 'ok' : 'warn'}},
        set.status)),
    set.answer.length
      ? h('pre', {class: 'zone'}, set.answer.join('\n'))
      : h('p', {class: 'muted'}, `No records${set.status === 'NOERROR' ? ' (NODATA)' : ''}.`),
    set.count > set.answer.length
      ? h('p', {class: 'muted'}, `…and ${count(set.count - set.answer.length, 'more record')}` +
        ' (dig shows them all).')
      : null,
    set.additional.length
      ? h('details', {}, h('summary', {}, 'Additional section'),
        h('pre', {class: 'zone'}, set.additional.join('\n')))
      : null,
    command(dig(set.name, set.type), `the dig command for ${set.name} ${set.type}`))),
    dns.tags_left_out
      ? h('p', {class: 'muted'}, `${count(dns.tags_left_out, 'more tag')} not shown.`)
      : null);
  }

  // ---- writes --------------------------------------------------------------------------
  async function perform(method, target, doneText, what) {
    try {
      const done = await ctx.write(method, target);
      if (done) ctx.notify(doneText);
      else ctx.notify(`${what}: not done, a bearer token is needed (401).`, 'error');
      return done;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      ctx.notify(`${what} failed: ${err.describe()}`, 'error');
      return false;
    }
  }

  remove.addEventListener('click', async () => {
    const text = `Delete ${name} with its ${count(svc.endpoints.length, 'endpoint')} and ` +
      `${count(Object.keys(svc.named_ports).length, 'named port')}? DNS stops answering for ` +
      'it at once.';
    if (!await confirmAction('Delete this service?', text, 'Delete service')) return;
    if (await perform('DELETE', path, `Deleted service ${name}.`, `Deleting ${name}`)) {
      location.hash = '#/';
    }
  });

  async function deregister(ip) {
    const text = `Deregister ${ip} from ${name}? DNS stops answering with it at once.`;
    if (!await confirmAction('Deregister this endpoint?', text, 'Deregister')) return;
    await perform('DELETE', `${path}/endpoints/${encodeURIComponent(ip)}`,
      `Deregistered ${ip} from ${name}.`, `Deregistering ${ip}`);
  }

  filter.addEventListener('input', () => {
    filterText = filter.value;
    page = 0;
    if (svc) renderEndpoints();
  });

  watch(path, {
    signal: stop.signal,
    onData(body) {
      svc = body;
      render();
      refreshDns();
      ctx.refreshState();
    },
    onError(err) {
      if (err.status === 404) {
        const gone = svc !== null;
        svc = null;
        render();
        status.hidden = false;
        status.textContent = gone
          ? `${name} was deleted. This page shows it again if it is created again.`
          : `There is no service ${name}. This page shows it as soon as it is created.`;
      } else if (err.status === 401) {
        status.hidden = false;
        fill(status, 'Reading this registry needs a bearer token. ',
          h('button', {type: 'button', class: 'link', onclick: () => ctx.askForReads(err)},
            'Enter token…'));
        ctx.askForReads(err);
      } else if (svc === null) {
        status.hidden = false;
        status.textContent = `Waiting for the daemon: ${err.describe()}`;
      }
      ctx.refreshState();
    },
  });
  return {stop() { stop.abort(); clearInterval(ticker); }};
}
