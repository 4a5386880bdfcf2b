// Simulates an edit made in V3: appends text to a file of content/<vizId> through ShareDB.
// Usage: node sharedb-edit.js <mongoUrl> <dbName> <vizId> <text>
'use strict';
const ShareDB = require('sharedb');
const ShareDBMongo = require('sharedb-mongo');
const { MongoClient } = require('mongodb');
const json1 = require('ot-json1');
ShareDB.types.register({ ...json1.type, name: 'p', uri: 'p' });
const [, , url, dbName, viz, text] = process.argv;
const p = (f) => new Promise((res, rej) => f((e, v) => (e ? rej(e) : res(v))));
(async () => {
  const client = await MongoClient.connect(url);
  const backend = new ShareDB({ db: ShareDBMongo({ mongo: (cb) => cb(null, client) }) });
  const doc = backend.connect().get('content', viz);
  await p((cb) => doc.fetch(cb));
  const [fileId, file] = Object.entries(doc.data.files)[0];
  const len = [...file.text].length;
  await p((cb) => doc.submitOp(['files', fileId, 'text', { es: [len, text] }], cb));
  console.log(JSON.stringify({ fileId, version: doc.version }));
  backend.close();
  await client.close();
})().catch((e) => { console.error(e); process.exit(1); });
