// Conversations live in this browser's IndexedDB, never on the appliance. Each conversation
// records which key made it (a hash of the key, not the key), so people sharing a browser
// with different keys see their own lists; signing out deletes that key's conversations.

const DB = 'edgeseek-console';
const STORE = 'conversations';

let opening = null;
const memory = new Map(); // when IndexedDB is unavailable (some private modes)

function open() {
  if (!opening) {
    opening = new Promise((resolve) => {
      let req;
      try { req = indexedDB.open(DB, 1); } catch { resolve(null); return; }
      req.onupgradeneeded = () => {
        const s = req.result.createObjectStore(STORE, { keyPath: 'id' });
        s.createIndex('owner', 'owner', { unique: false });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => resolve(null);
      req.onblocked = () => resolve(null);
    });
  }
  return opening;
}

function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** A short, non-reversible owner tag for a key. */
export async function ownerOf(key) {
  const bytes = new TextEncoder().encode(`edgeseek-console:${key}`);
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d.slice(0, 12), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Conversations of `owner`, most recently updated first. */
export async function list(owner) {
  const db = await open();
  let all;
  if (!db) all = [...memory.values()].filter((c) => c.owner === owner);
  else all = await done(db.transaction(STORE).objectStore(STORE).index('owner').getAll(owner));
  return all.sort((a, b) => b.updated - a.updated);
}

export async function get(id) {
  const db = await open();
  if (!db) return memory.get(id) || null;
  return (await done(db.transaction(STORE).objectStore(STORE).get(id))) || null;
}

export async function save(conv) {
  const copy = structuredClone(conv);
  const db = await open();
  if (!db) { memory.set(copy.id, copy); return; }
  await done(db.transaction(STORE, 'readwrite').objectStore(STORE).put(copy));
}

export async function remove(id) {
  const db = await open();
  if (!db) { memory.delete(id); return; }
  await done(db.transaction(STORE, 'readwrite').objectStore(STORE).delete(id));
}

/** Delete every conversation of `owner`: on sign-out nothing of that key stays in this browser. */
export async function removeOwner(owner) {
  const db = await open();
  if (!db) {
    for (const [id, c] of memory) if (c.owner === owner) memory.delete(id);
    return;
  }
  await new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, 'readwrite');
    const req = tx.objectStore(STORE).index('owner').openCursor(IDBKeyRange.only(owner));
    req.onsuccess = () => {
      const c = req.result;
      if (c) { c.delete(); c.continue(); }
    };
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export function newId() {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return `${Date.now().toString(36)}-${Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')}`;
}
