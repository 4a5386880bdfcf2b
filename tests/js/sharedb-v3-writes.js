// Writes to what vizhub-migrate wrote the way V3 does: ShareDB 5 on sharedb-mongo with its
// DEFAULT options (so sharedb-mongo creates its op-log indexes itself, `createIndex({d:1,v:1},
// {background:true})` and `createIndex({src:1,seq:1,v:1},{background:true})`, the first time it
// touches each `o_*` collection), V3's json1 type registered as "p". Usage:
//   node sharedb-v3-writes.js <mongoUrl> <dbName> <vizId,...>
// For every viz: an op replacing info's title and an op adding a file to content are accepted,
// and both are visible when fetched anew on another connection. Then a V3-style fork of the
// first viz: its info and content created through ShareDB (type "p"), its start commit (the
// op giving content the fork's id) inserted as the plain doc it is, and the parent's forksCount incremented by an op; the fork fetches
// with type "p", its commit chain replays to its content, and the parent counts one fork more.
// Prints the indexes of every `o_*` collection on stderr, and last on stdout one JSON line
// {checked, failures: [{viz, error}], indexes: {o_<c>: [index, ...]}}; exits 1 on any failure.
'use strict';
const assert = require('assert');
const crypto = require('crypto');
const ShareDB = require('sharedb');
const ShareDBMongo = require('sharedb-mongo');
const { MongoClient } = require('mongodb');
const json1 = require('ot-json1');
ShareDB.types.register({ ...json1.type, name: 'p', uri: 'p' });

const [, , url, dbName, vizList] = process.argv;
if (!url || !dbName || vizList == null) {
  console.error('usage: node sharedb-v3-writes.js <mongoUrl> <dbName> <vizId,...>');
  process.exit(2);
}

const p = (f) => new Promise((res, rej) => f((e, v) => (e ? rej(e) : res(v))));
const newId = () => crypto.randomBytes(16).toString('hex');
const nowSeconds = () => Math.floor(Date.now() / 1000);
const TEST_FILE = 'zzzz0000';

