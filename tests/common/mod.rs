//! Test helpers: an in-memory V3 "world" that translates V2 vizzes parent-first the way the
//! worker will (parent resolved, fork point chosen, content at the fork point replayed), so
//! tests read like scenarios. Pure: no database, no broker (those are the fleet's tests).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::HashMap;
use vizhub_migrate::translate::{
    self, Config, Context, Parent, ParentRequest, Previous, Translation,
};
use vizhub_migrate::v2::V2Viz;
use vizhub_migrate::{v3, PRIMORDIAL_VIZ_ID};

pub const NOW: i64 = 1_700_000_000;

#[derive(Default)]
pub struct World {
    pub v2: HashMap<String, V2Viz>,
    pub users: HashMap<String, Value>,
    pub analytics: HashMap<String, Value>,
    pub translations: HashMap<String, Translation>,
    pub commits: HashMap<String, v3::Commit>,
    /// Every viz's commits in chain order.
    pub chains: HashMap<String, Vec<v3::Commit>>,
    pub cfg: Config,
}

/// A V2 user doc for an id, as V2 stored it.
pub fn v2_user(id: &str) -> Value {
    json!({"_id": id, "id": id, "userName": format!("user{id}"), "fullName": format!("User {id}"),
           "email": format!("{id}@example.com"), "avatarUrl": null, "company": null, "website": null,
           "location": null, "bio": null, "_type": "http://sharejs.org/types/JSONv0", "_v": 1})
}

impl World {
    /// All real fixtures, with users synthesized for every referenced id except `leave_out`.
    pub fn with_fixtures(leave_out: &[&str]) -> World {
        let mut w = World::default();
        for (id, raw) in vizhub_migrate::fixtures::viz_fixtures() {
            w.v2.insert(id, vizhub_migrate::fixtures::v2_viz(&raw));
        }
        for (id, raw) in vizhub_migrate::fixtures::user_fixtures() {
            w.users.insert(id, raw);
        }
        let referenced: Vec<String> =
            w.v2.values()
                .filter_map(|v| translate::prepare(v, &Config::default()).ok())
                .flat_map(|p| p.user_ids)
                .collect();
        for u in referenced {
            if !leave_out.contains(&u.as_str()) {
                w.users.entry(u.clone()).or_insert_with(|| v2_user(&u));
            }
        }
        w
    }

    pub fn add(&mut self, viz: V2Viz) {
        let id = viz.info["id"].as_str().unwrap().to_string();
        self.v2.insert(id, viz);
    }

    /// Translate `viz` (and, first, its parents), recording the result. Returns the error if any.
    pub fn migrate(&mut self, viz: &str) -> Result<&Translation, translate::TranslateError> {
        self.migrate_depth(viz, 0)?;
        Ok(&self.translations[viz])
    }

    fn migrate_depth(&mut self, viz: &str, depth: usize) -> Result<(), translate::TranslateError> {
        assert!(depth < 64, "fork chain too deep at {viz}");
        if self.translations.contains_key(viz) {
            return Ok(());
        }
        let p = translate::prepare(&self.v2[viz], &self.cfg)?;
        let (parent_viz, backfilled) = match &p.parent {
            ParentRequest::Root => (None, false),
            ParentRequest::Viz(id)
                if self.v2.contains_key(id) && self.migrate_depth(id, depth + 1).is_ok() =>
            {
                (Some(id.clone()), false)
            }
            _ => {
                self.migrate_depth(PRIMORDIAL_VIZ_ID, depth + 1)?;
                (Some(PRIMORDIAL_VIZ_ID.to_string()), true)
            }
        };
        let fork = parent_viz.map(|pv| {
            let chain = &self.chains[&pv];
            let at = translate::fork_point(chain, p.created).unwrap().id.clone();
            let content = v3::content_at(&self.commits, &at).unwrap();
            (pv, at, content)
        });
        let parent = match &fork {
            None => Parent::Root,
            Some((viz, commit, content)) => Parent::Fork {
                viz,
                commit,
                content,
                backfilled,
            },
        };
        let ctx = Context {
            parent,
            users: &self.users,
            analytics: self.analytics.get(&p.analytics_id),
            v3_analytics: None,
            previous: None,
            deleted_users: &vizhub_migrate::translate::NO_DELETED_USERS,
            now: NOW,
        };
        let t = translate::translate(&p, &ctx, &self.cfg)?;
        self.record(t);
        Ok(())
    }

