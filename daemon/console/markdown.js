// A small Markdown renderer that builds DOM nodes directly. Every piece of source text ends up
// in a text node; the only elements created are the fixed set below, the only attributes set
// are classes, a checked `href` (http, https, mailto) and ARIA labels. Raw HTML in the source is
// shown as the text it is. Unfinished input (a stream in progress) renders sensibly: an open
// code fence runs to the end.
//
// Blocks: paragraphs, ATX headings, fenced code (with a copy button), block quotes, ordered and
// unordered lists (nested by indentation), GitHub tables, horizontal rules.
// Inline: `code`, **bold**, *italic*, ~~strike~~, [links](url), bare web addresses,
// line breaks, and [n] citation markers when the caller passes citations.

import { h } from './dom.js';

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const HR = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;

/**
 * Render `src` to a DocumentFragment.
 * opts.citations: [{index, ...}] — `[n]` with a matching index becomes a button calling
 *   opts.onCite(citation); opts.onCopy(text) is called by code-block copy buttons;
 *   opts.copyLabel labels those buttons.
 */
export function renderMarkdown(src, opts = {}) {
  const frag = document.createDocumentFragment();
  blocks(String(src ?? '').replace(/\r\n?/g, '\n').split('\n'), frag, opts, 0);
  return frag;
}

function indentOf(line) {
  const m = /^[ \t]*/.exec(line)[0];
  return m.replace(/\t/g, '    ').length;
}

