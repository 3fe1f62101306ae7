// Conformance of the loftqd mirror with the official JS client (@huggingface/hub).
// Usage: node conformance.mjs ENDPOINT TOKEN_FILE PUBLISHED_REPO PUBLISHED_DIR OUT_DIR
//   - lists and downloads PUBLISHED_REPO (written by `loftqd publish`) and compares every file
//     with PUBLISHED_DIR;
//   - creates js-org/uploaded, uploads regular, nested and LFS files (basic and multipart), lists
//     and downloads them back, and writes what it uploaded under OUT_DIR for the C++ side to
//     compare with a `loftqd fetch`;
//   - then the rest of the client's routes: whoAmI, listCommits (paginated), a tag (made with the
//     Hub's POST /tag/{rev}, as huggingface_hub's create_tag sends it) and downloads by tag,
//     fileExists (raw), folder deletes ("dir/"), cardData and tags from the README, listModels,
//     deleteRepo.
// Prints one JSON line with what it did; exits non-zero on the first mismatch.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import {
  createRepo,
  deleteFiles,
  deleteRepo,
  downloadFile,
  fileDownloadInfo,
  fileExists,
  listCommits,
  listFiles,
  listModels,
  modelInfo,
  pathsInfo,
  repoExists,
  uploadFiles,
  whoAmI,
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

const report = { listed: 0, downloaded: 0, uploaded: 0, commits: 0, models: 0, routes: [] };

async function listPaths(repo, revision) {
  const out = [];
  for await (const e of listFiles({ repo, revision, recursive: true, hubUrl, accessToken }))
    if (e.type === "file") out.push(e.path);
  return out.sort();
}

function sameList(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want))
    fail(`${what}: ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
}

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
  {
    path: "README.md",
    content: Buffer.from(
      "---\nlicense: mit\ntags:\n- js-upload\n---\n# uploaded by @huggingface/hub\n",
    ),
  },
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

// 3. The rest of the client's routes.
const me = await whoAmI({ hubUrl, accessToken });
if (typeof me.name !== "string" || !Array.isArray(me.orgs) || me.auth?.type !== "access_token")
  fail(`whoAmI returned ${JSON.stringify(me)}`);
report.routes.push("whoAmI");

// Three more commits, then the history in pages of two (listCommits follows Link).
for (let i = 1; i <= 3; i++)
  await uploadFiles({
    repo,
    hubUrl,
    accessToken,
    files: [{ path: `notes/${i}.txt`, content: new Blob([`note ${i}\n`]) }],
    commitTitle: `note ${i}`,
  });
const commits = [];
for await (const c of listCommits({ repo, hubUrl, accessToken, batchSize: 2 })) commits.push(c);
sameList(
  "listCommits titles",
  commits.map((c) => c.title),
  ["note 3", "note 2", "note 1", "upload from the JS client", "initial commit"],
);
const head = (await modelInfo({ name: repo, hubUrl, accessToken, additionalFields: ["sha"] }))
  .sha;
if (commits[0].oid !== head) fail(`newest commit ${commits[0].oid} != model sha ${head}`);
for (const c of commits)
  if (!(c.date instanceof Date) || isNaN(c.date) || !Array.isArray(c.authors))
    fail(`listCommits entry ${JSON.stringify(c)}`);
report.commits = commits.length;
report.routes.push("listCommits");

// A tag on the commit of the first upload; downloads and listings by tag see that commit.
const tagRes = await fetch(`${hubUrl}/api/models/${repo}/tag/${commits[3].oid}`, {
  method: "POST",
  headers: { Authorization: `Bearer ${accessToken}`, "Content-Type": "application/json" },
  body: JSON.stringify({ tag: "v1", message: "first upload" }),
});
if (!tagRes.ok) fail(`POST tag: ${tagRes.status} ${await tagRes.text()}`);
sameList("listFiles at tag v1", await listPaths(repo, "v1"), expected);
const tagged = await downloadFile({ repo, path: "README.md", revision: "v1", hubUrl, accessToken });
if (!tagged || !Buffer.from(await tagged.arrayBuffer()).equals(files[0].content))
  fail("README.md at tag v1 differs");
if (await fileExists({ repo, path: "notes/1.txt", revision: "v1", hubUrl, accessToken }))
  fail("notes/1.txt exists at v1, which predates it");
report.routes.push("tag");

// fileExists (HEAD /raw/...).
if (!(await fileExists({ repo, path: "weights.safetensors", hubUrl, accessToken })))
  fail("fileExists(weights.safetensors) is false");
if (!(await fileExists({ repo, path: "nested/dir/config.json", hubUrl, accessToken })))
  fail("fileExists(nested/dir/config.json) is false");
if (await fileExists({ repo, path: "nope.txt", hubUrl, accessToken }))
  fail("fileExists(nope.txt) is true");
report.routes.push("fileExists");

// Folder delete as the client sends it ("notes/" as a deletedFile), on main.
await deleteFiles({ repo, paths: ["notes/"], hubUrl, accessToken, commitTitle: "drop notes" });
sameList("listFiles after deleting notes/", await listPaths(repo), expected);
report.routes.push("folderDelete");

// listModels by owner and by search, with the fields the client reads.
const scratch = "js-org/scratch";
await createRepo({ repo: scratch, hubUrl, accessToken });
const models = [];
for await (const m of listModels({ search: { owner: "js-org" }, hubUrl, accessToken }))
  models.push(m);
sameList(
  "listModels owner=js-org",
  models.map((m) => m.name),
  [scratch, repo],
);
for (const m of models)
  if (m.private !== false || !(m.updatedAt instanceof Date) || isNaN(m.updatedAt))
    fail(`listModels entry ${JSON.stringify(m)}`);
const found = [];
for await (const m of listModels({ search: { query: "uploa" }, hubUrl, accessToken, limit: 5 }))
  found.push(m.name);
sameList("listModels search=uploa", found, [repo]);
const tagged_models = [];
for await (const m of listModels({ search: { tags: ["js-upload"] }, hubUrl, accessToken }))
  tagged_models.push(m.name);
sameList("listModels filter=js-upload", tagged_models, [repo]);
const card = await modelInfo({
  name: repo,
  hubUrl,
  accessToken,
  additionalFields: ["cardData", "tags"],
});
if (card.cardData?.license !== "mit") fail(`modelInfo cardData ${JSON.stringify(card.cardData)}`);
sameList("modelInfo tags", card.tags, ["js-upload", "license:mit"]);
report.routes.push("cardData");
report.models = models.length;
report.routes.push("listModels");

// deleteRepo, then the repo is gone.
await deleteRepo({ repo: scratch, hubUrl, accessToken });
if (await repoExists({ repo: scratch, hubUrl, accessToken })) fail(`${scratch} still exists`);
if (!(await repoExists({ repo, hubUrl, accessToken }))) fail(`${repo} is gone too`);
report.routes.push("deleteRepo");

console.log(JSON.stringify(report));
