// V3's users act on what vizhub-migrate wrote, the way V3 writes it: ShareDB 5 on sharedb-mongo
// with its DEFAULT options, V3's json1 type registered as "p" (the setup of
// sharedb-v3-writes.js). Usage:
//   node sharedb-v3-acts.js <mongoUrl> <dbName> <acts JSON | - (stdin)>
// The acts are a JSON array, run in order, each an object with `act` and its arguments:
//   {act: "deleteViz", viz}            `del` of info and content (V3's DeleteViz), and the
//                                      parent's forksCount -1 by op (its decrementForksCount)
//   {act: "trash", viz}                info ops inserting `trashed: true` and `trashedTimestamp`
//   {act: "setVisibility", viz, visibility}
//   {act: "setTitle", viz, title}      info replace ops (`[field, {r: true, i: v}]`)
//   {act: "removeCollaborator", viz, user}   `del` of permission `<user>-<viz>`
//   {act: "withdrawUpvote", viz, user} `del` of upvote `<user>-<viz>`, info upvotesCount -1
//   {act: "upvote", viz, user}         upvote `<user>-<viz>` created (V3-native: no
//                                      migratedFromV2), info upvotesCount +1
//   {act: "fork", viz, owner?}         a V3 fork, as sharedb-v3-writes.js makes one: info and
//                                      content created through ShareDB, its start commit
//                                      inserted as the plain doc it is, parent's forksCount +1
//   {act: "editContent", viz, insert?} a content op inserting text at the start of the first
//                                      file (an edit V3's editor makes; no commit)
//   {act: "deleteAccount", user}       `del` of the V3 user doc
// Prints last on stdout one JSON line {results: [{act, ..., version, ...}], failures: [{act,
// error}]}: each result carries what the act made (the fork's id, the edited file's new text,
// the doc versions after the act); exits 1 on any failure.
'use strict';
const assert = require('assert');
const crypto = require('crypto');
const fs = require('fs');
const ShareDB = require('sharedb');
const ShareDBMongo = require('sharedb-mongo');
const { MongoClient } = require('mongodb');
const json1 = require('ot-json1');
ShareDB.types.register({ ...json1.type, name: 'p', uri: 'p' });

const [, , url, dbName, actsArg] = process.argv;
if (!url || !dbName || actsArg == null) {
  console.error('usage: node sharedb-v3-acts.js <mongoUrl> <dbName> <acts JSON | ->');
  process.exit(2);
}

const p = (f) => new Promise((res, rej) => f((e, v) => (e ? rej(e) : res(v))));
const newId = () => crypto.randomBytes(16).toString('hex');
const nowSeconds = () => Math.floor(Date.now() / 1000);
// A json1 component setting `key` of `data` to `value`: a replace when it is there, else an insert.
const setOp = (data, key, value) => [key, key in data ? { r: true, i: value } : { i: value }];

