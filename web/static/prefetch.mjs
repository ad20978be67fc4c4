// The API calls of the page in the address, started as soon as this small
// module (and lib.mjs) is there: index.html runs it on its own (`async`),
// while the rest of the page's modules are still being read, and app.mjs
// imports it too, so it runs first whichever comes first. The person waits
// for one round trip to the edge, and not for the modules before it.

import { prefetch } from './lib.mjs';

// In the order they are needed: a browser sends six at a time to the edge
// (HTTP/1.1), and a project's page asks for eight. Who is logged in and the
// page's own data first, the navigation next; the status bar and the
// notices can wait for a free connection.
const shown = /^#\/projects\/([0-9a-f]{32})$/.exec(location.hash);
prefetch('me',
  ...(shown ? [`projects/${shown[1]}`, `files?project=${shown[1]}`, 'uploads', `jobs?project=${shown[1]}`] : []),
  'projects', 'status', 'notices');
