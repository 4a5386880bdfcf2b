//! The worker's job caches, bounded in bytes, not entries: one V3 content can be 5 MiB or a few
//! hundred bytes, so a count says nothing about memory. A cache that would pass its budget is
//! emptied first (the entries are cheap to read again, and clearing needs no bookkeeping); an
//! entry larger than the whole budget is not kept at all.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// Fixed cost counted per cached entry and per JSON node, besides the bytes of its strings.
const OVERHEAD: usize = 64;

pub struct Cache<V> {
    max_bytes: usize,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    map: HashMap<String, (V, usize)>,
    bytes: usize,
}

impl<V: Clone> Cache<V> {
    pub fn new(max_bytes: usize) -> Self {
        Cache {
            max_bytes,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let inner = self.inner.lock().expect("cache lock");
        inner.map.get(key).map(|(v, _)| v.clone())
    }

    /// Keep `value` under `key`; `bytes` is what it holds (see [`approx_bytes`]).
    pub fn insert(&self, key: String, value: V, bytes: usize) {
        let size = bytes + key.len() + OVERHEAD;
        let mut inner = self.inner.lock().expect("cache lock");
        if let Some((_, old)) = inner.map.remove(&key) {
            inner.bytes -= old;
        }
        if size > self.max_bytes {
            return;
        }
        if inner.bytes + size > self.max_bytes {
            inner.map.clear();
            inner.bytes = 0;
        }
        inner.bytes += size;
        inner.map.insert(key, (value, size));
    }

    /// Bytes held now, as counted.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}

/// The memory a JSON value holds, roughly: its strings and keys, plus a fixed cost per node.
pub fn approx_bytes(v: &Value) -> usize {
    OVERHEAD
        + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(approx_bytes).sum(),
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + approx_bytes(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stays_within_its_budget_whatever_the_entry_sizes() {
        let c = Cache::new(10_000);
        for i in 0..1000 {
            c.insert(format!("k{i}"), i, (i % 7) * 500);
            assert!(c.bytes() <= 10_000, "{} bytes", c.bytes());
        }
        // A value larger than the budget is not kept; a smaller one is found again.
        c.insert("huge".into(), 1, 20_000);
        assert_eq!(c.get("huge"), None);
        c.insert("small".into(), 2, 10);
        assert_eq!(c.get("small"), Some(2));
        // Replacing a key does not count it twice.
        let before = c.bytes();
        c.insert("small".into(), 3, 10);
        assert_eq!(c.bytes(), before);
        assert_eq!(c.get("small"), Some(3));
    }

    #[test]
    fn approx_bytes_grows_with_the_text() {
        let small = json!({"files": {"a": {"name": "x", "text": "y"}}});
        let big = json!({"files": {"a": {"name": "x", "text": "y".repeat(1 << 20)}}});
        assert!(approx_bytes(&big) >= 1 << 20);
        assert!(approx_bytes(&small) < 1024);
    }
}
