// mongodb-v2-readonly-role.js: the READ-ONLY V2 MongoDB user of the migration (not a Kubernetes
// manifest; not in kustomization.yaml). Run it once against the V2 replica set as a user that
// may manage roles and users on the V2 database (userAdmin there, or root):
//
//   V2_DB=vizhub V2_READER_PASSWORD='...' \
//     mongosh 'mongodb://admin@v2-mongo-0.example.internal:27017/admin?replicaSet=rs0' \
//     --file k8s/mongodb-v2-readonly-role.js
//
// (without V2_READER_PASSWORD, mongosh prompts for it). Idempotent: a second run updates the
// role and the user's roles (and password) instead of failing.
//
// What it creates, in the V2 database (production name `vizhub`):
//   role vizhubMigrateReader  `find` on exactly the collections the fleet reads (spec section 1)
//                             and `listCollections` on the database; no write, no index, no
//                             admin action of any kind, so even a bug cannot write to V2.
//   user vizhub-migrate-reader with that role only. Its URI goes into the Secret key
//                             V2_MONGO_URI with `authSource=<the V2 database>`.
// `find` covers the fleet's queries, counts and aggregations on those collections; the `ping`
// that /readyz sends needs no privilege.

const dbName = process.env.V2_DB || 'vizhub';
const userName = process.env.V2_READER_USER || 'vizhub-migrate-reader';
const roleName = 'vizhubMigrateReader';

// V2 collections read by planner, worker and `planner verify` (src/v2/reader.rs `collections`).
const collections = ['documentInfo', 'documentContent', 'o_documentContent', 'user', 'eventRecords'];

const v2 = db.getSiblingDB(dbName);

const privileges = collections
  .map((c) => ({ resource: { db: dbName, collection: c }, actions: ['find'] }))
  .concat([{ resource: { db: dbName, collection: '' }, actions: ['listCollections'] }]);

if (v2.getRole(roleName)) {
  v2.updateRole(roleName, { privileges: privileges, roles: [] });
  print(`updated role ${roleName} on ${dbName}`);
} else {
  v2.createRole({ role: roleName, privileges: privileges, roles: [] });
  print(`created role ${roleName} on ${dbName}`);
}

const password = process.env.V2_READER_PASSWORD || passwordPrompt();
const roles = [{ role: roleName, db: dbName }];
if (v2.getUser(userName)) {
  v2.updateUser(userName, { pwd: password, roles: roles });
  print(`updated user ${userName} on ${dbName} (roles: ${roleName} only)`);
} else {
  v2.createUser({ user: userName, pwd: password, roles: roles });
  print(`created user ${userName} on ${dbName} (roles: ${roleName} only)`);
}

// Show what the user can do, for the record.
printjson(v2.getRole(roleName, { showPrivileges: true }).privileges);
