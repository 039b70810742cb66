// DOM utilities. Text always enters the page as text nodes (never parsed as markup), so model
// output, document text and user input cannot inject elements or handlers.

const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'open', 'selected', 'multiple', 'readOnly', 'required', 'indeterminate']);

/** h('button', {class: 'x', onclick: f, 'aria-label': 'Close'}, 'text', child, [more]) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  add(el, children);
  return el;
}

/** Append children: nodes as they are, anything else as a text node. */
export function add(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replace all children. */
export function put(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

let uid = 0;
/** A fresh id for label/aria wiring. */
export function nextId(prefix = 'id') {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** Copy text to the clipboard (async API on HTTPS; a hidden textarea as the fallback). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h('textarea', { class: 'offscreen', 'aria-hidden': 'true' }, text);
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
    return ok;
  }
}

/** A modal yes/no question in a <dialog> (no window.confirm: it blocks the page). */
export function confirmDialog(message, { ok, cancel, danger = true }) {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'button', class: danger ? 'danger' : 'primary' }, ok);
    const no = h('button', { type: 'button' }, cancel);
    const dlg = h('dialog', { class: 'confirm', 'aria-label': message },
      h('p', null, message), h('div', { class: 'row end' }, no, yes));
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    yes.addEventListener('click', () => done(true));
    no.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    no.focus();
  });
}

/** A short message in the shared live region. */
export function toast(text) {
  const box = document.getElementById('toast');
  if (!box) return;
  const item = h('div', { class: 'toast-item' }, text);
  box.append(item);
  setTimeout(() => item.remove(), 4000);
}
