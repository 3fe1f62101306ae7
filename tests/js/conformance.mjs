// Conformance of the loftqd mirror with the official JS client (@huggingface/hub).
// Usage: node conformance.mjs ENDPOINT TOKEN_FILE PUBLISHED_REPO PUBLISHED_DIR OUT_DIR
//   - lists and downloads PUBLISHED_REPO (written by `loftqd publish`) and compares every file
//     with PUBLISHED_DIR;
//   - creates js-org/uploaded, uploads regular, nested and LFS files (basic and multipart), lists
//     and downloads them back, and writes what it uploaded under OUT_DIR for the C++ side to
//     compare with a `loftqd fetch`.
// Prints one JSON line with what it did; exits non-zero on the first mismatch.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import {
  createRepo,
  downloadFile,
  fileDownloadInfo,
  listFiles,
  modelInfo,
  pathsInfo,
  uploadFiles,
} from "@huggingface/hub";

const [endpoint, tokenFile, publishedRepo, publishedDir, outDir] = process.argv.slice(2);
const accessToken = readFileSync(tokenFile, "utf8").trim();
const hubUrl = endpoint;

function fail(msg) {
  console.error("conformance: " + msg);
  process.exit(1);
}

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(relative(publishedDir, p));
  }
  return out;
}

async function readAll(repo, path) {
  const blob = await downloadFile({ repo, path, hubUrl, accessToken });
  if (!blob) fail(`${repo}: ${path} not found`);
  return Buffer.from(await blob.arrayBuffer());
}

function pseudoRandom(n, seed) {
  const b = Buffer.alloc(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

const report = { listed: 0, downloaded: 0, uploaded: 0 };

// 1. Read what loftqd published.
const local = walk(publishedDir).sort();
const remote = [];
for await (const e of listFiles({ repo: publishedRepo, recursive: true, hubUrl, accessToken })) {
  if (e.type === "file") remote.push(e);
}
report.listed = remote.length;
const remotePaths = remote.map((e) => e.path).sort();
if (JSON.stringify(remotePaths) !== JSON.stringify(local))
  fail(`listing ${JSON.stringify(remotePaths)} != local ${JSON.stringify(local)}`);
for (const e of remote) {
  const want = readFileSync(join(publishedDir, e.path));
  if (e.size !== want.length) fail(`${e.path}: listed size ${e.size} != ${want.length}`);
  const got = await readAll(publishedRepo, e.path);
  if (!got.equals(want)) fail(`${e.path}: downloaded bytes differ`);
  if (e.lfs) {
    const sha = createHash("sha256").update(want).digest("hex");
    if (e.lfs.oid !== sha) fail(`${e.path}: lfs.oid ${e.lfs.oid} != ${sha}`);
    const info = await fileDownloadInfo({ repo: publishedRepo, path: e.path, hubUrl, accessToken });
    if (!info || info.size !== want.length || !info.etag.includes(sha))
      fail(`${e.path}: fileDownloadInfo ${JSON.stringify(info)}`);
  }
  report.downloaded++;
}
const info = await modelInfo({ name: publishedRepo, hubUrl, accessToken });
if (!info || !info.id) fail("modelInfo returned nothing");

// 2. Write with the JS client.
const repo = "js-org/uploaded";
await createRepo({ repo, hubUrl, accessToken });
const files = [
  { path: "README.md", content: Buffer.from("# uploaded by @huggingface/hub\n") },
  { path: "nested/dir/config.json", content: Buffer.from('{"from": "js"}\n') },
  { path: "weights.safetensors", content: pseudoRandom(300000, 7) },
  { path: "big.bin", content: pseudoRandom(2500000, 11) }, // multipart on the test mirror
];
await uploadFiles({
  repo,
  hubUrl,
  accessToken,
  files: files.map((f) => ({ path: f.path, content: new Blob([f.content]) })),
  commitTitle: "upload from the JS client",
});
report.uploaded = files.length;
const listed = [];
for await (const e of listFiles({ repo, recursive: true, hubUrl, accessToken }))
  if (e.type === "file") listed.push(e.path);
listed.sort();
const expected = files.map((f) => f.path).sort();
if (JSON.stringify(listed) !== JSON.stringify(expected))
  fail(`uploaded listing ${JSON.stringify(listed)} != ${JSON.stringify(expected)}`);
for (const f of files) {
  const got = await readAll(repo, f.path);
  if (!got.equals(f.content)) fail(`${f.path}: round trip through the mirror differs`);
  const dst = join(outDir, f.path);
  mkdirSync(dirname(dst), { recursive: true });
  writeFileSync(dst, f.content);
}
const pi = await pathsInfo({ repo, paths: ["weights.safetensors", "nested"], hubUrl, accessToken });
if (pi.length !== 2) fail(`pathsInfo returned ${JSON.stringify(pi)}`);
console.log(JSON.stringify(report));
