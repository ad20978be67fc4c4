// The API calls of the page in the address, started as soon as this small
// module (and lib.mjs) is there: index.html runs it on its own (`async`),
// while the rest of the page's modules are still being read, and app.mjs
// imports it too, so it runs first whichever comes first. The person waits
// for one round trip to the edge, and not for the modules before it.

import { prefetch } from './lib.mjs';

const shown = /^#\/projects\/([0-9a-f]{32})$/.exec(location.hash);
prefetch('me', 'status', 'projects', 'notices',
  ...(shown ? [`projects/${shown[1]}`, `files?project=${shown[1]}`, 'uploads', `jobs?project=${shown[1]}`] : []));