(async () => {
  const acts = JSON.parse(actsArg === '-' ? fs.readFileSync(0, 'utf8') : actsArg);
  assert(Array.isArray(acts), 'acts must be a JSON array');
  // See sharedb-v3-writes.js: sharedb-mongo works on the MongoClient's default database.
  const client = await MongoClient.connect(url, { dbName });
  const db = client.db(dbName);
  assert.strictEqual(client.db().databaseName, dbName, 'ShareDB would not use ' + dbName);
  const backend = new ShareDB({ db: ShareDBMongo({ mongo: (cb) => cb(null, client) }) });
  const conn = backend.connect();
  const fetchDoc = async (c, id) => {
    const d = conn.get(c, id);
    await p((cb) => d.fetch(cb));
    assert(d.type, `${c}/${id} does not exist`);
    assert.strictEqual(d.type.name, 'p', `${c}/${id} has type ${d.type && d.type.name}`);
    return d;
  };
  const submit = (d, op) => p((cb) => d.submitOp(op, cb));
  const del = async (c, id) => {
    const d = await fetchDoc(c, id);
    await p((cb) => d.del(cb));
    assert.strictEqual(d.type, null, `${c}/${id} still has a type after del`);
    return d.version;
  };

  const run = {
    async deleteViz({ viz }) {
      const info = await fetchDoc('info', viz);
      const parent = info.data.forkedFrom;
      const out = { info: await del('info', viz), content: await del('content', viz) };
      if (parent) {
        const parentInfo = await fetchDoc('info', parent);
        await submit(parentInfo, ['forksCount', { ena: -1 }]);
        out.parent = parent;
      }
      return out;
    },
    async trash({ viz }) {
      const info = await fetchDoc('info', viz);
      await submit(info, setOp(info.data, 'trashed', true));
      await submit(info, setOp(info.data, 'trashedTimestamp', nowSeconds()));
      return { info: info.version };
    },
    async setVisibility({ viz, visibility }) {
      const info = await fetchDoc('info', viz);
      await submit(info, setOp(info.data, 'visibility', visibility));
      return { info: info.version };
    },
    async setTitle({ viz, title }) {
      const info = await fetchDoc('info', viz);
      await submit(info, setOp(info.data, 'title', title));
      return { info: info.version };
    },
    async removeCollaborator({ viz, user }) {
      return { permission: await del('permission', `${user}-${viz}`) };
    },
    async withdrawUpvote({ viz, user }) {
      const upvote = await del('upvote', `${user}-${viz}`);
      const info = await fetchDoc('info', viz);
      await submit(info, ['upvotesCount', { ena: -1 }]);
      return { upvote, info: info.version };
    },
    async upvote({ viz, user }) {
      const id = `${user}-${viz}`;
      const d = conn.get('upvote', id);
      await p((cb) => d.fetch(cb));
      assert(!d.type, `upvote/${id} exists`);
      await p((cb) => d.create({ id, user, viz, timestamp: nowSeconds() }, 'p', cb));
      const info = await fetchDoc('info', viz);
      await submit(info, ['upvotesCount', { ena: 1 }]);
      return { upvote: d.version, info: info.version };
    },
    async fork({ viz, owner }) {
      const fork = newId();
      const parentInfo = await fetchDoc('info', viz);
      const parentContent = await fetchDoc('content', viz);
      const commitId = newId();
      const now = nowSeconds();
      const forkInfo = {
        ...parentInfo.data,
        id: fork,
        forkedFrom: viz,
        owner: owner || parentInfo.data.owner,
        start: commitId,
        end: commitId,
        created: now,
        updated: now,
        forksCount: 0,
        upvotesCount: 0,
      };
      // A V3-native viz: nothing of the migration's bookkeeping.
      for (const k of ['migratedFromV2', 'migratedTimestamp', 'forkedFromIsBackfilled']) {
        delete forkInfo[k];
      }
      // The fork's content is the parent's at its end commit: the parent's content doc when V3
      // has no uncommitted edit of it (the scenario forks such a viz).
      const forkContent = JSON.parse(JSON.stringify(parentContent.data));
      const startOps = 'id' in forkContent ? ['id', { r: true, i: fork }] : null;
      forkContent.id = fork;
      await db.collection('commit').insertOne({
        _id: commitId,
        id: commitId,
        parent: parentInfo.data.end,
        viz: fork,
        authors: [forkInfo.owner],
        timestamp: now,
        ops: startOps,
        milestone: null,
      });
      const infoDoc = conn.get('info', fork);
      await p((cb) => infoDoc.create(forkInfo, 'p', cb));
      const contentDoc = conn.get('content', fork);
      await p((cb) => contentDoc.create(forkContent, 'p', cb));
      await submit(parentInfo, ['forksCount', { ena: 1 }]);
      return { fork, commit: commitId, info: parentInfo.version };
    },
    async editContent({ viz, insert }) {
      const content = await fetchDoc('content', viz);
      const file = Object.keys(content.data.files || {})[0];
      assert(file, `content/${viz} has no file`);
      const text = insert || '/* edited in V3 */\n';
      await submit(content, ['files', file, 'text', { es: [text] }]);
      return { file, text: content.data.files[file].text, content: content.version };
    },
    async deleteAccount({ user }) {
      return { user: await del('user', user) };
    },
  };

  const results = [];
  const failures = [];
  for (const a of acts) {
    try {
      const f = run[a.act];
      assert(f, `unknown act ${a.act}`);
      results.push({ ...a, ...(await f(a)) });
    } catch (e) {
      failures.push({ ...a, error: e.message });
    }
  }
  console.log(JSON.stringify({ results, failures }));
  await p((cb) => backend.close(cb)).catch(() => {});
  await client.close().catch(() => {});
  process.exit(failures.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