    /// Re-sync a migrated viz after its V2 docs changed.
    pub fn resync(&mut self, viz: &str) -> Result<&Translation, translate::TranslateError> {
        let p = translate::prepare(&self.v2[viz], &self.cfg)?;
        let old = &self.translations[viz];
        let previous = Previous {
            content_v: old.content_v,
            start_commit: old.info.start.clone(),
            end_commit: old.info.end.clone(),
            end_timestamp: self.commits[&old.info.end].timestamp,
            content: old.content.clone(),
            file_ids: old.file_ids.clone(),
            analytics: old.analytics_v2.clone(),
            forked_from: old.info.forked_from.clone(),
            forked_from_is_backfilled: old.info.forked_from_is_backfilled,
        };
        let v3_analytics = old.analytics.clone();
        let ctx = Context {
            parent: Parent::Root,
            users: &self.users,
            analytics: self.analytics.get(&p.analytics_id),
            v3_analytics: v3_analytics.as_ref(),
            previous: Some(&previous),
            deleted_users: &vizhub_migrate::translate::NO_DELETED_USERS,
            now: NOW + 1,
        };
        let t = translate::translate(&p, &ctx, &self.cfg)?;
        self.record(t);
        Ok(&self.translations[viz])
    }

    fn record(&mut self, t: Translation) {
        let chain = self.chains.entry(t.viz.clone()).or_default();
        for c in &t.commits {
            self.commits.insert(c.id.clone(), c.clone());
            chain.push(c.clone());
        }
        self.translations.insert(t.viz.clone(), t);
    }

    /// The ops of every commit from `{}` to the viz's end, across fork parents.
    pub fn chain_ops(&self, viz: &str) -> Vec<Value> {
        let end = &self.translations[viz].info.end;
        v3::ancestry(&self.commits, end)
            .unwrap()
            .into_iter()
            .map(|c| c.ops.clone())
            .collect()
    }

    /// V3 invariants (spec 2.2) of a migrated viz.
    pub fn violations(&self, viz: &str) -> Vec<String> {
        let t = &self.translations[viz];
        let users: Vec<&str> = self
            .translations
            .values()
            .flat_map(|t| t.users.iter().map(|u| u.id.as_str()))
            .collect();
        v3::invariant_violations(&t.info, &t.content, &self.commits, |u| users.contains(&u))
    }
}

/// A synthetic V2 viz with the given files and json0 op log (each `(ts_secs, op)`), whose
/// snapshot is the result of applying the log to `files`.
pub fn synthetic_viz(
    id: &str,
    owner: &str,
    forked_from: Option<&str>,
    created: i64,
    files: Value,
    log: &[(i64, Value)],
) -> V2Viz {
    let mut state = json!({"id": id, "documentType": "visualization", "files": files});
    let base_v = 5u64;
    let mut ops = Vec::new();
    for (i, (ts, op)) in log.iter().enumerate() {
        let parsed = vizhub_migrate::json0::parse_op(op).unwrap();
        vizhub_migrate::json0::apply(&mut state, &parsed).unwrap();
        ops.push(json!({"_id": format!("{id}-{i}"), "v": base_v + i as u64, "op": op, "m": {"ts": ts * 1000}, "d": id}));
    }
    let v = base_v + log.len() as u64;
    let last = log.last().map_or(created, |(ts, _)| *ts);
    let mut content = state;
    let obj = content.as_object_mut().unwrap();
    obj.insert("_id".into(), json!(id));
    obj.insert("_type".into(), json!("http://sharejs.org/types/JSONv0"));
    obj.insert("_v".into(), json!(v));
    let mut info = json!({"_id": id, "id": id, "_type": "http://sharejs.org/types/JSONv0", "_v": 9,
        "documentType": "visualization", "owner": owner, "title": format!("Viz {id}"),
        "createdTimestamp": created, "lastUpdatedTimestamp": last, "height": 600});
    if let Some(p) = forked_from {
        info["forkedFrom"] = json!(p);
    }
    V2Viz {
        info,
        content: Some(content),
        ops,
        ..Default::default()
    }
}
