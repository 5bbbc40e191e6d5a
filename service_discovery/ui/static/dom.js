// Building the page: elements from text, never from HTML. Every value shown comes from the
// registry and is user-controlled, so it only ever becomes a text node or an attribute value
// (the Content-Security-Policy's Trusted Types would make an innerHTML assignment throw anyway).

/** An element: h('a', {href: '#/', class: 'x', onclick: f}, 'text', child, [more]). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children: nodes as they are, anything else as text; arrays flattened. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/**
 * Run `render` (which rebuilds part of `container`) without losing the keyboard's place: the
 * element that had focus in it gets focus back in its new form (same row, same control).
 * Views re-render on every answer of their watch, so without this focus would jump away.
 */
export function keepFocus(container, render) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? focusKey(active) : null;
  render();
  if (key === null) return;
  const again = [...container.querySelectorAll(active.tagName)].find((el) => focusKey(el) === key);
  again?.focus({preventScroll: true});
}

function focusKey(el) {
  const row = el.closest('[data-key]');
  return [row?.dataset.key ?? '', el.tagName, el.getAttribute('href') ?? '', el.textContent]
    .join('\n');
}

/** A visually hidden text, read by screen readers. */
export function sr(text) {
  return h('span', {class: 'sr-only'}, text);
}

/** A Previous / Next pager for `total` rows shown `size` at a time; null when one page does. */
export function pager(label, total, page, size, onPage) {
  if (total <= size) return null;
  const last = Math.ceil(total / size) - 1;
  const first = page * size + 1;
  const end = Math.min(total, first + size - 1);
  return h('nav', {class: 'pager', 'aria-label': label},
    h('button', {type: 'button', disabled: page === 0, onclick: () => onPage(page - 1)},
      '‹ Previous'),
    h('span', {'aria-live': 'polite'},
      `${first.toLocaleString('en')}–${end.toLocaleString('en')} of ${total.toLocaleString('en')}`),
    h('button', {type: 'button', disabled: page >= last, onclick: () => onPage(page + 1)},
      'Next ›'));
}

/** A command line with a Copy button. */
export function command(text, label) {
  const code = h('code', {}, text);
  const button = h('button', {type: 'button', class: 'copy', 'aria-label': `Copy ${label}`},
    'Copy');
  button.addEventListener('click', async () => {
    const done = await copy(text, code);
    button.textContent = done ? 'Copied' : 'Select';
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  return h('div', {class: 'command'}, h('pre', {}, code), button);
}

async function copy(text, el) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (plain http on another host): select it, for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(el);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return false;
  }
}

/** Quote a word for a POSIX shell when it needs it. */
export function shellWord(word) {
  return /^[A-Za-z0-9._:@/=+%,-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}
