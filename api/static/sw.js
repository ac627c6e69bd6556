// The branch app's service worker: keeps the app's own files, so that /branch
// opens (and reloads) without a network. It never touches API calls or the
// stream: those fail offline, and the Outbox queues the writes.
//
// Network first: online, every file comes from the server (a new release shows
// at once) and refreshes the copy; offline, the copy answers.

const CACHE = 'pgtide-branch-v1';
// Relative to this file (/static/sw.js), so a path prefix in front of pgtide still works.
const SHELL = ['../branch', 'branch.js', 'pgtide.js', 'common.js', 'app.css']
  .map((p) => new URL(p, self.location).href);

self.addEventListener('install', (event) => {
  // Installed only once every file is cached: a controlled page can always reload offline.
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim(); // control the page that registered us, without a reload
  })());
});

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  url.search = '';
  if (request.method !== 'GET' || !SHELL.includes(url.href)) return; // not ours: the network decides
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(request);
      if (response.ok) await cache.put(url.href, response.clone());
      return response;
    } catch (err) {
      const copy = await cache.match(url.href);
      if (copy) return copy;
      throw err;
    }
  })());
});
