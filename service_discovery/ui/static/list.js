// The services: a filter, a page of rows, live through one blocking query on /services.

import {watch} from './api.js';
import {fill, h, keepFocus, pager, sr} from './dom.js';
import {count} from './format.js';

const PAGE = 100;
const saved = {filter: '', page: 0}; // kept while the user looks at a service

export function listView(main, {askForReads, refreshState}) {
  const stop = new AbortController();
  let services = null; // [{service, text}] in name order; null until loaded
  let shown = [];

  const heading = h('h1', {id: 'services-title'}, 'Services');
  const total = h('span', {class: 'muted'});
  const filter = h('input', {
    id: 'filter', type: 'search', value: saved.filter, autocomplete: 'off',
    placeholder: 'name, port or attribute', 'aria-controls': 'services-table',
  });
  const body = h('tbody');
  const table = h('table', {id: 'services-table', class: 'rows services'},
    h('caption', {class: 'sr-only'}, 'Services, their live endpoints, named ports and attributes'),
    h('thead', {}, h('tr', {},
      h('th', {scope: 'col'}, 'Service'),
      h('th', {scope: 'col', class: 'num'}, 'Endpoints'),
      h('th', {scope: 'col'}, 'Named ports'),
      h('th', {scope: 'col'}, 'Attributes'))),
    body);
  const status = h('p', {class: 'muted', role: 'status'}, 'Loading…');
  document.title = 'Services · service-discovery';
  const pages = h('div');
  fill(main, h('section', {'aria-labelledby': 'services-title'},
    h('div', {class: 'bar'}, h('div', {}, heading, ' ', total),
      h('div', {class: 'search'}, h('label', {for: 'filter'}, 'Filter'), filter)),
    status, table, pages));

  function render() {
    if (services !== null) keepFocus(main, show);
  }

  function show() {
    const words = saved.filter.toLowerCase().split(/\s+/).filter(Boolean);
    shown = words.length
      ? services.filter((s) => words.every((w) => s.text.includes(w)))
      : services;
    const last = Math.max(0, Math.ceil(shown.length / PAGE) - 1);
    saved.page = Math.min(saved.page, last);
    total.textContent = words.length
      ? `${shown.length.toLocaleString('en')} of ${count(services.length, 'service')}`
      : count(services.length, 'service');
    const start = saved.page * PAGE;
    body.replaceChildren(...shown.slice(start, start + PAGE).map(({service}) => row(service)));
    table.hidden = shown.length === 0;
    status.textContent = services.length === 0
      ? 'No services yet. Create one with: curl -X PUT …/service -d \'{"name": "webapp"}\''
      : shown.length === 0 ? 'No service matches the filter.' : '';
    status.hidden = !status.textContent;
    fill(pages, pager('Pages of services', shown.length, saved.page, PAGE, (p) => {
      saved.page = p;
      render();
      heading.scrollIntoView({block: 'nearest'});
    }));
  }

  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      saved.filter = filter.value;
      saved.page = 0;
      render();
    }, 80);
  });

  watch('/services', {
    signal: stop.signal,
    onData(list) {
      services = list.map((service) => ({service, text: searchText(service)}));
      render();
      refreshState();
    },
    onError(err) {
      if (err.status === 401) {
        status.hidden = false;
        fill(status, 'Reading this registry needs a bearer token. ',
          h('button', {type: 'button', class: 'link', onclick: () => askForReads(err)},
            'Enter token…'));
        askForReads(err);
      } else if (services === null) {
        status.hidden = false;
        status.textContent = `Waiting for the daemon: ${err.describe()}`;
      }
      refreshState();
    },
  });
  return {stop: () => stop.abort()};
}

function searchText(s) {
  const ports = Object.keys(s.named_ports);
  const attrs = Object.entries(s.attributes).map(([k, v]) => `${k}=${v}`);
  return [s.name, ...ports, ...attrs].join('\n').toLowerCase();
}

function row(s) {
  const ports = Object.entries(s.named_ports).sort(([a], [b]) => a.localeCompare(b));
  const attrs = Object.entries(s.attributes);
  return h('tr', {dataset: {key: s.name}},
    h('th', {scope: 'row', 'data-label': 'Service'},
      h('a', {href: `#/service/${encodeURIComponent(s.name)}`}, s.name)),
    h('td', {class: 'num', 'data-label': 'Endpoints', dataset: {zero: s.endpoint_count === 0}},
      s.endpoint_count.toLocaleString('en'), sr(' live')),
    h('td', {'data-label': 'Named ports'}, ports.length
      ? h('ul', {class: 'chips'}, ports.map(([name, p]) =>
        h('li', {}, h('b', {}, name), ` ${p.port}/${p.protocol}`)))
      : h('span', {class: 'muted'}, '–')),
    h('td', {'data-label': 'Attributes'}, attrs.length
      ? h('ul', {class: 'chips'}, attrs.map(([k, v]) =>
        h('li', {title: `${k}=${v}`}, h('b', {}, k), '=', v)))
      : h('span', {class: 'muted'}, '–')));
}
