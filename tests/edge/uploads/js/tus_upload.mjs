// Upload one file with tus-js-client (from web/node_modules), as Uppy would.
// Usage: node tus_upload.mjs <options.json>
// options: endpoint, file, key, parallelUploads, retryDelays, metadata.
// Prints one JSON object per line: {"event": "request", method, offset},
// {"event": "progress", sent}, then {"event": "success", url} or
// {"event": "error", message}; exits 0 on success.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(here, "../../../../web");
const require = createRequire(path.join(web, "package.json"));
const tus = require("tus-js-client");

const options = JSON.parse(readFileSync(process.argv[2], "utf8"));
const data = readFileSync(options.file);
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const upload = new tus.Upload(data, {
  endpoint: options.endpoint,
  headers: { Authorization: `Bearer ${options.key}` },
  metadata: options.metadata || { filename: path.basename(options.file) },
  retryDelays: options.retryDelays || [0, 200, 500, 1000, 2000],
  parallelUploads: options.parallelUploads || 1,
  onBeforeRequest(req) {
    emit({ event: "request", method: req.getMethod(), url: req.getURL(),
           offset: req.getHeader("Upload-Offset") ?? null,
           concat: req.getHeader("Upload-Concat") ?? null });
  },
  onProgress(sent) { emit({ event: "progress", sent }); },
  onError(error) { emit({ event: "error", message: String(error) }); process.exit(1); },
  onSuccess() { emit({ event: "success", url: upload.url }); process.exit(0); },
});
upload.start();