function isBlank(line) { return /^\s*$/.test(line); }

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function blocks(lines, parent, opts, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) { i += 1; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const lang = m[2] || '';
      const body = [];
      i += 1;
      while (i < lines.length) {
        const close = lines[i].trim();
        if (close.startsWith(fence[0].repeat(fence.length)) && /^[`~]+$/.test(close)) { i += 1; break; }
        body.push(lines[i]);
        i += 1;
      }
      parent.append(codeBlock(body.join('\n'), lang, opts));
      continue;
    }
    if ((m = HEADING.exec(line)) && depth < 8) {
      const level = Math.min(6, m[1].length + 2); // h1/h2 belong to the page, not the answer
      const el = h(`h${level}`, { class: 'md-h' });
      inline(m[2] || '', el, opts);
      parent.append(el);
      i += 1;
      continue;
    }
    if (HR.test(line)) { parent.append(h('hr')); i += 1; continue; }
    if (QUOTE.test(line) && depth < 8) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { inner.push(m[1]); i += 1; }
      const q = h('blockquote');
      blocks(inner, q, opts, depth + 1);
      parent.append(q);
      continue;
    }
    if ((m = ITEM.exec(line)) && depth < 8) {
      i = list(lines, i, parent, opts, depth);
      continue;
    }
    if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes('-')) {
      i = table(lines, i, parent, opts);
      continue;
    }
    // Paragraph: until a blank line or the start of another block.
    const para = [line];
    i += 1;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) { para.push(lines[i]); i += 1; }
    const p = h('p');
    inline(para.map((l) => l.trim()).join('\n'), p, opts);
    parent.append(p);
  }
}

function list(lines, start, parent, opts, depth) {
  const first = ITEM.exec(lines[start]);
  const base = indentOf(first[1]);
  const ordered = /\d/.test(first[2]);
  const el = ordered ? h('ol') : h('ul');
  if (ordered) {
    const n = parseInt(first[2], 10);
    if (n !== 1) el.setAttribute('start', String(n));
  }
  let i = start;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || indentOf(m[1]) !== base || /\d/.test(m[2]) !== ordered) break;
    // The item's own text, then lines indented past the marker (continuations, sub-lists).
    const body = [m[3]];
    i += 1;
    let blank = false;
    while (i < lines.length) {
      const l = lines[i];
      if (isBlank(l)) { blank = true; body.push(''); i += 1; continue; }
      const ind = indentOf(l);
      if (ind > base) { body.push(l.slice(Math.min(ind, base + 2 + (ordered ? 1 : 0)))); blank = false; i += 1; continue; }
      if (!blank && !startsBlock(l)) { body.push(l.trim()); i += 1; continue; }
      break;
    }
    while (body.length && isBlank(body[body.length - 1])) body.pop();
    const li = h('li');
    const simple = body.every((l) => !startsBlock(l) && !isBlank(l));
    if (simple) inline(body.map((l) => l.trim()).join('\n'), li, opts);
    else blocks(body, li, opts, depth + 1);
    el.append(li);
    if (blank && i < lines.length) {
      const next = ITEM.exec(lines[i]);
      if (!next || indentOf(next[1]) !== base) break;
    }
  }
  parent.append(el);
  return i;
}

function cells(line) {
  let s = line.trim();
  if (s.startsWith('|')) s = s.slice(1);
  if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, '|'));
}

function table(lines, start, parent, opts) {
  const head = cells(lines[start]);
  const align = cells(lines[start + 1]).map((c) => (c.startsWith(':') && c.endsWith(':') ? 'center' : c.endsWith(':') ? 'right' : ''));
  const tr = h('tr');
  head.forEach((c, k) => { const th = h('th', { class: align[k] ? `al-${align[k]}` : null }); inline(c, th, opts); tr.append(th); });
  const tbody = h('tbody');
  let i = start + 2;
  while (i < lines.length && lines[i].includes('|') && !isBlank(lines[i])) {
    const row = h('tr');
    const cs = cells(lines[i]);
    head.forEach((_, k) => { const td = h('td', { class: align[k] ? `al-${align[k]}` : null }); inline(cs[k] || '', td, opts); row.append(td); });
    tbody.append(row);
    i += 1;
  }
  parent.append(h('div', { class: 'md-table' }, h('table', null, h('thead', null, tr), tbody)));
  return i;
}

function codeBlock(text, lang, opts) {
  const code = h('code', { class: lang ? `lang-${lang.replace(/[^\w-]/g, '')}` : null }, text);
  const head = h('div', { class: 'code-head' }, h('span', { class: 'code-lang' }, lang || 'text'));
  if (opts.onCopy) {
    head.append(h('button', {
      type: 'button', class: 'small ghost', onclick: () => opts.onCopy(text),
      'aria-label': `${opts.copyLabel || 'Copy'} ${lang || ''}`.trim(),
    }, opts.copyLabel || 'Copy'));
  }
  return h('div', { class: 'code' }, head, h('pre', null, code));
}

/** A link target we allow: absolute http(s) or mailto, nothing scriptable. */
export function safeHref(url) {
  const s = String(url).trim();
  if (!/^(https?:\/\/|mailto:)/i.test(s)) return null;
  try {
    const u = new URL(s);
    return ['http:', 'https:', 'mailto:'].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

// Earliest-match inline scanner. Groups: 1-2 code, 3 bold**, 4 bold__, 5 strike, 6 italic*,
// 7 italic_, 8-9 link, 10 citation, 11 bare URL, 12 newline, 13 backslash escape.
const INLINE = new RegExp([
  '(`+)([\\s\\S]*?[^`])\\1(?!`)',
  '\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*',
  '(?<![\\p{L}\\p{N}_])__(?=\\S)([\\s\\S]*?\\S)__(?![\\p{L}\\p{N}_])',
  '~~(?=\\S)([\\s\\S]*?\\S)~~',
  '\\*([^\\s*](?:[^*\\n]*?[^\\s*])?)\\*',
  '(?<![\\p{L}\\p{N}_])_([^\\s_](?:[^_\\n]*?[^\\s_])?)_(?![\\p{L}\\p{N}_])',
  '\\[([^\\]\\n]+)\\]\\(\\s*<?([^)\\s>]+)>?(?:\\s+"[^"\\n]*")?\\s*\\)',
  '\\[(\\d{1,3})\\]',
  '(https?:\\/\\/[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?\'"，。；：！？、])',
  '(\\n)',
  '\\\\([\\\\`*_{}\\[\\]()#+\\-.!|~<>])',
].join('|'), 'gu');

const MAX_NEST = 6;

function inline(text, parent, opts, nest = 0) {
  const re = new RegExp(INLINE.source, 'gu');
  let at = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > at) parent.append(text.slice(at, m.index));
    at = m.index + m[0].length;
    const deeper = (tag, inner, cls) => {
      const el = h(tag, cls ? { class: cls } : null);
      if (nest < MAX_NEST) inline(inner, el, opts, nest + 1); else el.append(inner);
      parent.append(el);
    };
    if (m[1] !== undefined) {
      let c = m[2];
      if (/^ .* $/.test(c) && c.trim()) c = c.slice(1, -1);
      parent.append(h('code', null, c));
    } else if (m[3] !== undefined) deeper('strong', m[3]);
    else if (m[4] !== undefined) deeper('strong', m[4]);
    else if (m[5] !== undefined) deeper('del', m[5]);
    else if (m[6] !== undefined) deeper('em', m[6]);
    else if (m[7] !== undefined) deeper('em', m[7]);
    else if (m[8] !== undefined) {
      const href = safeHref(m[9]);
      if (href) {
        const a = h('a', { href, target: '_blank', rel: 'noopener noreferrer' });
        if (nest < MAX_NEST) inline(m[8], a, opts, nest + 1); else a.append(m[8]);
        parent.append(a);
      } else {
        // Not a link we follow (javascript:, data:, relative…): show the source as text.
        parent.append(m[0]);
      }
    } else if (m[10] !== undefined) {
      const n = Number(m[10]);
      const c = (opts.citations || []).find((x) => Number(x.index) === n);
      if (c && opts.onCite) {
        parent.append(h('button', {
          type: 'button', class: 'cite', onclick: () => opts.onCite(c),
          'aria-label': `${opts.sourceLabel || 'Source'} ${n}: ${c.filename || c.title || c.url || ''}`,
        }, String(n)));
      } else parent.append(m[0]);
    } else if (m[11] !== undefined) {
      const href = safeHref(m[11]);
      if (href) parent.append(h('a', { href, target: '_blank', rel: 'noopener noreferrer' }, m[11]));
      else parent.append(m[11]);
    } else if (m[12] !== undefined) parent.append(h('br'));
    else if (m[13] !== undefined) parent.append(m[13]);
    if (m[0].length === 0) re.lastIndex += 1;
  }
  if (at < text.length) parent.append(text.slice(at));
}
