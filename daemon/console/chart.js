// A line chart on a <canvas>, no library: tokens/s over a time window.

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function css(el, name, fallback) {
  const v = getComputedStyle(el).getPropertyValue(name).trim();
  return v || fallback;
}

/**
 * Draw `samples` ([{t: unix s, tokens_per_s}]) over the `windowS` seconds ending at `now`.
 * Labels come from `labels` ({now, empty}).
 */
export function drawChart(canvas, samples, { windowS = 900, now = Date.now() / 1000, labels = {} } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const hgt = canvas.clientHeight || 200;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(hgt * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  const fg = css(canvas, '--muted', '#667');
  const grid = css(canvas, '--line', '#dde');
  const accent = css(canvas, '--accent', '#1f5fbf');
  const font = `12px ${css(document.body, 'font-family', 'sans-serif')}`;
  const left = 44;
  const right = 10;
  const top = 10;
  const bottom = 24;
  const pw = Math.max(10, w - left - right);
  const ph = Math.max(10, hgt - top - bottom);
  const start = now - windowS;
  const pts = samples.filter((s) => s.t >= start - 5);
  canvas.dataset.points = String(pts.length);
  const max = niceMax(Math.max(0, ...pts.map((s) => s.tokens_per_s)));
  const x = (t) => left + ((t - start) / windowS) * pw;
  const y = (v) => top + ph - (v / max) * ph;

  ctx.font = font;
  ctx.lineWidth = 1;
  ctx.strokeStyle = grid;
  ctx.fillStyle = fg;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(left + pw, yy);
    ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v % 1 ? v.toFixed(1) : v.toFixed(0), left - 6, yy);
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let m = windowS / 60; m >= 0; m -= 5) {
    const xx = x(now - m * 60);
    const text = m === 0 ? (labels.now || 'now') : labels.minutes ? labels.minutes(m) : `−${m} min`;
    ctx.fillText(text, Math.min(Math.max(xx, left + 22), left + pw - 14), top + ph + 6);
  }
  if (pts.length < 2) {
    ctx.textBaseline = 'middle';
    ctx.fillText(labels.empty || '', left + pw / 2, top + ph / 2);
    if (pts.length === 0) return;
  }
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, pw, ph);
  ctx.clip();
  ctx.beginPath();
  pts.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s.tokens_per_s)) : ctx.moveTo(x(s.t), y(s.tokens_per_s))));
  ctx.strokeStyle = accent;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.stroke();
  ctx.lineTo(x(pts[pts.length - 1].t), y(0));
  ctx.lineTo(x(pts[0].t), y(0));
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = accent;
  ctx.fill();
  ctx.restore();
}