(async () => {
  // sharedb-mongo takes a MongoClient (not a Db) from the `mongo` callback and works on
  // `client.db()`, the client's default database: a Db passed there fails (`mongoClient.db is
  // not a function`), and a URL without a database would send ShareDB to "test". `dbName` makes
  // the default database the one asked for, whatever the URL says.
  const client = await MongoClient.connect(url, { dbName });
  const db = client.db(dbName);
  assert.strictEqual(client.db().databaseName, dbName, 'ShareDB would not use ' + dbName);
  const backend = new ShareDB({ db: ShareDBMongo({ mongo: (cb) => cb(null, client) }) });
  const conn = backend.connect();
  const fetchDoc = async (connection, c, id) => {
    const d = connection.get(c, id);
    await p((cb) => d.fetch(cb));
    assert(d.type, `${c}/${id} does not exist`);
    assert.strictEqual(d.type.name, 'p', `${c}/${id} has type ${d.type && d.type.name}`);
    return d;
  };
  // A connection of its own for every read-back, so nothing comes from a cached doc.
  const fetchFresh = (c, id) => fetchDoc(backend.connect(), c, id);

  const failures = [];
  const vizzes = vizList.split(',').filter(Boolean);
  for (const viz of vizzes) {
    try {
      const info = await fetchDoc(conn, 'info', viz);
      const title = `${info.data.title} (v3)`;
      const titleOp = 'title' in info.data
        ? ['title', { r: true, i: title }]
        : ['title', { i: title }];
      await p((cb) => info.submitOp(titleOp, cb));
      const content = await fetchDoc(conn, 'content', viz);
      const files = content.data.files || {};
      assert(!(TEST_FILE in files), `content already has a file ${TEST_FILE}`);
      const fileOp = 'files' in content.data
        ? ['files', TEST_FILE, { i: { name: 'v3.txt', text: 'ok 🐧' } }]
        : ['files', { i: { [TEST_FILE]: { name: 'v3.txt', text: 'ok 🐧' } } }];
      await p((cb) => content.submitOp(fileOp, cb));

      const info2 = await fetchFresh('info', viz);
      assert.strictEqual(info2.data.title, title, 'title op not visible on refetch');
      assert.strictEqual(info2.version, info.version, 'info version differs on refetch');
      const content2 = await fetchFresh('content', viz);
      assert.deepStrictEqual(content2.data.files[TEST_FILE], { name: 'v3.txt', text: 'ok 🐧' },
        'file op not visible on refetch');
      assert.strictEqual(content2.version, content.version, 'content version differs on refetch');
    } catch (e) {
      failures.push({ viz, error: e.message });
    }
  }

  // A fork of the first viz, made the way V3 makes one.
  const parentId = vizzes[0];
  let fork = null;
  if (parentId) {
    try {
      fork = newId();
      const parentInfo = await fetchDoc(conn, 'info', parentId);
      const parentContent = await fetchFresh('content', parentId);
      const forksBefore = parentInfo.data.forksCount;
      assert(Number.isInteger(forksBefore), `parent forksCount is ${forksBefore}`);
      const owner = parentInfo.data.owner;
      const commitId = newId();
      const now = nowSeconds();
      const forkInfo = {
        ...parentInfo.data,
        id: fork,
        forkedFrom: parentId,
        owner,
        start: commitId,
        end: commitId,
        created: now,
        updated: now,
        forksCount: 0,
        upvotesCount: 0,
      };
      // The fork's content is the parent's at the parent's end commit (so without the
      // uncommitted test file added above) under the fork's id. Content holds its viz's `id`,
      // so the fork's start commit is not `ops: null` but the op that changes it: the chain
      // from the root must replay to the fork's content.
      const forkContent = JSON.parse(JSON.stringify(parentContent.data));
      if (forkContent.files) delete forkContent.files[TEST_FILE];
      const startOps = 'id' in forkContent ? ['id', { r: true, i: fork }] : null;
      forkContent.id = fork;
      // Commits are plain docs, not ShareDB's.
      await db.collection('commit').insertOne({
        _id: commitId,
        id: commitId,
        parent: parentInfo.data.end,
        viz: fork,
        authors: [owner],
        timestamp: now,
        ops: startOps,
        milestone: null,
      });
      const infoDoc = conn.get('info', fork);
      await p((cb) => infoDoc.create(forkInfo, 'p', cb));
      const contentDoc = conn.get('content', fork);
      await p((cb) => contentDoc.create(forkContent, 'p', cb));
      // ot-json1 1.0.2 has the number subtype: `ena` adds to a number.
      await p((cb) => parentInfo.submitOp(['forksCount', { ena: 1 }], cb));

      const parentAfter = await fetchFresh('info', parentId);
      assert.strictEqual(parentAfter.data.forksCount, forksBefore + 1, 'parent forksCount did not go up by one');
      const forkInfo2 = await fetchFresh('info', fork);
      assert.deepStrictEqual(forkInfo2.data, forkInfo, 'fork info differs on refetch');
      const forkContent2 = await fetchFresh('content', fork);
      assert.deepStrictEqual(forkContent2.data, forkContent, 'fork content differs on refetch');
      // The fork's commit chain (through the parent's commits) replays to the fork's content.
      const chain = [];
      let id = forkInfo2.data.end;
      while (id) {
        const c = await db.collection('commit').findOne({ _id: id });
        assert(c, `commit ${id} missing`);
        chain.unshift(c);
        assert(chain.length < 100000, 'commit cycle');
        id = c.parent;
      }
      let replayed = {};
      for (const c of chain) replayed = json1.type.apply(replayed, c.ops);
      assert.deepStrictEqual(replayed, forkContent2.data, "replayed fork commit chain != fork's content");
    } catch (e) {
      failures.push({ viz: `fork of ${parentId}`, error: e.message });
    }
  }

  // The op-log indexes, as sharedb-mongo left them in this database.
  const indexes = {};
  try {
    const names = (await db.listCollections({}, { nameOnly: true }).toArray())
      .map((c) => c.name)
      .filter((n) => n.startsWith('o_'))
      .sort();
    for (const n of names) indexes[n] = await db.collection(n).listIndexes().toArray();
    for (const n of ['o_info', 'o_content']) {
      const names = (indexes[n] || []).map((i) => i.name);
      for (const want of ['d_1_v_1', 'src_1_seq_1_v_1']) {
        assert(names.includes(want), `${n} has no index ${want} in ${dbName}: ${names}`);
      }
    }
  } catch (e) {
    failures.push({ viz: 'indexes', error: e.message });
  }
  for (const [n, list] of Object.entries(indexes)) console.error(`${n}: ${JSON.stringify(list)}`);

  console.log(JSON.stringify({ checked: vizzes.length, fork, failures, indexes }));
  await p((cb) => backend.close(cb)).catch(() => {});
  await client.close().catch(() => {});
  process.exit(failures.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
