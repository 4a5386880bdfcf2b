// Opens what vizhub-migrate wrote the way V3 does: ShareDB 5 on sharedb-mongo, with V3's json1
// type registered as "p". Usage:
//   node sharedb-check.js <mongoUrl> <dbName> <vizId,...> [--no-submit]
// For every viz: info, content, the owner's user, its upvotes and permissions fetch through
// ShareDB with type "p"; the commit chain from info.end back to the root (across forks) replays
// with ot-json1 from {} to the content; info's and content's op logs (the ops sharedb-mongo
// links from the snapshot's _o) rebuild their snapshots; the V3 invariants hold; and (unless
// --no-submit) an op
// submitted to the content through ShareDB is accepted and visible on refetch.
// Prints {checked, failures: [{viz, error}]}; exits 1 on any failure.
'use strict';
const assert = require('assert');
const ShareDB = require('sharedb');
const ShareDBMongo = require('sharedb-mongo');
const { MongoClient } = require('mongodb');
const json1 = require('ot-json1');
ShareDB.types.register({ ...json1.type, name: 'p', uri: 'p' });

const [, , url, dbName, vizList, flag] = process.argv;
const submitToo = flag !== '--no-submit';

const p = (f) => new Promise((res, rej) => f((e, v) => (e ? rej(e) : res(v))));

(async () => {
  const client = await MongoClient.connect(url);
  const db = client.db(dbName);
  const backend = new ShareDB({ db: ShareDBMongo({ mongo: (cb) => cb(null, client), mongoOptions: {} }) });
  const conn = backend.connect();
  const fetchDoc = async (c, id) => {
    const d = conn.get(c, id);
    await p((cb) => d.fetch(cb));
    assert(d.type, `${c}/${id} does not exist`);
    assert.strictEqual(d.type.name, 'p', `${c}/${id} has type ${d.type && d.type.name}`);
    return d;
  };
  const query = async (c, q) => p((cb) => conn.createFetchQuery(c, q, {}, cb));
  const commits = db.collection('commit');
  const failures = [];
  const vizzes = vizList.split(',').filter(Boolean);
  for (const viz of vizzes) {
    try {
      const infoDoc = await fetchDoc('info', viz);
      const info = infoDoc.data;
      const content = await fetchDoc('content', viz);
      for (const d of [infoDoc, content]) {
        const built = await p((cb) => conn.fetchSnapshot(d.collection, viz, d.version, cb));
        assert.strictEqual(built.v, d.version, `${d.collection}/${viz}: op log ends at v${built.v}`);
        assert.deepStrictEqual(built.data, d.data, `${d.collection}/${viz}: op log does not rebuild the snapshot`);
      }
      await fetchDoc('user', info.owner);
      for (const u of await query('upvote', { viz })) assert.strictEqual(u.type.name, 'p');
      for (const u of await query('permission', { resource: viz })) assert.strictEqual(u.type.name, 'p');
      // Commit chain, oldest first.
      const chain = [];
      let id = info.end;
      while (id) {
        const c = await commits.findOne({ _id: id });
        assert(c, `commit ${id} missing`);
        chain.unshift(c);
        assert(chain.length < 100000, 'commit cycle');
        id = c.parent;
      }
      let doc = {};
      for (const c of chain) doc = json1.type.apply(doc, c.ops);
      assert.deepStrictEqual(doc, content.data, 'replayed commit chain != content');
      const start = await commits.findOne({ _id: info.start });
      const end = chain[chain.length - 1];
      assert(start, 'start commit missing');
      assert.strictEqual(start.timestamp, info.created, 'start.timestamp != created');
      assert.strictEqual(end.timestamp, info.updated, 'end.timestamp != updated');
      assert.deepStrictEqual(start.authors, [info.owner], 'start.authors != [owner]');
      if (start.parent) {
        const parent = await commits.findOne({ _id: start.parent });
        assert.strictEqual(parent.viz, info.forkedFrom, 'start.parent is not a commit of forkedFrom');
      }
      if (submitToo) {
        const op = ['files', 'zzzz0000', { i: { name: 'check.txt', text: 'ok 🐧' } }];
        await p((cb) => content.submitOp(op, cb));
        const again = conn.get('content', viz + '');
        const fresh = backend.connect().get('content', viz);
        await p((cb) => fresh.fetch(cb));
        assert.strictEqual(fresh.data.files.zzzz0000.text, 'ok 🐧', 'submitted op not visible');
        void again;
      }
    } catch (e) {
      failures.push({ viz, error: e.message });
    }
  }
  console.log(JSON.stringify({ checked: vizzes.length, failures }));
  backend.close();
  await client.close();
  process.exit(failures.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
