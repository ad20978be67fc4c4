// bench/china.py's person uploading files with tus-js-client (web/node_modules),
// configured as relay's page configures Uppy's tus plugin: 16 MiB chunks,
// its retry delays, at most `limit` files at once (Uppy's default is 5).
// An upload whose retries run out is started again from where the edge has
// it (as a person clicking "retry" would), counted as a failure the person saw.
//
// Usage: node tus_person.mjs <options.json>
// options: endpoint, key, project, files: [{path, name}], limit, retryDelays.
// Prints one JSON object per line, each with `t` (ms since the start):
//   {"event": "progress", "file", "sent"}        at most every 250 ms per file
//   {"event": "retry", "file"}                   tus-js-client retries a request
//   {"event": "failed", "file", "message"}       retries ran out; started again
//   {"event": "done", "file", "url", "seconds"}  the edge has every byte
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../web/package.json"));
const tus = require("tus-js-client");

const options = JSON.parse(readFileSync(process.argv[2], "utf8"));
const started = Date.now();
const emit = (event) => process.stdout.write(JSON.stringify({ t: Date.now() - started, ...event }) + "\n");

function uploadOne(file) {
  const data = readFileSync(file.path);
  const began = Date.now();
  let lastProgress = 0;
  return new Promise((resolve) => {
    let url = null;
    const attempt = () => {
      const upload = new tus.Upload(data, {
        endpoint: options.endpoint,
        uploadUrl: url,
        headers: { Authorization: `Bearer ${options.key}` },
        metadata: { filename: file.name, project: options.project },
        chunkSize: 16 * 1024 * 1024,
        retryDelays: options.retryDelays,
        onShouldRetry() {
          emit({ event: "retry", file: file.name });
          return true;
        },
        onUploadUrlAvailable() {
          url = upload.url;
        },
        onProgress(sent) {
          const now = Date.now();
          if (now - lastProgress >= 250 || sent === data.length) {
            lastProgress = now;
            emit({ event: "progress", file: file.name, sent });
          }
        },
        onError(error) {
          emit({ event: "failed", file: file.name, message: String(error).slice(0, 300) });
          setTimeout(attempt, 1000);
        },
        onSuccess() {
          emit({ event: "done", file: file.name, url: upload.url, seconds: (Date.now() - began) / 1000 });
          resolve();
        },
      });
      upload.start();
    };
    attempt();
  });
}

const queue = [...options.files];
const workers = Array.from({ length: Math.min(options.limit, queue.length) }, async () => {
  while (queue.length) await uploadOne(queue.shift());
});
await Promise.all(workers);
process.exit(0);
